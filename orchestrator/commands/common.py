"""Arguments shared by several verbs: --config and --set feed the one config schema."""
from __future__ import annotations

import argparse

from orchestrator.config import Config, load_config


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="params.yaml-style file (default: the embedded defaults)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.episodes=600 (repeatable)")


def config_from_args(args: argparse.Namespace, extra: list[str] = ()) -> Config:
    """The config of this command; its image limit applies to every image the command decodes."""
    from workers.data import set_max_pixels

    cfg = load_config(args.config, list(args.overrides) + list(extra))
    set_max_pixels(cfg.data.max_pixels)
    return cfg


def add_data_arguments(parser: argparse.ArgumentParser, splits_help: str) -> None:
    """--data (a folder), or --manifest (and --splits) written by fsad ingest / fsad split."""
    parser.add_argument("--data", default=None,
                        help="data root in the MVTec layout (with --manifest: where its images are, if moved)")
    parser.add_argument("--manifest", default=None, help="manifest.parquet written by fsad ingest")
    parser.add_argument("--splits", default=None, help=splits_help)


def data_root(args: argparse.Namespace):
    """--data, else the image root recorded in --manifest (None when neither is given)."""
    if args.data is None and args.manifest is not None:
        from workers.manifest import read_manifest

        return str(read_manifest(args.manifest).root)
    return args.data
