"""A bootstrap over members of pooled AUC, per-member AUC (GAUC) and log-loss.

The test members are drawn with replacement R times; a resample gives each member a
multiplicity c_m (how often it was drawn), and a metric of the resample is the metric of
the test events with every event weighted by its member's multiplicity. Every system is
measured on the same resamples, so the difference of two systems has its own (paired)
interval.

All three metrics follow from statistics per member, computed once per set of scores, so
a resample costs a few products with its [M] multiplicities instead of a sort:

- pooled AUC: with pairs[m, m'] the number of (positive event of m, negative event of m')
  pairs scored in the right order, ties counted as half, the weighted Mann-Whitney
  statistic of a resample is c^T pairs c / ((c . positives) (c . negatives));
- GAUC (the DIN paper's): member m's own AUC is pairs[m, m] / (positives_m negatives_m);
  a resample's GAUC is their mean weighted by c_m n_m over members with both labels;
- log-loss: sum_m c_m loss_m / sum_m c_m n_m, with loss_m the member's summed log-loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

METRICS = ("auc", "gauc", "log_loss")
"""The metrics every summary reports; higher is better except for log-loss."""

BOOTSTRAP_SEED = 0  # resamples are drawn from this seed, so reruns give the same intervals
EPS = 1e-7  # probabilities are clipped to [EPS, 1 - EPS] in the log-loss, as in limaml.ranking_metrics


@dataclass(frozen=True)
class MemberStats:
    """What the metrics of any reweighting of members need, for M members."""

    pairs: np.ndarray  # [M, M] correctly ordered (positive of m, negative of m') pairs, ties half
    positives: np.ndarray  # [M] positive events per member
    negatives: np.ndarray  # [M] negative events per member
    loss: np.ndarray  # [M] summed log-loss of each member's events

    @classmethod
    def of(cls, member: np.ndarray, n_members: int, labels: np.ndarray,
           scores: np.ndarray) -> MemberStats:
        """member [E] codes in [0, n_members), labels [E] in {0, 1}, scores [E] probabilities."""
        y = np.asarray(labels, dtype=np.float64)
        _, group = np.unique(scores, return_inverse=True)  # [E] tie group, in ascending score order
        group = group.reshape(-1)
        n_groups = int(group.max()) + 1 if group.size else 0
        negative = y == 0.0
        neg = np.bincount(group[negative] * n_members + member[negative],
                          minlength=n_groups * n_members).reshape(n_groups, n_members)
        # pairs[m, m'] sums, over the positives of m, the negatives of m' scored lower than
        # the positive (ties half): row g of `below` for a positive in tie group g
        positive = np.flatnonzero(~negative)
        positive = positive[np.argsort(member[positive], kind="stable")]
        owners, first = np.unique(member[positive], return_index=True)
        pairs = np.zeros((n_members, n_members))
        if positive.size:
            at = group[positive]
            below = np.cumsum(neg, axis=0)[at] - 0.5 * neg[at]  # [P, M]
            pairs[owners] = np.add.reduceat(below, first, axis=0)
        p = np.clip(np.asarray(scores, dtype=np.float64), EPS, 1.0 - EPS)
        losses = -(y * np.log(p) + (1.0 - y) * np.log(1.0 - p))
        return cls(pairs=pairs, positives=np.bincount(member, weights=y, minlength=n_members),
                   negatives=np.bincount(member, weights=1.0 - y, minlength=n_members),
                   loss=np.bincount(member, weights=losses, minlength=n_members))

    def metrics(self, weights: np.ndarray) -> dict[str, np.ndarray]:
        """Metric -> [S] values under [S, M] member multiplicities (NaN where undefined)."""
        events = self.positives + self.negatives
        with np.errstate(invalid="ignore", divide="ignore"):
            concordant = ((weights @ self.pairs) * weights).sum(axis=1)  # c^T pairs c per row
            auc = concordant / ((weights @ self.positives) * (weights @ self.negatives))
            both = (self.positives > 0) & (self.negatives > 0)
            own = np.where(both, np.diag(self.pairs) / (self.positives * self.negatives), 0.0)
            gauc_weights = weights * np.where(both, events, 0.0)  # [S, M]
            gauc = (gauc_weights @ own) / gauc_weights.sum(axis=1)
            log_loss = (weights @ self.loss) / (weights @ events)
        return {"auc": auc, "gauc": gauc, "log_loss": log_loss}


class MemberBootstrap:
    """R resamples of a set of test members; row 0 of every result is the observed sample."""

    def __init__(self, member: np.ndarray, resamples: int, seed: int = BOOTSTRAP_SEED) -> None:
        if resamples < 1:
            raise ValueError(f"the bootstrap needs at least one resample, got {resamples}")
        ids, codes = np.unique(member, return_inverse=True)
        self.code = codes.reshape(-1)  # [T] each test event's member as 0..M-1
        rng = np.random.default_rng(seed)
        drawn = rng.multinomial(ids.size, np.full(ids.size, 1.0 / ids.size), size=resamples)
        self.weights = np.vstack([np.ones(ids.size), drawn]).astype(np.float64)  # [1 + R, M]

    @property
    def resamples(self) -> int:
        return self.weights.shape[0] - 1

    def samples(self, labels: np.ndarray, scores: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
        """Metric -> [1 + R] values over the masked test events: observed, then each resample."""
        present, local = np.unique(self.code[mask], return_inverse=True)
        stats = MemberStats.of(local.reshape(-1), present.size, labels[mask], scores[mask])
        return stats.metrics(self.weights[:, present])


def percentile_interval(samples: np.ndarray, level: float = 0.95) -> tuple[float | None, float | None]:
    """The percentile interval of the resamples (row 1 on), None where fewer than half are defined."""
    resampled = samples[1:]
    finite = resampled[np.isfinite(resampled)]
    if finite.size == 0 or finite.size < resampled.size / 2:
        return None, None
    tail = 50.0 * (1.0 - level)
    low, high = np.percentile(finite, [tail, 100.0 - tail])
    return float(low), float(high)
