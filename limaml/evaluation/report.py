"""Markdown tables and JSON files of summaries and claims."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from limaml.evaluation.bootstrap import METRICS
from limaml.evaluation.stats import Estimate
from limaml.evaluation.summary import Claim, Interval, Summary

METRIC_NAMES = {"auc": "pooled AUC", "gauc": "GAUC (per-member AUC)", "log_loss": "log-loss"}


def format_interval(interval: Interval, signed: bool = False) -> str:
    if not math.isfinite(interval.value):
        return "n/a"
    number = "{:+.4f}" if signed else "{:.4f}"
    text = number.format(interval.value)
    if interval.low is not None and interval.high is not None:
        text += f" [{number.format(interval.low)}, {number.format(interval.high)}]"
    return text


def format_seeds(estimate: Estimate) -> str:
    """Mean [Student-t interval] (per-seed values)."""
    if not math.isfinite(estimate.mean):
        return "n/a"
    text = f"{estimate.mean:.4f}"
    if estimate.ci_low is not None and estimate.ci_high is not None:
        text += f" [{estimate.ci_low:.4f}, {estimate.ci_high:.4f}]"
    return text + " (" + ", ".join("n/a" if math.isnan(v) else f"{v:.4f}" for v in estimate.per_seed) + ")"


def markdown_table(summary: Summary, metric: str = "auc", first_header: str = "system",
                   counts: bool = True) -> str:
    """A row per summary row and a column per summary column: value [95% bootstrap interval]."""
    columns = list(next(iter(summary.values())))
    lines = [f"| {first_header} | " + " | ".join(columns) + " |",
             "| --- | " + " | ".join("---:" for _ in columns) + " |"]
    if counts:
        first = next(iter(summary.values()))
        lines.append("| events | " + " | ".join(str(first[c].n) for c in columns) + " |")
    for row, cells in summary.items():
        lines.append(f"| {row} | " + " | ".join(format_interval(cells[c].interval(metric)) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def seed_table(summary: Summary, column: str = "all") -> str:
    """Each metric's spread over seeds in one column of the summary."""
    lines = ["| system | " + " | ".join(METRIC_NAMES[m] for m in METRICS) + " |",
             "| --- | " + " | ".join("---:" for _ in METRICS) + " |"]
    for row, cells in summary.items():
        lines.append(f"| {row} | " + " | ".join(format_seeds(cells[column].seeds(m)) for m in METRICS) + " |")
    return "\n".join(lines) + "\n"


def claims_markdown(claims: Sequence[Claim]) -> str:
    lines = ["| claim | bucket | metric | difference [paired 95% interval] | verdict |",
             "| --- | --- | --- | ---: | --- |"]
    for claim in claims:
        verdict = "**holds**" if claim.held else "does not hold"
        lines.append(f"| {claim.system} > {claim.other} | {claim.bucket} | {METRIC_NAMES[claim.metric]} | "
                     f"{format_interval(claim.difference, signed=True)} | {verdict} |")
    return "\n".join(lines) + "\n"


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, allow_nan=False, default=str) + "\n")
