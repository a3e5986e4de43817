"""AUC and log-loss against scikit-learn's reference implementations."""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import log_loss as sk_log_loss
from sklearn.metrics import roc_auc_score

from limaml.ranking_metrics import log_loss, roc_auc


def test_auc_matches_scikit_learn_with_many_ties() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 2000)
    scores = np.round(rng.random(2000) + 0.3 * labels, 1)  # coarse scores: heavy ties
    assert math.isclose(roc_auc(labels, scores), roc_auc_score(labels, scores), rel_tol=1e-12)


def test_auc_of_perfect_reversed_and_one_class_inputs() -> None:
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert roc_auc(np.array([1, 1, 0, 0]), np.array([0.1, 0.2, 0.3, 0.4])) == 0.0
    assert math.isnan(roc_auc(np.ones(3), np.array([0.1, 0.2, 0.3])))


def test_log_loss_matches_scikit_learn() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 500)
    probabilities = rng.random(500)
    assert math.isclose(log_loss(labels, probabilities), sk_log_loss(labels, probabilities), rel_tol=1e-9)
