"""Arguments shared by several verbs: --config and --set feed the one config schema.

The one rule (README, "Configuration"): a verb reads `--config FILE`, else `./params.yaml` when it exists
(the file `dvc repro` reads; FSAD_PARAMS=0 in the environment skips it), else the embedded defaults;
`--set KEY=VALUE` goes on top. The file used is named in one line on stderr (`fsad: config: FILE`).
Verbs that load a trained model take only the run-time keys (RUNTIME_KEYS) from it: the model's own
config.yaml fixes everything that shaped the model.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from model.errors import InputError
from orchestrator.config import RUNTIME_KEYS, Config, key_in, load_config, parse_overrides, with_values

PARAMS = Path("params.yaml")


def schema_default(key: str) -> Any:
    """The config schema's default of a dotted key (e.g. eval.shots): what --help shows and a verb falls
    back to, so no flag default repeats a number the schema holds."""
    value: Any = Config()
    for part in key.split("."):
        value = getattr(value, part)
    return value


def add_config_arguments(parser: argparse.ArgumentParser, runtime_only: bool = False) -> None:
    what = ("the run-time keys eval.*, tracking.*, data.max_pixels, train.device; the model's config.yaml fixes "
            "the rest" if runtime_only else "the whole config")
    parser.add_argument("--config", metavar="FILE",
                        help=f"params.yaml-style file (default: ./params.yaml when present, else the embedded "
                             f"defaults); read for {what}")
    parser.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override config values, e.g. --set train.episodes=600 eval.draws=2 (repeatable)")


def config_file(args: argparse.Namespace) -> Path | None:
    """--config FILE, else ./params.yaml when present (unless FSAD_PARAMS=0), else None: embedded defaults."""
    if getattr(args, "config", None):
        return Path(args.config)
    if os.environ.get("FSAD_PARAMS", "1") != "0" and PARAMS.is_file():
        return PARAMS
    return None


def announce(path: Path | None, note: str = "") -> None:
    """The one stderr line that says which configuration a verb used."""
    name = "embedded defaults" if path is None else (f"./{path}" if path == PARAMS else str(path))
    print(f"fsad: config: {name}{note}", file=sys.stderr)


def config_from_args(args: argparse.Namespace, extra: dict[str, Any] | None = None,
                     path: Path | None | str = "rule") -> Config:
    """The config of this command; its image limit applies to every image the command decodes.

    `extra` ({dotted key: value}, from the verb's own flags) goes on top of the file and of --set.

    `path` "rule": config_file(args), named on stderr; else that file (a resumed run's saved config.yaml)
    or None (the embedded defaults), which the caller names if it wants to."""
    from workers.data.images import set_max_pixels

    by_rule = path == "rule"
    path = config_file(args) if by_rule else path
    cfg = load_config(path, {**parse_overrides(args.overrides), **(extra or {})})
    if by_rule and path is not None:
        announce(path)
    set_max_pixels(cfg.data.max_pixels)
    return cfg


def is_runtime_key(key: str) -> bool:
    return key_in(key, RUNTIME_KEYS)


def runtime_settings(args: argparse.Namespace, verb: str) -> dict[str, Any]:
    """{dotted key: value} of the run-time keys from the config file (see config_file) and --set, for a
    verb that loads a trained model; a --set of any other key is refused (the model fixes it)."""
    path = config_file(args)
    values: dict[str, Any] = {}
    if path is not None:
        values = {k: v for k, v in load_config(path).flatten().items() if is_runtime_key(k)}
    for key, value in parse_overrides(args.overrides).items():
        if not is_runtime_key(key):
            raise InputError(f"--set {key}: fixed by the trained model (its config.yaml); fsad {verb} takes "
                             "only eval.*, tracking.*, data.max_pixels and train.device (retrain to change the rest)")
        values[key] = value
    if values:
        with_values(Config(), values)  # types and ranges checked now, one line, before any work
    if path is not None:
        announce(path, " (eval, tracking, data.max_pixels, train.device; the model's config.yaml for the rest)")
    return values


def add_data_arguments(parser: argparse.ArgumentParser, splits_help: str) -> None:
    """--data (a folder), or --manifest (and --splits) written by fsad ingest / fsad split."""
    parser.add_argument("--data", default=None,
                        help="data root in the MVTec layout (with --manifest: where its images are, if moved)")
    parser.add_argument("--manifest", default=None, help="manifest.parquet written by fsad ingest")
    parser.add_argument("--splits", default=None, help=splits_help)


def data_root(args: argparse.Namespace):
    """--data, else the image root recorded in --manifest (None when neither is given)."""
    if args.data is None and args.manifest is not None:
        from workers.data.manifest import read_manifest

        return str(read_manifest(args.manifest).root)
    return args.data
