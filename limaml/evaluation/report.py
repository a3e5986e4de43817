"""Summaries of per-seed scores, and the report files built from them.

A summary maps a row name (a system, a refresh interval, a segment) to a column name (a
bucket) to {auc, ci_low, ci_high, n, log_loss, log_loss_ci_low, log_loss_ci_high,
auc_per_seed}; non-finite values become null so the JSON stays valid.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from limaml.evaluation.stats import Estimate, seed_metrics

Summary = dict[str, dict[str, dict[str, Any]]]


def summarise(labels: np.ndarray, masks: Mapping[str, np.ndarray],
              scores: Mapping[str, Sequence[np.ndarray]]) -> Summary:
    """Row -> column -> metrics, for per-seed scores of every row and event masks as columns."""
    summary: Summary = {}
    for row, per_seed in scores.items():
        summary[row] = {}
        for column, mask in masks.items():
            auc, loss = seed_metrics(labels, list(per_seed), mask)
            summary[row][column] = {
                "auc": finite_or_none(auc.mean), "ci_low": finite_or_none(auc.ci_low), "ci_high": finite_or_none(auc.ci_high),
                "n": int(mask.sum()), "log_loss": finite_or_none(loss.mean),
                "log_loss_ci_low": finite_or_none(loss.ci_low), "log_loss_ci_high": finite_or_none(loss.ci_high),
                "auc_per_seed": [finite_or_none(v) for v in auc.per_seed],
            }
    return summary


def auc_estimate(cell: Mapping[str, Any]) -> Estimate:
    return Estimate(nan_if_none(cell["auc"]), cell["ci_low"], cell["ci_high"],
                    tuple(nan_if_none(v) for v in cell["auc_per_seed"]))


def paired_difference(first: Mapping[str, Any], second: Mapping[str, Any]) -> Estimate:
    """first - second AUC, seed by seed (the same seed trains both), with its interval."""
    return Estimate.of(np.subtract([nan_if_none(v) for v in first["auc_per_seed"]],
                                   [nan_if_none(v) for v in second["auc_per_seed"]]))


@dataclass(frozen=True)
class Claim:
    text: str
    held: bool | None  # None: not enough seeds to decide
    evidence: str


def check_claims(results: Summary, buckets: Sequence[str] = ("all", "1-4", "5-19")) -> list[Claim]:
    """The paper's claims on this data, each decided by non-overlapping 95% intervals."""
    claims = []
    streaming = results["limaml_streaming"]
    for baseline in ("global", "id_embedding", "limaml_frozen"):
        for bucket in buckets if baseline != "limaml_frozen" else ("all",):
            ours, theirs = auc_estimate(streaming[bucket]), auc_estimate(results[baseline][bucket])
            decided = ours.ci_low is not None and theirs.ci_high is not None
            diff = paired_difference(streaming[bucket], results[baseline][bucket])
            claims.append(Claim(
                text=f"limaml_streaming > {baseline} in bucket {bucket}",
                held=ours.above(theirs) if decided else None,
                evidence=(f"{format_estimate(ours)} vs {format_estimate(theirs)}; paired difference "
                          f"{format_estimate(diff, signed=True)}")))
    return claims


def format_estimate(estimate: Estimate, signed: bool = False) -> str:
    if not math.isfinite(estimate.mean):
        return "n/a"
    number = "{:+.4f}" if signed else "{:.4f}"
    text = number.format(estimate.mean)
    if estimate.ci_low is not None and estimate.ci_high is not None:
        text += f" [{number.format(estimate.ci_low)}, {number.format(estimate.ci_high)}]"
    return text


def markdown_table(summary: Summary, metric: str = "auc", first_header: str = "system",
                   counts: bool = True) -> str:
    """A table with a row per summary row and a column per bucket: mean [95% CI]."""
    columns = list(next(iter(summary.values())))
    lines = [f"| {first_header} | " + " | ".join(columns) + " |",
             "| --- | " + " | ".join("---:" for _ in columns) + " |"]
    if counts:
        first = next(iter(summary.values()))
        lines.append("| events | " + " | ".join(str(first[c]["n"]) for c in columns) + " |")
    low, high = ("ci_low", "ci_high") if metric == "auc" else ("log_loss_ci_low", "log_loss_ci_high")
    for row, cells in summary.items():
        shown = [format_estimate(Estimate(nan_if_none(cells[c][metric]), cells[c][low], cells[c][high], ()))
                 for c in columns]
        lines.append(f"| {row} | " + " | ".join(shown) + " |")
    return "\n".join(lines) + "\n"


def claims_markdown(claims: Sequence[Claim]) -> str:
    marks = {True: "holds", False: "does NOT hold", None: "undecided (needs >= 2 seeds)"}
    return "".join(f"- {claim.text}: **{marks[claim.held]}** ({claim.evidence})\n" for claim in claims)


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, allow_nan=False, default=str) + "\n")


def finite_or_none(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def nan_if_none(value: float | None) -> float:
    return float("nan") if value is None else float(value)
