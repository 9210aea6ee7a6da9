"""Hostile input, tried the way a new user or an attacker would: every case, its exit code, its message
and what it left on disk, written to docs/reliability.md.

    python -m benchmarks.hostile [--only NAME ...] [--code DIR] [--write docs/reliability.md]

Every case runs the real `fsad` console entry (`python -m orchestrator.cli`) in a subprocess against a
small copy of ../shared/data/fsad-real (or files planted in a copy), in a temporary workspace; its
peak RSS comes from wait4. tests/test_hostile.py runs the same cases and checks their expectations,
so the table and the tests cannot drift apart.

The cases live by kind in benchmarks/hostile_files.py, hostile_data.py and hostile_services.py; their
harness (Workspace, Result, `@case`) in benchmarks/hostile_harness.py.

Adding a case: write a function `def my_case(ws: Workspace) -> Result` in one of those modules and
decorate it with `@case` (`@case(suite=False)` when the test suite already covers it elsewhere, e.g.
with a Ray cluster). It builds its input under `ws.fresh(...)`, runs `ws.run(...)`, and returns
`ws.result(...)` with what it expects (exit code, words of the message, paths that must not exist,
files that must be unchanged).
--code runs another checkout's fsad on the same cases (e.g. the code before issue 11, to compare).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

# Importing the case modules registers their cases in CASES, in this order (the table's order).
from benchmarks import hostile_files, hostile_data, hostile_services  # noqa: F401
from benchmarks.hostile_harness import CASES, DEFAULT_DATA, DOC, REPO, Workspace

INTRO = """# Reliability: hostile input

Written by `{command}` (benchmarks/hostile.py) on {date}.

Each case runs the real `fsad` command in a subprocess, against a small copy of fsad-real or files
planted in a copy. tests/test_hostile.py runs the same cases and fails when one breaks the rules: bad
input exits 2 with one `fsad: error:` line naming the file or value, nothing is written outside the
output folder, nothing already written is lost, no secret is printed. "message" is the last line on
stderr (or the line that matters); "left on disk" is what the output path held afterwards; "peak" is
the peak RSS of the command. `$WS` is the temporary workspace. New cases are functions in
benchmarks/hostile_*.py (files, data, services) decorated with `@case`.

| case | exit | message | left on disk | peak | rules met |
|---|---|---|---|---|---|
"""


def table(rows: list[dict], command: str) -> str:
    def cell(text) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    body = "".join(f"| {cell(r['case'])} | {r['exit']} | `` {cell(r['message'][:300])} `` | {cell(r['left'])} | "
                   f"{r['peak_mb']} MB | {'yes' if r['ok'] else 'NO'} |\n" for r in rows)
    return INTRO.format(command=command, date=time.strftime("%Y-%m-%d")) + body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--code", type=Path, default=REPO, help="checkout whose fsad runs (default: this one)")
    parser.add_argument("--only", nargs="*", default=None, help="case function names")
    parser.add_argument("--write", type=Path, default=None, help=f"write the table here (e.g. {DOC.relative_to(REPO)})")
    args = parser.parse_args(argv)
    cases = [c for c in CASES if args.only is None or c.__name__ in args.only]
    rows = []
    with tempfile.TemporaryDirectory(prefix="fsad-hostile-") as tmp:
        ws = Workspace(Path(tmp), args.data, args.code.resolve())
        for fn in cases:
            began = time.perf_counter()
            result = fn(ws)
            rows.append({"name": fn.__name__, **result.row(), "problems": result.problems()})
            print(json.dumps({**rows[-1], "seconds": round(time.perf_counter() - began, 1)}), flush=True)
    if args.write:
        command = "python -m benchmarks.hostile" + (f" --write {args.write}" if args.write else "")
        text = table(rows, command)
        if args.only is None:  # the whole table: the checkpoint, registered-model and serving cases too
            from benchmarks import hostile_models

            text += ("\n## Checkpoints, registered models and serving\n\nFrom benchmarks/hostile_models.py "
                     "(run by the same command); tests/test_checkpoint.py and tests/test_pyfunc.py assert "
                     "the same outcomes.\n\n" + hostile_models.markdown(hostile_models.all_rows()))
        args.write.write_text(text)
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
