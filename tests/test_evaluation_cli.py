"""`limaml eval --quick` and `limaml ablate --quick` end to end on small logs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from limaml.cli import main
from limaml.evaluation.protocol import BUCKET_NAMES
from limaml.evaluation.runner import SYSTEMS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SYNTHETIC = "synthetic:n_members=80,n_items=40,drift_fraction=0.5,seed=1"


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_MAGIC, path


def test_eval_quick_on_a_movielens_slice_writes_table_plots_and_results(
        ml100k_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "report"
    assert main(["eval", "--quick", "--quiet", "--dataset", f"movielens:{ml100k_dir}",
                 "--max-events", "6000", "--out-dir", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed["auc"]) == set(SYSTEMS)

    results = json.loads((out / "results.json").read_text())
    assert set(results) == set(SYSTEMS)
    for system, buckets in results.items():
        assert tuple(buckets) == BUCKET_NAMES, system
        for cell in buckets.values():
            assert {"auc", "ci_low", "ci_high", "n"} <= set(cell)
        assert buckets["all"]["n"] == sum(buckets[b]["n"] for b in BUCKET_NAMES[1:]) == 1200
        assert 0.0 < buckets["all"]["auc"] < 1.0
        assert buckets["all"]["ci_low"] <= buckets["all"]["auc"] <= buckets["all"]["ci_high"]
    # never, frozen and streaming share the prior for members without any earlier event
    assert results["limaml_never"]["0"]["auc"] == results["limaml_streaming"]["0"]["auc"]

    report = (out / "report.md").read_text()
    assert "| system | all | 0 | 1-4 | 5-19 | 20-49 | 50+ |" in report
    assert all(f"| {system} |" in report for system in SYSTEMS)
    assert "Log-loss" in report and "Claims" in report
    assert_png(out / "auc_by_bucket.png")
    assert_png(out / "auc_vs_refresh.png")
    assert len(list((out / "models").glob("*.safetensors"))) == 4 * 2  # 4 kinds, 2 seeds


def test_eval_on_synthetic_drift_data_reports_the_drift_segments(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "drift"
    assert main(["eval", "--quick", "--quiet", "--dataset", SYNTHETIC, "--seeds", "1", "--epochs", "2",
                 "--refresh-sweep", "1,4", "--out-dir", str(out)]) == 0
    capsys.readouterr()
    drift = json.loads((out / "drift.json").read_text())
    segments = drift["segments"]
    assert segments["stable members"]["n"] + segments["drifting members, before their drift"]["n"] \
        + segments["drifting members, after their drift"]["n"] == \
        json.loads((out / "results.json").read_text())["limaml_frozen"]["all"]["n"]
    assert "Drift (synthetic ground truth)" in (out / "report.md").read_text()
    assert_png(out / "drift.png")


def test_ablate_quick_writes_a_table_and_a_plot(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "ablation"
    assert main(["ablate", "--quick", "--quiet", "--dataset", SYNTHETIC, "--seeds", "1", "--epochs", "2",
                 "--out-dir", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed["streaming_auc"]) == {"inner steps", "meta_dim", "support size K"}
    assert set(printed["streaming_auc"]["inner steps"]) == {"0", "3"}
    table = (out / "ablation.md").read_text()
    assert "| inner steps | 0 |" in table and "| support size K | 64 |" in table
    assert_png(out / "ablation.png")
