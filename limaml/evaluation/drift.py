"""Drift segments of a synthetic log's test events, from the generator's ground truth.

The synthetic generator changes some members' taste at a known moment (`drift_ts`). A
frozen or nightly embedding describes the taste of a day or more ago; a streaming one can
follow the change within seconds. The segments below separate the test events where that
matters (drifting members) from the rest (steady members).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from limaml.adapters.registry import parse_synthetic_config
from limaml.adapters.synthetic import SyntheticConfig, generate_synthetic
from limaml.evaluation.bootstrap import MemberBootstrap
from limaml.evaluation.plots import plot_lines
from limaml.evaluation.report import format_interval, write_json
from limaml.evaluation.summary import Summary, difference, summarise, summary_json
from limaml.evaluation.training import Experiment

TIME_BINS = 4  # equal-count bins of test time for the gap-over-time view
STREAMING = "limaml_streaming"
REFERENCES = ("batch_daily", "limaml_frozen")  # what streaming is compared with
METRICS = ("auc", "gauc")


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
    drifting = member_drift >= 0
    after = drifting & (test.ts >= member_drift)
    return {
        "steady members": ~drifting,
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


def segment_table(summary: Summary, metric: str, references: tuple[str, ...]) -> str:
    shown = (*references, STREAMING)
    lines = ["| segment | events | " + " | ".join(shown) + " | "
             + " | ".join(f"streaming - {r} (paired)" for r in references) + " |",
             "| --- | ---: | " + " | ".join("---:" for _ in shown + references) + " |"]
    for segment, cell in summary[STREAMING].items():
        values = [format_interval(summary[name][segment].interval(metric)) for name in shown]
        gaps = [format_interval(difference(cell, summary[r][segment], metric), signed=True) for r in references]
        lines.append(f"| {segment} | {cell.n} | " + " | ".join(values + gaps) + " |")
    return "\n".join(lines) + "\n"


def drift_report(experiment: Experiment, drift_ts: np.ndarray, scores: dict[str, list[np.ndarray]],
                 bootstrap: MemberBootstrap, out_dir: Path) -> str:
    """Streaming against the nightly and frozen embeddings by drift segment and over test time:
    drift.json, drift.png and a markdown section."""
    references = tuple(r for r in REFERENCES if r in scores)
    if STREAMING not in scores or not references:
        return "\n## Drift (synthetic ground truth)\n\nNeeds limaml_streaming and batch_daily or limaml_frozen.\n"
    labels = experiment.labels
    compared = {name: scores[name] for name in (*references, STREAMING)}
    segments = drift_segments(experiment, drift_ts)
    by_segment = summarise(bootstrap, labels, segments, compared)
    bins = time_bins(experiment)
    over_time = {}
    for name in ("steady members", "drifting members, after their drift"):
        masks = {f"{i + 1}/{len(bins)}": segments[name] & b for i, b in enumerate(bins)}
        summary = summarise(bootstrap, labels, masks, compared)
        over_time[name] = {r: [difference(summary[STREAMING][q], summary[r][q], "auc") for q in masks]
                           for r in references}
    quarters = [f"{i + 1}/{len(bins)}" for i in range(len(bins))]
    write_json(out_dir / "drift.json", {
        "segments": summary_json(by_segment),
        "over_time_auc_gap": {segment: {r: [{"gap": g.value, "ci_low": g.low, "ci_high": g.high} for g in gaps]
                                        for r, gaps in per_ref.items()}
                              for segment, per_ref in over_time.items()}})
    plot_lines({f"{segment}, - {r}": gaps for segment, per_ref in over_time.items() for r, gaps in per_ref.items()},
               quarters, out_dir / "drift.png", "streaming minus reference AUC over the test period",
               "test period, equal-count quarters in time order", "AUC gap (95% member-bootstrap interval)")
    columns = [(segment, r) for segment, per_ref in over_time.items() for r in per_ref]
    time_table = ["| test period | " + " | ".join(f"{s}: streaming - {r}" for s, r in columns) + " |",
                  "| --- | " + " | ".join("---:" for _ in columns) + " |"]
    for i, quarter in enumerate(quarters):
        time_table.append(f"| {quarter} | " + " | ".join(
            format_interval(over_time[s][r][i], signed=True) for s, r in columns) + " |")
    return ("\n## Drift (synthetic ground truth)\n\nPooled AUC by segment:\n\n" + segment_table(by_segment, "auc", references)
            + "\nGAUC by segment:\n\n" + segment_table(by_segment, "gauc", references)
            + "\nPooled AUC gap over the test period:\n\n" + "\n".join(time_table)
            + "\n\n![gap over time](drift.png)\n")
