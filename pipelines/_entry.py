"""What every stage entry point shares: arguments, and bad input -> one line on stderr, exit 2."""
from __future__ import annotations

import argparse
import sys
from typing import Callable


def main(run: Callable[[argparse.Namespace], None], doc: str, target: bool = False,
         argv: list[str] | None = None) -> int:
    from model.errors import InputError
    from orchestrator.cli import VerbParser

    # fsad's grammar: --config FILE (--params, the old spelling, still parses for one release)
    parser = VerbParser(description=doc, renamed={"--params": "--config"})
    parser.add_argument("--config", dest="params", default="params.yaml", metavar="FILE",
                        help="the config file (default params.yaml)")
    parser.add_argument("--progress", action="store_true", help="progress bars")
    if target:
        parser.add_argument("--target", required=True, help="held-out category (one of pipeline.targets)")
    args = parser.parse_args(argv)
    try:
        run(args)
    except InputError as exc:
        print(f"fsad: error: {exc}", file=sys.stderr)
        return 2
    return 0
