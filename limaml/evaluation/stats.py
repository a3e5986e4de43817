"""The spread of a metric over seeds, shown beside the member-bootstrap interval.

The interval is the Student-t 95% interval of the mean of the per-seed values. Every seed
retrains every model on the same training events and scores the same test events, so the
interval measures how much the result depends on training randomness (initialisation,
batch order, episode sampling), not how much it would move on another test period.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
         2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
         2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
"""The 0.975 quantile of Student's t for 1 to 30 degrees of freedom (1.96 beyond)."""


@dataclass(frozen=True)
class Estimate:
    """A mean over seeds with its 95% interval (None with fewer than two finite values)."""

    mean: float
    ci_low: float | None
    ci_high: float | None
    per_seed: tuple[float, ...]

    @classmethod
    def of(cls, values: list[float] | np.ndarray) -> Estimate:
        values = np.asarray(values, dtype=np.float64)
        finite = values[np.isfinite(values)]
        if finite.size == 0:
            return cls(float("nan"), None, None, tuple(values.tolist()))
        mean = float(finite.mean())
        if finite.size < 2:
            return cls(mean, None, None, tuple(values.tolist()))
        df = finite.size - 1
        half = (_T975[df - 1] if df <= len(_T975) else 1.96) * finite.std(ddof=1) / math.sqrt(finite.size)
        return cls(mean, mean - half, mean + half, tuple(values.tolist()))

