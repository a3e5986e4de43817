"""Per-seed scores summarised: metrics with member-bootstrap intervals, seed spread, claims.

A summary maps a row (a system, a refresh latency, ...) and a column (a bucket, a drift
segment) to a `Cell`: for each metric the observed value and every resample's, each the
mean over seeds of that seed's value, plus the per-seed observed values. Differences of
two cells are taken resample by resample (the resamples are shared), which gives the
paired interval a claim is decided by.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from limaml.evaluation.bootstrap import METRICS, MemberBootstrap, percentile_interval
from limaml.evaluation.stats import Estimate

CLAIM_BUCKETS = ("all", "1-4", "5-19")
CLAIM_METRICS = ("auc", "gauc")
SUBJECT = "limaml_streaming"


@dataclass(frozen=True)
class Interval:
    """An observed value and its 95% bootstrap percentile interval (None: undefined)."""

    value: float
    low: float | None
    high: float | None

    @classmethod
    def of(cls, samples: np.ndarray) -> Interval:
        low, high = percentile_interval(samples)
        return cls(float(samples[0]), low, high)

    @property
    def above_zero(self) -> bool:
        return self.low is not None and self.low > 0


@dataclass(frozen=True)
class Cell:
    """One row in one column."""

    n: int  # test events
    samples: Mapping[str, np.ndarray]  # metric -> [1 + R] seed means: observed, then resamples
    per_seed: Mapping[str, tuple[float, ...]]  # metric -> observed value of each seed

    def interval(self, metric: str) -> Interval:
        return Interval.of(self.samples[metric])

    def seeds(self, metric: str) -> Estimate:
        """The spread over seeds: Student-t 95% interval of the per-seed values."""
        return Estimate.of(list(self.per_seed[metric]))

    def to_json(self) -> dict[str, Any]:
        cell: dict[str, Any] = {"n": self.n}
        for metric in METRICS:
            interval, seeds = self.interval(metric), self.seeds(metric)
            cell |= {metric: finite_or_none(interval.value), f"{metric}_ci_low": interval.low,
                     f"{metric}_ci_high": interval.high,
                     f"{metric}_per_seed": [finite_or_none(v) for v in self.per_seed[metric]],
                     f"{metric}_seed_ci_low": finite_or_none(seeds.ci_low),
                     f"{metric}_seed_ci_high": finite_or_none(seeds.ci_high)}
        return cell


Summary = dict[str, dict[str, Cell]]


def summarise(bootstrap: MemberBootstrap, labels: np.ndarray, masks: Mapping[str, np.ndarray],
              scores: Mapping[str, Sequence[np.ndarray]]) -> Summary:
    """Row -> column -> cell, for per-seed [T] scores of every row and [T] masks as columns."""
    summary: Summary = {}
    for row, per_seed in scores.items():
        summary[row] = {}
        for column, mask in masks.items():
            seeds = [bootstrap.samples(labels, values, mask) for values in per_seed]
            summary[row][column] = Cell(
                n=int(mask.sum()),
                samples={m: np.mean([s[m] for s in seeds], axis=0) for m in METRICS},
                per_seed={m: tuple(float(s[m][0]) for s in seeds) for m in METRICS})
    return summary


def difference(first: Cell, second: Cell, metric: str) -> Interval:
    """first - second, resample by resample: the paired interval."""
    return Interval.of(first.samples[metric] - second.samples[metric])


def summary_json(summary: Summary) -> dict[str, dict[str, dict[str, Any]]]:
    return {row: {column: cell.to_json() for column, cell in cells.items()}
            for row, cells in summary.items()}


@dataclass(frozen=True)
class Claim:
    """`system` beats `other` on `metric` in `bucket`: held when the paired interval of the
    difference lies entirely above 0."""

    system: str
    other: str
    bucket: str
    metric: str
    difference: Interval

    @property
    def held(self) -> bool:
        return self.difference.above_zero

    def to_json(self) -> dict[str, Any]:
        return {"system": self.system, "other": self.other, "bucket": self.bucket,
                "metric": self.metric, "difference": finite_or_none(self.difference.value),
                "ci_low": self.difference.low, "ci_high": self.difference.high, "held": self.held}


def check_claims(summary: Summary, subject: str = SUBJECT, buckets: Sequence[str] = CLAIM_BUCKETS,
                 metrics: Sequence[str] = CLAIM_METRICS) -> list[Claim]:
    """`subject` against every other row of the summary, per bucket and metric."""
    if subject not in summary:
        return []
    return [Claim(subject, other, bucket, metric,
                  difference(summary[subject][bucket], summary[other][bucket], metric))
            for other in summary if other != subject
            for bucket in buckets for metric in metrics]


def finite_or_none(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)
