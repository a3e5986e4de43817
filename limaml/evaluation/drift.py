"""Drift segments of a synthetic log's test events, from the generator's ground truth.

The synthetic generator changes some members' taste at a known moment (`drift_ts`). A
frozen embedding describes the taste before that moment; a streaming one can follow the
change. The segments below separate the test events where that matters from the rest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from limaml.adapters.registry import parse_synthetic_config
from limaml.adapters.synthetic import SyntheticConfig, generate_synthetic
from limaml.evaluation.plots import plot_lines
from limaml.evaluation.report import (finite_or_none, nan_if_none, auc_estimate, format_estimate,
                                      paired_difference, summarise, write_json)
from limaml.evaluation.stats import Estimate
from limaml.evaluation.training import Experiment

TIME_BINS = 4  # equal-count bins of test time for the gap-over-time view


def drift_times(spec: str) -> np.ndarray | None:
    """[len(members)] drift time of each member (-1: none), or None if the log is not synthetic."""
    name, separator, options = spec.partition(":")
    if name != "synthetic":
        return None
    config = parse_synthetic_config(options) if separator else SyntheticConfig()
    return generate_synthetic(config).truth.drift_ts


def drift_segments(experiment: Experiment, drift_ts: np.ndarray) -> dict[str, np.ndarray]:
    """Segment name -> [T] mask of the test events in it."""
    test = experiment.test
    member_drift = drift_ts[test.member]
    ts = experiment.log.ts[test.index]
    drifting = member_drift >= 0
    after = drifting & (ts >= member_drift)
    return {
        "stable members": ~drifting,
        "drifting members, before their drift": drifting & ~after,
        "drifting members, after their drift": after,
        "drift after the split, after it": after & (member_drift >= test.split_ts),
    }


def time_bins(experiment: Experiment, n_bins: int = TIME_BINS) -> list[np.ndarray]:
    """[T] masks of equal-count bins of the test period, oldest first."""
    count = len(experiment.test)
    edges = np.linspace(0, count, n_bins + 1).astype(int)
    positions = np.arange(count)
    return [(positions >= lo) & (positions < hi) for lo, hi in zip(edges[:-1], edges[1:])]


def _gap_cell(estimate: Estimate, n: int) -> dict[str, Any]:
    return {"gap": finite_or_none(estimate.mean), "ci_low": finite_or_none(estimate.ci_low),
            "ci_high": finite_or_none(estimate.ci_high), "n": n}


def drift_report(experiment: Experiment, drift_ts: np.ndarray, scores: dict[str, list[np.ndarray]],
                 out_dir: Path) -> str:
    """Streaming against frozen by drift segment and over test time: drift.json, drift.png and
    a markdown section."""
    labels = experiment.labels
    compared = {name: scores[name] for name in ("limaml_frozen", "limaml_streaming")}
    segments = drift_segments(experiment, drift_ts)
    by_segment = summarise(labels, segments, compared)
    table = ["| segment | events | limaml_frozen | limaml_streaming | streaming - frozen (paired) |",
             "| --- | ---: | ---: | ---: | ---: |"]
    segment_json = {}
    for name, mask in segments.items():
        frozen, streaming = by_segment["limaml_frozen"][name], by_segment["limaml_streaming"][name]
        gap = paired_difference(streaming, frozen)
        segment_json[name] = {"limaml_frozen": frozen, "limaml_streaming": streaming,
                              **_gap_cell(gap, int(mask.sum()))}
        table.append(f"| {name} | {int(mask.sum())} | {format_estimate(auc_estimate(frozen))} | "
                     f"{format_estimate(auc_estimate(streaming))} | {format_estimate(gap, signed=True)} |")
    bins = time_bins(experiment)
    over_time: dict[str, dict[str, dict[str, Any]]] = {}
    for name in ("stable members", "drifting members, after their drift"):
        masks = {f"{i + 1}/{len(bins)}": segments[name] & b for i, b in enumerate(bins)}
        summary = summarise(labels, masks, compared)
        over_time[name] = {
            label: _gap_cell(paired_difference(summary["limaml_streaming"][label],
                                               summary["limaml_frozen"][label]), int(mask.sum()))
            for label, mask in masks.items()}
    write_json(out_dir / "drift.json", {"segments": segment_json, "over_time": over_time})
    plot_lines({name: (list(cells), [{"auc": c["gap"], "ci_low": c["ci_low"], "ci_high": c["ci_high"]}
                                     for c in cells.values()])
                for name, cells in over_time.items()},
               out_dir / "drift.png", "streaming - frozen AUC over the test period",
               "test period, equal-count quarters in time order", "AUC gap (95% CI over seeds)")
    time_table = ["| test period | " + " | ".join(over_time) + " |",
                  "| --- | " + " | ".join("---:" for _ in over_time) + " |"]
    for label in next(iter(over_time.values())):
        cells = [over_time[name][label] for name in over_time]
        time_table.append(f"| {label} | " + " | ".join(
            f"{format_estimate(Estimate(nan_if_none(c['gap']), c['ci_low'], c['ci_high'], ()), signed=True)}"
            f" (n={c['n']})" for c in cells) + " |")
    return ("\n## Drift (synthetic ground truth)\n\n" + "\n".join(table) + "\n\n"
            "streaming - frozen AUC gap over the test period:\n\n" + "\n".join(time_table)
            + "\n\n![gap over time](drift.png)\n")
