"""The member bootstrap's fast metrics against a naive computation of every resample."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from limaml.evaluation.bootstrap import MemberBootstrap, MemberStats, percentile_interval


def naive_metrics(member: np.ndarray, labels: np.ndarray, scores: np.ndarray,
                  multiplicity: dict[int, float]) -> dict[str, float]:
    """The metrics of one resample, from each event weighted by its member's multiplicity."""
    weight = np.array([multiplicity.get(int(m), 0.0) for m in member])
    p = np.clip(scores.astype(np.float64), 1e-7, 1 - 1e-7)
    losses = -(labels * np.log(p) + (1 - labels) * np.log(1 - p))
    own, own_weight = [], []
    for m, copies in multiplicity.items():
        mine = member == m
        if copies > 0 and 0 < labels[mine].sum() < mine.sum():
            own.append(roc_auc_score(labels[mine], scores[mine]))
            own_weight.append(copies * mine.sum())
    return {"auc": roc_auc_score(labels, scores, sample_weight=weight),
            "gauc": float(np.average(own, weights=own_weight)) if own else float("nan"),
            "log_loss": float(np.average(losses, weights=weight))}


@pytest.fixture()
def events() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    n = 600
    member = rng.integers(10, 40, n) * 3  # sparse, unordered member ids
    labels = (rng.random(n) < 0.3 + 0.4 * (member % 2)).astype(np.float32)
    scores = np.round(rng.random(n) * 0.6 + 0.2 * labels + 0.1, 2).astype(np.float32)  # many ties
    labels[member == 30] = 1.0  # a member with one label only: no own AUC
    return member, labels, scores


def test_every_resample_matches_the_weighted_metrics_computed_naively(events) -> None:
    member, labels, scores = events
    bootstrap = MemberBootstrap(member, resamples=25, seed=1)
    mask = np.random.default_rng(0).random(member.size) < 0.7
    samples = bootstrap.samples(labels, scores, mask)
    ids = np.unique(member)
    for row in range(bootstrap.resamples + 1):
        multiplicity = dict(zip(ids.tolist(), bootstrap.weights[row].tolist()))
        expected = naive_metrics(member[mask], labels[mask], scores[mask], multiplicity)
        for metric, value in expected.items():
            np.testing.assert_allclose(samples[metric][row], value, rtol=1e-10, err_msg=f"{metric} {row}")
    assert (bootstrap.weights[1:].sum(axis=1) == ids.size).all()  # each resample draws M members
    assert not np.allclose(samples["auc"][1:], samples["auc"][0])


def test_member_statistics_of_a_hand_made_log() -> None:
    member = np.array([0, 0, 0, 1, 1])
    labels = np.array([1, 0, 0, 1, 0])
    scores = np.array([0.5, 0.5, 0.2, 0.9, 0.6])
    stats = MemberStats.of(member, 2, labels, scores)
    # member 0's positive (0.5) beats its 0.2, ties its 0.5, and loses to member 1's 0.6
    # member 1's positive (0.9) beats all three negatives
    np.testing.assert_array_equal(stats.pairs, [[1.5, 0.0], [2.0, 1.0]])
    metrics = stats.metrics(np.array([[1.0, 1.0], [2.0, 0.0]]))
    np.testing.assert_allclose(metrics["auc"], [4.5 / 6, 1.5 / 2])
    np.testing.assert_allclose(metrics["gauc"], [(0.75 * 3 + 1.0 * 2) / 5, 0.75])


def test_paired_differences_and_percentile_intervals(events) -> None:
    member, labels, scores = events
    bootstrap = MemberBootstrap(member, resamples=200)
    everything = np.ones(member.size, dtype=bool)
    first = bootstrap.samples(labels, scores, everything)["auc"]
    noisier = bootstrap.samples(labels, scores + np.random.default_rng(5).normal(0, 0.2, member.size),
                                everything)["auc"]
    low, high = percentile_interval(first - noisier)
    assert low is not None and high is not None and 0 < low < first[0] - noisier[0] < high
    assert percentile_interval(first - first) == (0.0, 0.0)  # a system against itself
    undefined = np.full(201, np.nan)
    assert percentile_interval(undefined) == (None, None)
    with pytest.raises(ValueError, match="resample"):
        MemberBootstrap(member, resamples=0)
