"""`limaml eval --quick` and `limaml ablate --quick` end to end on small logs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from limaml.cli import main
from limaml.evaluation.config import SYSTEMS
from limaml.evaluation.protocol import BUCKET_NAMES

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SYNTHETIC = "synthetic:n_members=80,n_items=40,drift_fraction=0.5,seed=1"


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_MAGIC, path


def test_eval_quick_on_a_movielens_slice_writes_table_plots_and_results(
        ml100k_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "report"
    assert main(["eval", "--quick", "--quiet", "--dataset", f"movielens:{ml100k_dir}",
                 "--max-events", "6000", "--seeds", "2", "--melu-epochs", "2", "--bootstrap-resamples", "200",
                 "--out-dir", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed["auc"]) == set(printed["gauc"]) == set(SYSTEMS)

    results = json.loads((out / "results.json").read_text())
    assert tuple(results) == SYSTEMS
    for system, buckets in results.items():
        assert tuple(buckets) == BUCKET_NAMES, system
        for cell in buckets.values():
            assert {"n", "auc", "auc_ci_low", "auc_ci_high", "auc_per_seed", "gauc", "gauc_ci_low",
                    "gauc_ci_high", "log_loss", "log_loss_ci_low", "log_loss_ci_high"} <= set(cell)
        assert buckets["all"]["n"] == sum(buckets[b]["n"] for b in BUCKET_NAMES[1:]) == 1200
        for metric in ("auc", "gauc", "log_loss"):
            assert buckets["all"][f"{metric}_ci_low"] <= buckets["all"][metric] <= buckets["all"][f"{metric}_ci_high"]
        assert len(buckets["all"]["auc_per_seed"]) == 2
    # never, frozen and streaming share the prior for members without any earlier event
    assert results["limaml_never"]["0"]["auc"] == results["limaml_streaming"]["0"]["auc"]
    claims = json.loads((out / "claims.json").read_text())
    assert {(c["other"], c["bucket"], c["metric"]) for c in claims} == {
        (other, bucket, metric) for other in SYSTEMS[:-1] for bucket in ("all", "1-4", "5-19")
        for metric in ("auc", "gauc")}
    for claim in claims:
        assert claim["held"] == (claim["ci_low"] is not None and claim["ci_low"] > 0)
    with np.load(out / "scores.npz") as scores:
        assert {f"{system}_seed{seed}" for system in SYSTEMS for seed in (0, 1)} <= set(scores.files)
    latency = json.loads((out / "latency.json").read_text())
    assert list(latency["limaml_streaming"]) == ["0 s", "1 s", "10 s", "1 min", "1 h", "1 day", "never"]
    assert latency["limaml_streaming"]["never"]["all"]["auc"] == results["limaml_frozen"]["all"]["auc"]

    report = (out / "report.md").read_text()
    assert "| system | all | 0 | 1-4 | 5-19 | 20-49 | 50+ |" in report
    assert all(f"| {system} |" in report for system in SYSTEMS)
    assert "GAUC" in report and "Log-loss" in report and "Claims" in report and "refresh latency" in report
    assert_png(out / "auc_by_bucket.png")
    assert_png(out / "auc_vs_latency.png")
    kinds = ("limaml", "global", "id_embedding", "melu", "maml_full_network")
    assert len(list((out / "models").glob("*.safetensors"))) == len(kinds) * 2  # 2 seeds
    assert main(["eval", "--quick", "--quiet", "--dataset", f"movielens:{ml100k_dir}", "--max-events", "6000",
                 "--systems", "maml_full_network,limaml_streaming", "--seeds", "1", "--epochs", "1",
                 "--bootstrap-resamples", "50", "--latency-sweep", "0", "--out-dir", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed["auc"]) == {"maml_full_network", "limaml_streaming"}


def test_eval_on_synthetic_drift_data_reports_the_drift_segments(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "drift"
    assert main(["eval", "--quick", "--quiet", "--dataset", SYNTHETIC, "--seeds", "1", "--epochs", "2",
                 "--melu-epochs", "1", "--refresh-sweep", "1,4", "--bootstrap-resamples", "100",
                 "--out-dir", str(out)]) == 0
    capsys.readouterr()
    drift = json.loads((out / "drift.json").read_text())
    segments = drift["segments"]["limaml_streaming"]
    assert segments["steady members"]["n"] + segments["drifting members, before their drift"]["n"] \
        + segments["drifting members, after their drift"]["n"] == \
        json.loads((out / "results.json").read_text())["limaml_frozen"]["all"]["n"]
    assert set(drift["segments"]) == {"batch_daily", "limaml_frozen", "limaml_streaming"}
    assert {"auc", "gauc", "auc_ci_low"} <= set(segments["steady members"])
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
