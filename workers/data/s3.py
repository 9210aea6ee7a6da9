"""Read an MVTec-layout tree from S3 (or any S3-compatible store) with boto3.

The endpoint comes from the `endpoint_url` argument, else AWS_ENDPOINT_URL (boto3 reads it too), else
AWS itself; credentials come from boto3's usual chain (environment, profile, instance role). Errors
become one-line InputErrors naming the bucket and the endpoint (without any user:password part) and
never a key, secret or token.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from model.errors import InputError
from workers.data.paths import relative_key

_CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "ExpiredToken",
                     "InvalidToken", "AuthorizationHeaderMalformed", "403", "Forbidden", "UnrecognizedClientException"}
_MISSING_BUCKET = {"NoSuchBucket", "404", "NotFound"}


@dataclass(frozen=True)
class S3Url:
    bucket: str
    prefix: str  # "" or ends with "/"

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


def parse_s3_url(url: str) -> S3Url:
    if not url.startswith("s3://"):
        raise InputError(f"{url!r} is not an S3 URL; expected s3://BUCKET/PREFIX")
    bucket, _, prefix = url[len("s3://"):].partition("/")
    if not bucket:
        raise InputError(f"{url!r} has no bucket; expected s3://BUCKET/PREFIX")
    prefix = prefix.strip("/")
    return S3Url(bucket, prefix + "/" if prefix else "")


def safe_endpoint(endpoint: str | None) -> str:
    """The endpoint for messages: no user:password, no query."""
    if not endpoint:
        return "AWS S3"
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


class S3Tree:
    """Keys (relative to the prefix) and bytes of one s3://bucket/prefix tree."""

    def __init__(self, url: str, endpoint_url: str | None = None):
        import boto3
        from botocore.config import Config

        self.url = parse_s3_url(url)
        self.endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None
        self.client = boto3.client("s3", endpoint_url=self.endpoint,
                                   config=Config(retries={"max_attempts": 2, "mode": "standard"},
                                                 max_pool_connections=16))

    def _error(self, exc: Exception, action: str) -> InputError:
        from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

        where = f"s3://{self.url.bucket} at {safe_endpoint(self.endpoint)}"
        if isinstance(exc, NoCredentialsError):
            return InputError(f"no S3 credentials for {where}; expected AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
                              "or an AWS profile")
        if isinstance(exc, EndpointConnectionError):
            return InputError(f"cannot reach the S3 endpoint {safe_endpoint(self.endpoint)}; expected a running "
                              "S3-compatible store (check --endpoint-url / AWS_ENDPOINT_URL)")
        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _MISSING_BUCKET and action == "list":
                return InputError(f"S3 bucket {self.url.bucket!r} does not exist at {safe_endpoint(self.endpoint)}; "
                                  "expected an existing bucket")
            if code in _CREDENTIAL_CODES:
                return InputError(f"S3 credentials refused for {where} ({code}); expected valid credentials "
                                  "with read access")
            return InputError(f"S3 {action} failed for {where} ({code or type(exc).__name__})")
        return InputError(f"S3 {action} failed for {where} ({type(exc).__name__})")

    def keys(self) -> list[str]:
        """Every key under the prefix, relative to it, sorted; folder markers (ending in /) are skipped.

        Keys are returned as stored, unsafe ones included (``ds//x.png`` gives ``/x.png``), so that
        workers.data.manifest.scan_layout can list them as rejects; nothing joins them to a path unchecked."""
        from botocore.exceptions import BotoCoreError, ClientError

        out = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.url.bucket, Prefix=self.url.prefix)
            for page in pages:
                for obj in page.get("Contents", []):
                    key = obj["Key"][len(self.url.prefix):]
                    if key and not key.endswith("/"):
                        out.append(key)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, "list") from None
        if not out:
            raise InputError(f"{self.url} has no objects at {safe_endpoint(self.endpoint)}; expected an MVTec-layout tree")
        return sorted(out)

    def read(self, key: str) -> bytes:
        """The bytes of one key from keys(); keys that could leave the tree (workers.data.paths) are refused."""
        from botocore.exceptions import BotoCoreError, ClientError

        relative_key(key, f"S3 key under {self.url}")
        try:
            return self.client.get_object(Bucket=self.url.bucket, Key=self.url.prefix + key)["Body"].read()
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, "read") from None
