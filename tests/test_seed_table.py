"""benchmarks/seed_table.py: the four per-target criteria of issue 10, per seed and on the mean over seeds."""
from __future__ import annotations

import json

import pytest

from benchmarks.seed_table import criteria, main, mean_over, read_folder

METHODS = ("ours", "untrained", "knn", "knn_untrained", "nosupport")


def write_metrics(folder, target, values):
    """values: {method: (image, pixel)} -> folder/target.json in the pipeline's layout (K10 only)."""
    folder.mkdir(parents=True, exist_ok=True)
    record = {"category": target}
    for method, (image, pixel) in values.items():
        record[method] = {"K10": {"image_auroc": image, "pixel_auroc": pixel}}
    (folder / f"{target}.json").write_text(json.dumps(record))


def row(ours, untrained=(0.5, 0.5), knn=(0.5, 0.5), knn_untrained=(0.5, 0.5), nosupport=(0.5, 0.5)):
    return dict(zip(METHODS, (ours, untrained, knn, knn_untrained, nosupport)))


def test_criteria_name_each_failure_and_ties_fail():
    assert criteria(row((0.7, 0.9))) == []
    assert criteria(row((0.7, 0.9), untrained=(0.7, 0.9))) == ["image ≤ untrained"]  # a tie is no win
    assert criteria(row((0.6, 0.8), knn=(0.65, 0.5), nosupport=(0.5, 0.81))) == ["image ≤ knn", "pixel ≤ nosupport"]


def test_mean_over_seeds_averages_each_method_then_judges(tmp_path, capsys):
    # seed a: ours loses to untrained on image; seed b: wins by more. The mean wins: 0.65 > 0.6.
    write_metrics(tmp_path / "a", "tire", row((0.55, 0.9), untrained=(0.6, 0.5)))
    write_metrics(tmp_path / "b", "tire", row((0.75, 0.9), untrained=(0.6, 0.5)))
    tables = [read_folder(tmp_path / "a"), read_folder(tmp_path / "b")]
    assert criteria(tables[0]["tire"]) == ["image ≤ untrained"] and criteria(tables[1]["tire"]) == []
    mean = mean_over(tables)["tire"]
    assert mean["ours"] == pytest.approx((0.65, 0.9)) and criteria(mean) == []
    meta = tmp_path / "models" / "tire" / "ours" / "meta.json"  # beside the metrics folders, as in results/
    meta.parent.mkdir(parents=True)
    meta.write_text(json.dumps({"selection": {"best_episode": 40}}))
    assert main([f"a={tmp_path / 'a'}", f"b={tmp_path / 'b'}"]) == 0
    out = capsys.readouterr().out
    assert "**mean over a, b**" in out and "3 of 4 (image ≤ untrained) | 40 |" in out and "1 of 1 targets" in out


def test_an_empty_folder_is_refused_by_name(tmp_path):
    with pytest.raises(SystemExit, match="holds no <target>.json"):
        read_folder(tmp_path)
