"""`fsad` command line: a registry of verbs, one thin module each under orchestrator/commands/.

One grammar: `--config`/`--set` on every verb that reads config, `--target` for the held-out/target category,
`--draws` for support draws. A verb module's RENAMED ({old option: new option}) keeps old spellings parsing
for one release, each with one deprecation line on stderr.

Exit codes: 0 ok; 2 bad input (one line on stderr: `fsad: error: ...`); 3 training diverged; 130 interrupted.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from model.errors import InputError

VERBS = {
    "train": "orchestrator.commands.train",
    "evaluate": "orchestrator.commands.evaluate",
    "predict": "orchestrator.commands.predict",
    "loo": "orchestrator.commands.loo",
    "demo": "orchestrator.commands.demo",
    "ingest": "orchestrator.commands.ingest",
    "split": "orchestrator.commands.split",
    "register": "orchestrator.commands.register",
    "adapt": "orchestrator.commands.adapt",
    "sync-runs": "orchestrator.commands.sync_runs",
    "tune": "orchestrator.commands.tune",
    "video": "orchestrator.commands.video",
    "report": "orchestrator.commands.report",
}


def rename_options(argv: list[str], renamed: dict[str, str]) -> list[str]:
    """argv with each old option spelling (`--old V` or `--old=V`) replaced by its new name; one stderr
    line per old spelling used. Tokens after `--` are values, left alone."""
    out, warned = [], set()
    for i, token in enumerate(argv):
        if token == "--":
            return out + argv[i:]
        name, eq, value = token.partition("=")
        if name in renamed:
            if name not in warned:
                print(f"fsad: {name} is deprecated; use {renamed[name]}", file=sys.stderr)
                warned.add(name)
            token = renamed[name] + eq + value
        out.append(token)
    return out


class VerbParser(argparse.ArgumentParser):
    """A verb's parser: the old option spellings in `renamed` still parse, as their new names."""

    def __init__(self, *args, renamed: dict[str, str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.renamed = dict(renamed or {})

    def parse_known_args(self, args=None, namespace=None):
        if self.renamed:
            args = rename_options(list(sys.argv[1:] if args is None else args), self.renamed)
        return super().parse_known_args(args, namespace)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fsad", description="Few-shot fast-adaptive anomaly detection")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB", parser_class=VerbParser)
    for verb, module_name in VERBS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(verb, help=module.HELP, description=module.HELP, renamed=getattr(module, "RENAMED", None))
        module.add_arguments(p)
        p.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from orchestrator.training.loop import TrainingDiverged
    from workers.data.images import max_pixels, set_max_pixels

    limit = max_pixels()  # a verb sets data.max_pixels for itself; callers in this process keep theirs
    try:
        return int(args.run(args) or 0)
    except InputError as exc:
        print(f"fsad: error: {exc}", file=sys.stderr)
        return 2
    except TrainingDiverged as exc:
        print(f"fsad: training diverged: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("fsad: interrupted", file=sys.stderr)
        return 130
    finally:
        set_max_pixels(limit)


if __name__ == "__main__":
    sys.exit(main())
