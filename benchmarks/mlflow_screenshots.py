"""Screenshots of the MLflow UI for docs/mlflow.md, and a check that it opens on the runs.

    python -m benchmarks.mlflow_screenshots [--data ../shared/data/fsad-real] [--category tire]
        [--store sqlite:///PATH/mlflow.db] [--out docs/images]

Without --store it makes a small store of its own in a temporary folder: a 1-episode `fsad train` with
the category held out, then `fsad evaluate --shots 10 --draws 2 --report` tracked in it. It starts
`mlflow ui` on a free 127.0.0.1 port and opens the experiment in headless Chromium, each URL in a fresh
profile (a first visit): it prints where the plain experiment URL lands (MLflow 3.17: the GenAI overview,
whatever the experiment's tag) and where the link fsad prints lands (orchestrator.tracking.server.runs_page_url,
`?workflowType=machine_learning`), and fails (exit 1) unless that link shows the runs table with the
evaluation run in it. Then it writes mlflow_runs.png (the runs table, at that link), mlflow_eval_run.png
(the evaluation run: metrics) and mlflow_eval_histogram.png (its score histogram with the threshold line)
and stops the server.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fsad(*args: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], check=True, env=env, cwd=REPO)


def make_store(folder: Path, data: str, category: str) -> str:
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    fsad("train", "--data", data, "--target", category, "--out", str(folder / "model"), "--quiet",
         "--set", "train.episodes=1", "--tracking-uri", uri)
    fsad("evaluate", "--model", str(folder / "model"), "--data", data, "--target", category, "--shots", "10",
         "--draws", "2", "--report", "--out", str(folder / "eval"), "--quiet", "--tracking-uri", uri)
    return uri


def wait_for(url: str, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise RuntimeError(f"mlflow ui did not answer {url} within {timeout:.0f} s")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "fsad-real"))
    parser.add_argument("--category", default="tire")
    parser.add_argument("--store", default=None, help="an existing tracking store (default: make a small one)")
    parser.add_argument("--experiment", default="fsad")
    parser.add_argument("--out", default=str(REPO / "docs" / "images"))
    args = parser.parse_args(argv)
    from mlflow import MlflowClient

    from orchestrator.reporting.browser import dump_dom, screenshot
    from orchestrator.tracking.server import RUNS_VIEW_QUERY, runs_page_url

    with tempfile.TemporaryDirectory(prefix="fsad-mlflow-shots-") as tmp:
        uri = args.store or make_store(Path(tmp), args.data, args.category)
        client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name(args.experiment)
        runs = client.search_runs([experiment.experiment_id], "tags.`fsad.kind` = 'eval'",
                                  order_by=["attributes.start_time DESC"], max_results=1)
        if not runs:
            print(f"no evaluation run in experiment {args.experiment!r} of the store", file=sys.stderr)
            return 1
        run = runs[0]
        port = free_port()
        env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
        server = subprocess.Popen([str(Path(sys.executable).with_name("mlflow")), "ui", "--backend-store-uri", uri,
                                   "--default-artifact-root", str(Path(tmp) / "artifacts"), "--host", "127.0.0.1",
                                   "--port", str(port)], env=env, cwd=tmp, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            base = f"http://127.0.0.1:{port}"
            wait_for(f"{base}/health")
            experiment_url = f"{base}/#/experiments/{experiment.experiment_id}"
            runs_url = runs_page_url(base, experiment.experiment_id)
            landing = dump_dom(experiment_url, wait_ms=20000, timeout=240)
            table = dump_dom(runs_url, wait_ms=20000, timeout=240)
            # the table lists top-level runs (an evaluation nests under its training run): any run's name
            names = [r.info.run_name for r in client.search_runs([experiment.experiment_id], max_results=50)]
            shows_runs = lambda dom: any(name and name in dom for name in names)  # noqa: E731
            landed = {"experiment_kind": experiment.tags.get("mlflow.experimentKind"),
                      "experiment_url_shows_runs": shows_runs(landing),
                      "experiment_url_shows_genai_overview": bool(re.search(r"[Tt]oken [Uu]sage", landing)),
                      "fsad_link": runs_url.removeprefix(base),
                      "fsad_link_shows_runs": shows_runs(table),
                      "fsad_link_shows_genai_overview": bool(re.search(r"[Tt]oken [Uu]sage", table))}
            print(json.dumps(landed))
            if not landed["fsad_link_shows_runs"] or landed["fsad_link_shows_genai_overview"]:
                print(f"mlflow ui does not open on the runs table of {args.experiment!r} at {runs_url}: {landed}",
                      file=sys.stderr)
                return 1
            out = Path(args.out)
            screenshot(runs_url, out / "mlflow_runs.png", 1400, 800, 20000, 240)
            run_url = f"{experiment_url}/runs/{run.info.run_id}"
            view = f"?{RUNS_VIEW_QUERY}"  # the run pages in the Model training view too
            screenshot(run_url + view, out / "mlflow_eval_run.png", 1400, 1000, 20000, 240)
            screenshot(f"{run_url}/artifacts/plots/scores_draw0.png{view}", out / "mlflow_eval_histogram.png",
                       1400, 800, 20000, 240)
            print(f"wrote {out}/mlflow_runs.png, mlflow_eval_run.png, mlflow_eval_histogram.png")
        finally:  # the server and its workers: the process group this script started
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
