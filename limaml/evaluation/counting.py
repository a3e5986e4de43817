"""Baselines that count instead of learning: `popularity` and `counting`.

- popularity: the item's positive rate over the training events, smoothed toward the global
  rate g with a pseudo-count a: (positives_i + a g) / (events_i + a). Static.
- counting: the item's smoothed rate and the member's positive rate over their W most recent
  visible events (smoothed the same way with pseudo-count b), added in logit space:
  logit(item rate) + logit(member rate) - logit(g), the naive-Bayes combination of two
  independent pieces of evidence about the same base rate. The member's rate moves during
  the test period under the same refresh policy (N, L) as every moving state.
"""

from __future__ import annotations

import numpy as np

from limaml.data import InteractionLog
from limaml.evaluation.protocol import Refresh, TestEvents


def logit(p: np.ndarray | float) -> np.ndarray:
    return np.log(p) - np.log1p(-np.asarray(p))


def item_rates(train_log: InteractionLog, pseudo_count: float) -> tuple[np.ndarray, float]:
    """[n_items] smoothed positive rate of every item over the training events, and g."""
    n_items = len(train_log.items)
    events = np.bincount(train_log.item, minlength=n_items)
    positives = np.bincount(train_log.item, weights=train_log.label, minlength=n_items)
    rate = float(train_log.label.mean())
    with np.errstate(invalid="ignore"):  # 0 / 0 for an unseen item without smoothing
        smoothed = (positives + pseudo_count * rate) / (events + pseudo_count)
    return np.where(events + pseudo_count > 0, smoothed, rate), rate


def score_popularity(log_data: InteractionLog, train_log: InteractionLog, test: TestEvents,
                     pseudo_count: float) -> np.ndarray:
    """[T] the item's smoothed training positive rate."""
    rates, _ = item_rates(train_log, pseudo_count)
    return rates[log_data.item[test.index]].astype(np.float32)


def member_rates(log_data: InteractionLog, test: TestEvents, policy: Refresh, window: int,
                 pseudo_count: float, prior: float) -> np.ndarray:
    """[T] each event's member's smoothed positive rate over the last `window` events of the
    prefix the policy makes visible (0: the whole prefix)."""
    end = test.refresh_point(policy)
    begin = np.maximum(end - window, 0) if window else np.zeros_like(end)
    labels = log_data.label[test.histories.order].astype(np.float64)  # grouped by member, in time
    cumulative = np.concatenate([[0.0], np.cumsum(labels)])
    first = test.histories.start[test.member]
    positives = cumulative[first + end] - cumulative[first + begin]
    return (positives + pseudo_count * prior) / (end - begin + pseudo_count)


def score_counting(log_data: InteractionLog, train_log: InteractionLog, test: TestEvents,
                   policy: Refresh, item_pseudo_count: float, member_pseudo_count: float,
                   window: int) -> np.ndarray:
    """[T] sigmoid(logit(item rate) + logit(member rate) - logit(g))."""
    rates, prior = item_rates(train_log, item_pseudo_count)
    item = np.clip(rates[log_data.item[test.index]], 1e-6, 1 - 1e-6)
    member = np.clip(member_rates(log_data, test, policy, window, member_pseudo_count, prior), 1e-6, 1 - 1e-6)
    return (1.0 / (1.0 + np.exp(-(logit(item) + logit(member) - logit(prior))))).astype(np.float32)
