"""`.ci/run` proves the fresh machine: the venv is built with the machine's HOME (pip's index settings
live there), the tests run under a new, empty HOME and XDG directories, and a failing or empty test run
(pytest exit 5) fails CI. `make` is replaced by a stub that records how it was called."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

STUB = '''#!{python}
import json, os, sys
home = os.environ.get("HOME", "")
record = {{"args": sys.argv[1:], "HOME": home,
          "home_contents": sorted(os.listdir(home)) if os.path.isdir(home) else None,
          **{{k: os.environ.get(k) for k in ("XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME",
                                           "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS")}}}}
with open({log!r}, "a") as f:
    f.write(json.dumps(record) + "\\n")
sys.exit(int(os.environ.get("STUB_EXIT_" + sys.argv[-1], "0")))
'''


def run_ci(tmp_path: Path, **exit_codes: int) -> tuple[subprocess.CompletedProcess, list[dict], Path]:
    bin_dir, log, home = tmp_path / "bin", tmp_path / "calls.jsonl", tmp_path / "home"
    bin_dir.mkdir()
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("f" * 64)  # what an earlier run leaves behind
    (home / ".config" / "pip").mkdir(parents=True)
    (home / ".config" / "pip" / "pip.conf").write_text("[global]\nindex-url = file:///nowhere\n")
    stub = bin_dir / "make"
    stub.write_text(STUB.format(python=sys.executable, log=str(log)))
    stub.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", HOME=str(home),
               TMPDIR=str(tmp_path), RAY_AUTH_TOKEN_PATH=str(home / ".ray" / "auth_token"), RAY_ADDRESS="auto",
               **{f"STUB_EXIT_{target}": str(code) for target, code in exit_codes.items()})
    proc = subprocess.run(["bash", str(REPO / ".ci" / "run")], env=env, capture_output=True, text=True, timeout=60)
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    return proc, calls, home


def test_venv_with_the_real_home_then_tests_under_an_empty_home(tmp_path):
    proc, calls, home = run_ci(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert [c["args"] for c in calls] == [["venv"], ["test"]]
    build, test = calls
    assert build["HOME"] == str(home)  # pip keeps the machine's index configuration
    clean = Path(test["HOME"])
    assert clean != home and test["home_contents"] == []
    for key in ("XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME"):
        assert test[key] and Path(test[key]).is_relative_to(clean), key
    assert test["RAY_AUTH_TOKEN_PATH"] is None and test["RAY_ADDRESS"] is None
    assert not clean.exists()  # removed afterwards


@pytest.mark.parametrize("target, code", [("test", 1), ("test", 5), ("venv", 2)])
def test_a_failing_or_empty_run_fails_ci(tmp_path, target, code):
    proc, calls, _ = run_ci(tmp_path, **{target: code})
    assert proc.returncode != 0
    assert calls[-1]["args"] == [target]  # nothing runs after a failed step


def _stub(bin_dir: Path, name: str, body: str) -> None:
    (bin_dir / name).write_text(f"#!/usr/bin/env bash\n{body}\n")
    (bin_dir / name).chmod(0o755)


@pytest.mark.parametrize("uid", ["0", "1000"])
def test_missing_chromium_is_installed_as_root_else_a_clear_message(tmp_path, monkeypatch, uid):
    """FSAD_CHROMIUM names a binary that is not there: root installs Debian's chromium with apt-get,
    anyone else gets one line saying what to run (and CI stops before building anything)."""
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    calls = tmp_path / "apt.log"
    _stub(stubs, "id", f"echo {uid}")
    _stub(stubs, "apt-get", f'echo "$@" >> {calls}')
    monkeypatch.setenv("PATH", f"{stubs}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FSAD_CHROMIUM", "no-such-chromium-binary")
    proc, make_calls, _ = run_ci(tmp_path)
    if uid == "0":
        assert proc.returncode == 0, proc.stderr
        assert calls.read_text().splitlines()[-1] == "install -y -q chromium"
        assert [c["args"] for c in make_calls] == [["venv"], ["test"]]
    else:
        assert proc.returncode == 2 and not calls.exists() and make_calls == []
        assert proc.stderr.strip().splitlines() == [
            "CI: no-such-chromium-binary is not installed and this user is not root: run 'apt-get install -y "
            "chromium' as root (the gallery's browser test needs it)"]
