"""Building a Config: from YAML files, from dicts, with overrides; and saving one.

`load_config(path, overrides)` reads a YAML file shaped like the schema (missing keys keep their
defaults), applies the experiment profile and then `overrides`, a {dotted key: typed value} mapping,
type-checks every leaf and validates ranges once. `parse_overrides` turns command-line `KEY=VALUE`
words into that mapping (values parsed as YAML) at the CLI boundary. Any problem is an InputError
naming the key or file. `save_config` writes the resolved config beside checkpoints.
"""
from __future__ import annotations

import dataclasses
from dataclasses import fields
from pathlib import Path
from typing import Any, Iterable, Mapping, get_args, get_origin, get_type_hints

import yaml

from model.errors import InputError
from orchestrator.config.profiles import PROFILES
from orchestrator.config.schema import Config
from orchestrator.config.validation import validate
from workers.files import atomic_write_text


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = get_origin(hint)
    if origin is list:
        (item_type,) = get_args(hint)
        if isinstance(value, str):  # "a,b" from the command line
            value = [v for v in value.split(",") if v]
        if not isinstance(value, list):
            raise InputError(f"config {key}={value!r}: expected a list")
        return [_coerce(v, item_type, f"{key}[]") for v in value]
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise InputError(f"config {key}={value!r}: expected true or false")
    if isinstance(value, str) and hint in (int, float):
        # YAML 1.1 reads "1e-3" and "nan" as strings; accept any number Python can parse
        try:
            value = float(value) if hint is float else int(value)
        except ValueError:
            raise InputError(f"config {key}={value!r}: expected {'a number' if hint is float else 'an integer'}") from None
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise InputError(f"config {key}={value!r}: expected an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"config {key}={value!r}: expected a number")
        return float(value)
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise InputError(f"config {key}={value!r}: expected a string")
        return str(value)
    return value


def from_dict(cls: type, tree: dict[str, Any] | None, prefix: str = "", base: Any = None) -> Any:
    """`base` (default: cls()) supplies the keys `tree` leaves out, e.g. a field's own default_factory value."""
    tree = dict(tree or {})
    hints = get_type_hints(cls)
    kwargs = {}
    names = {f.name for f in fields(cls)}
    for unknown in sorted(set(tree) - names):
        raise InputError(f"unknown config key {prefix + unknown!r}; expected one of {sorted(names)}")
    for f in fields(cls):
        if f.name not in tree:
            continue
        hint, key, value = hints[f.name], f"{prefix}{f.name}", tree[f.name]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise InputError(f"config {key}: expected a mapping of {hint.__name__} fields")
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
            kwargs[f.name] = from_dict(hint, value, key + ".", default)
        else:
            kwargs[f.name] = _coerce(value, hint, key)
    return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)


def set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise InputError(f"override {dotted}: {part!r} is not a section")
    node[parts[-1]] = value


def with_values(cfg: Config, values: dict[str, Any]) -> Config:
    """A validated copy of cfg with {dotted key: value} set (ablations, tuning trials)."""
    tree = cfg.to_dict()  # dataclasses.asdict: a deep copy
    for key, value in values.items():
        set_path(tree, key, value)
    return config_from_dict(tree)


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise InputError(f"override {text!r}: expected KEY=VALUE, e.g. train.episodes=100")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise InputError(f"override {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def parse_overrides(texts: Iterable[str]) -> dict[str, Any]:
    """Command-line `KEY=VALUE` words -> {dotted key: typed value}; a later word for the same key wins."""
    values: dict[str, Any] = {}
    for text in texts:
        key, value = parse_override(text)
        values.pop(key, None)  # re-inserted: the later word also keeps its place in the order of application
        values[key] = value
    return values


def read_config_tree(path: str | Path) -> dict[str, Any]:
    """The schema's sections of a YAML file (other top-level keys, e.g. DVC's, are ignored)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"config file {path} does not exist")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        raise InputError(f"config file {path} is not valid YAML (line {line})") from exc
    if not isinstance(tree, dict):
        raise InputError(f"config file {path}: expected a mapping at the top level")
    return {k: v for k, v in tree.items() if k in {f.name for f in fields(Config)}}


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> Config:
    """The file at `path` (None: the embedded defaults), its experiment profile on top, then `overrides`
    ({dotted key: value}, e.g. from parse_overrides); type-checked and validated once."""
    overrides = {} if overrides is None else overrides
    if not isinstance(overrides, Mapping):  # a caller still passing "k=v" words
        raise TypeError(f"load_config overrides: expected a {{dotted key: value}} mapping, got "
                        f"{type(overrides).__name__}; parse KEY=VALUE words with parse_overrides")
    tree = read_config_tree(path) if path else {}
    profile = overrides.get("experiments.profile", (tree.get("experiments") or {}).get("profile", "quick"))
    if profile not in PROFILES:
        raise InputError(f"experiments.profile={profile!r}: expected one of {', '.join(PROFILES)}")
    for key, value in PROFILES[profile].items():  # the profile beats the file; overrides beat both
        set_path(tree, key, value)
    for key, value in overrides.items():
        set_path(tree, key, value)
    return _validated(from_dict(Config, tree))


def config_from_dict(tree: dict[str, Any]) -> Config:
    if not isinstance(tree, dict):
        raise InputError(f"config: expected a mapping of sections (data, model, train, ...); got a {type(tree).__name__}")
    return _validated(from_dict(Config, tree))


def _validated(cfg: Config) -> Config:
    validate(cfg)
    return cfg


def save_config(cfg: Config, path: str | Path) -> None:
    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
