"""fsad train: meta-train on every category of --data except the held-out ones."""
from __future__ import annotations

import json

from model.methods import MODEL_KINDS
from orchestrator.commands.common import add_config_arguments, add_data_arguments, config_from_args, data_root
from orchestrator.commands.distributed_args import (
    add_distributed_arguments,
    distributed_overrides,
    run_distributed,
    wants_distributed,
)
from orchestrator.commands.tracking_args import add_tracking_arguments, tracking_uri

HELP = "meta-train a model (Alg. 1), leaving the --target categories out"
RENAMED = {"--exclude": "--target"}  # the old spelling, for one release


def add_arguments(p):
    add_data_arguments(p, "splits.parquet from fsad split: train on the fold of the one --target category")
    p.add_argument("--target", action="append", default=[], metavar="CAT",
                   help="held-out (target) category, never trained on (repeatable; added to data.exclude)")
    p.add_argument("--method", choices=MODEL_KINDS, help="what to train (default: train.method)")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_arguments(p)
    add_distributed_arguments(p)
    add_tracking_arguments(p)


def run(args) -> int:
    from pathlib import Path

    from orchestrator.tracking.artifacts import read_meta
    from orchestrator.training.tracked import tracked_train
    from workers.files import check_writable_dir

    check_writable_dir(args.out)  # before any loading or training: checkpoints are written there
    if args.resume and Path(args.out).is_dir():
        read_meta(Path(args.out))  # a damaged meta.json is reported now, not as a traceback mid-resume
    uri = tracking_uri(args)
    extra: dict = {}
    if args.method:
        extra["train.method"] = args.method
    extra.update(distributed_overrides(args))
    saved = Path(args.out) / "config.yaml"
    # resuming continues the saved config (./params.yaml and --config are not read); --set still applies
    cfg = config_from_args(args, extra, path=saved if args.resume and saved.is_file() else "rule")
    if args.target:  # added to data.exclude of the file and --set, not in place of it: all of them stay unseen
        from orchestrator.config import with_values

        cfg = with_values(cfg, {"data.exclude": list(dict.fromkeys([*cfg.data.exclude, *args.target]))})
    if wants_distributed(args):
        if cfg.train.val_categories:
            from model.errors import InputError

            raise InputError("train.val_categories (checkpoint selection) runs in-process only for now; "
                             "drop --workers or set train.val_categories=[]")
        return run_distributed(args, cfg, uri, data_root(args), manifest=args.manifest, splits=args.splits)
    summary = tracked_train(cfg, data_root(args), args.out, resume=args.resume, progress=not args.quiet, uri=uri,
                            manifest=args.manifest, splits=args.splits)
    print(json.dumps({k: summary[k] for k in ("out", "episodes", "seconds", "categories", "run_id") if k in summary}))
    return 0

