"""fsad ingest: a dataset tree (folder, s3://BUCKET/PREFIX or elpv) -> manifest.parquet + rejects.parquet."""
from __future__ import annotations

HELP = "decode, check and hash a dataset into a Parquet manifest (rejects listed, leaks reported)"


def add_arguments(p):
    p.add_argument("--source", required=True, help="MVTec-layout folder, s3://BUCKET/PREFIX, or elpv")
    p.add_argument("--name", required=True, help="dataset name recorded in the manifest, e.g. fsad-real")
    p.add_argument("--out", required=True, help="output folder, e.g. data/NAME")
    p.add_argument("--endpoint-url", default=None,
                   help="S3-compatible endpoint (default: $AWS_ENDPOINT_URL, else AWS)")
    p.add_argument("--threads", type=int, default=4, help="decoding threads (default 4)")


def run(args) -> int:
    from orchestrator.ingest import ingest

    ingest(args.source, args.name, args.out, endpoint_url=args.endpoint_url, threads=args.threads)
    return 0
