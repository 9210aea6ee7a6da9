"""Arguments shared by several verbs: --config and --set feed the one config schema."""
from __future__ import annotations

import argparse

from orchestrator.config import Config, load_config


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="params.yaml-style file (default: the embedded defaults)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.episodes=600 (repeatable)")


def config_from_args(args: argparse.Namespace, extra: list[str] = ()) -> Config:
    return load_config(args.config, list(args.overrides) + list(extra))
