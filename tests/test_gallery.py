"""Verdicts a person can act on: `fsad predict --report` and `fsad evaluate --report` write scores,
thresholds, verdicts, masks and a static index.html; headless Chromium (Debian's `chromium`, which
.ci/run installs) opens the page from disk and every image loads, the counts match scores.jsonl."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import HELD_OUT, cli, image_files, one_error_line


def browser_dom(index: Path) -> str:
    from orchestrator.reporting.browser import chromium_binary, dump_dom

    if chromium_binary() is None:
        pytest.fail("chromium is not installed: `apt-get install -y chromium` (.ci/run does it on CI)")
    return dump_dom(index.resolve().as_uri())


def body_attrs(dom: str) -> dict[str, str]:
    body = re.search(r"<body([^>]*)>", dom).group(1)
    return dict(re.findall(r'(data-[\w-]+)="([^"]*)"', body))


def cards(dom: str) -> list[tuple[float, str]]:
    return [(float(s), v) for s, v in re.findall(r'class="card [^"]*" data-score="([^"]+)" data-verdict="([^"]+)"', dom)]


@pytest.fixture(scope="module")
def prediction(trained_model, small_real_root, tmp_path_factory):
    """fsad predict --report on the held-out category's test folder (normal and anomalous images)."""
    from orchestrator.cli import main

    out = tmp_path_factory.mktemp("gallery") / "pred"
    images = small_real_root / HELD_OUT / "test"
    folders = sorted(p for p in images.iterdir() if p.is_dir())
    code = main(["predict", "--model", str(trained_model), "--support", str(small_real_root / HELD_OUT / "train" / "good"),
                 "--images", *map(str, folders), "--report", "--fpr", "0.05", "--out", str(out), "--quiet"])
    assert code == 0
    return out, sum(len(image_files(f)) for f in folders)


def test_predict_writes_verdicts_masks_and_a_gallery_the_browser_loads(prediction):
    out, n_images = prediction
    rows = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    calibration = json.loads((out / "calibration.json").read_text())
    assert len(rows) == n_images and calibration["target_fpr"] == 0.05 and calibration["shots"] == 12
    for row in rows:
        assert row["threshold"] == calibration["threshold"] and row["target_fpr"] == 0.05
        assert row["verdict"] == ("anomalous" if row["score"] > row["threshold"] else "ok")
        with Image.open(row["path"]) as original, Image.open(row["mask"]) as mask:
            assert mask.size == original.size  # the mask is at the image's own size
            assert set(np.unique(np.asarray(mask))) <= {0, 255}
        assert Path(row["overlay"]).is_file() and Path(row["thumbnail"]).is_file()

    dom = browser_dom(out / "index.html")
    attrs = body_attrs(dom)
    n_flagged = sum(r["verdict"] == "anomalous" for r in rows)
    assert attrs["data-n-images"] == str(len(rows)) and attrs["data-n-flagged"] == str(n_flagged)
    assert attrs["data-images-broken"] == "0"
    assert attrs["data-images-loaded"] == str(3 * len(rows))  # thumbnail, overlay, mask per card
    shown = cards(dom)
    assert [s for s, _ in shown] == sorted((r["score"] for r in rows), reverse=True)  # sorted by score
    assert sorted(shown) == sorted((r["score"], r["verdict"]) for r in rows)
    assert f"{calibration['threshold']:.6g}" in dom and "0.05" in dom
    assert "http://" not in dom and "https://" not in dom  # nothing fetched from anywhere


def test_predict_prints_a_summary(trained_model, small_real_root, tmp_path, capsys):
    good = small_real_root / HELD_OUT / "test" / "good"
    code, out, err = cli(capsys, "predict", "--model", trained_model, "--support",
                         small_real_root / HELD_OUT / "train" / "good", "--images", good, "--out", tmp_path / "p")
    assert code == 0, err
    n = len(image_files(good))
    summary = re.search(r"^(\d+) images, (\d+) flagged anomalous; slowest image (\S+) \(([\d.]+) s\); total ([\d.]+) s$",
                        out, re.M)
    rows = [json.loads(line) for line in (tmp_path / "p" / "scores.jsonl").read_text().splitlines()]
    assert summary and int(summary.group(1)) == n == len(rows)
    assert int(summary.group(2)) == sum(r["verdict"] == "anomalous" for r in rows)
    assert summary.group(3) == max(rows, key=lambda r: r["seconds"])["path"]
    assert "threshold" in out and "target false-alarm rate of 0.01" in out  # the default target


def test_report_into_a_non_empty_folder_needs_overwrite(prediction, trained_model, small_real_root, capsys):
    out, _ = prediction
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    args = ["predict", "--model", trained_model, "--support", small_real_root / HELD_OUT / "train" / "good",
            "--images", small_real_root / HELD_OUT / "test" / "good", "--report", "--out", out]
    code, _, err = cli(capsys, *args)
    one_error_line(code, err, str(out), "not empty", "--overwrite")
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


@pytest.mark.parametrize("fpr", ["0", "0.7", "-1", "nan"])
def test_target_rate_outside_zero_to_half_is_one_line_error(fpr, trained_model, small_real_root, tmp_path, capsys):
    out = tmp_path / "p"
    code, _, err = cli(capsys, "predict", "--model", trained_model, "--support",
                       small_real_root / HELD_OUT / "train" / "good", "--images",
                       small_real_root / HELD_OUT / "test" / "good", "--fpr", fpr, "--out", out)
    one_error_line(code, err, "--fpr", "(0, 0.5]")
    assert not out.exists() or not any(out.iterdir())
    code, _, err = cli(capsys, "evaluate", "--model", trained_model, "--data", small_real_root, "--target",
                       HELD_OUT, "--shots", 2, "--draws", 1, "--fpr", fpr, "--out", tmp_path / "e", "--quiet")
    one_error_line(code, err, "--fpr", "(0, 0.5]")
    assert not (tmp_path / "e").exists()


def test_one_support_image_gives_scores_without_verdicts(trained_model, small_real_root, tmp_path, capsys):
    shot = image_files(small_real_root / HELD_OUT / "train" / "good")[0]
    code, out, err = cli(capsys, "predict", "--model", trained_model, "--support", shot, "--images",
                         small_real_root / HELD_OUT / "test" / "good", "--out", tmp_path / "p")
    assert code == 0, err
    rows = [json.loads(line) for line in (tmp_path / "p" / "scores.jsonl").read_text().splitlines()]
    assert all(r["verdict"] is None and r["threshold"] is None for r in rows)
    assert "needs K >= 2" in out


def test_evaluate_reports_realised_false_alarms_and_recall_and_a_gallery(trained_model, small_real_root, tmp_path,
                                                                         capsys):
    out = tmp_path / "e"
    code, stdout, err = cli(capsys, "evaluate", "--model", trained_model, "--data", small_real_root, "--target",
                            HELD_OUT, "--shots", 4, "--draws", 2, "--fpr", 0.05, "--report", "--out", out, "--quiet")
    assert code == 0, err
    record = json.loads((out / "metrics.json").read_text())
    assert record["target_fpr"] == 0.05
    labels = np.array([0] * 4 + [1] * 4)  # the small copy: 4 normal, 4 anomalous test images
    for draw in record["per_draw"]:
        assert 0 <= draw["false_alarm_rate"] <= 1 and 0 <= draw["recall"] <= 1
        assert len(draw["calibration_samples"]) == 4 * 5  # K shots × (original, hflip, vflip, 2 shifts)
    assert record["false_alarm_rate"]["n"] == 2 and "realised false-alarm rate" in stdout
    dom = browser_dom(out / "index.html")
    attrs = body_attrs(dom)
    assert attrs["data-n-images"] == str(len(labels)) and attrs["data-images-broken"] == "0"
    assert int(attrs["data-images-loaded"]) == len(labels)  # one overlay per test image
    first = record["per_draw"][0]
    flagged_normal = round(first["false_alarm_rate"] * 4)
    flagged_anomalous = round(first["recall"] * 4)
    assert attrs["data-n-flagged"] == str(flagged_normal + flagged_anomalous)
    assert f"false alarms {flagged_normal} of 4" in dom
