"""fsad ingest: a dataset tree (folder, s3://BUCKET/PREFIX or elpv) -> manifest.parquet + rejects.parquet.

Without --source/--name/--out it does what the DVC stage `ingest` does: pipeline.source, pipeline.name,
data/<pipeline.name> from the config (./params.yaml, --config, --set); data.max_pixels applies either way.
"""
from __future__ import annotations

from orchestrator.commands.common import add_config_arguments, config_from_args

HELP = "decode, check and hash a dataset into a Parquet manifest (rejects listed, leaks reported)"


def add_arguments(p):
    p.add_argument("--source", default=None,
                   help="MVTec-layout folder, s3://BUCKET/PREFIX, or elpv (default: pipeline.source)")
    p.add_argument("--name", default=None, help="dataset name recorded in the manifest (default: pipeline.name)")
    p.add_argument("--out", default=None, help="output folder (default: data/<name>)")
    p.add_argument("--endpoint-url", default=None,
                   help="S3-compatible endpoint (default: $AWS_ENDPOINT_URL, else AWS)")
    p.add_argument("--threads", type=int, default=4, help="decoding threads (default 4)")
    add_config_arguments(p)


def run(args) -> int:
    from pathlib import Path

    from orchestrator.stages.ingest import ingest

    cfg = config_from_args(args)
    name = args.name or cfg.pipeline.name
    ingest(args.source or cfg.pipeline.source, name, args.out or Path("data") / name,
           endpoint_url=args.endpoint_url, threads=args.threads)
    return 0
