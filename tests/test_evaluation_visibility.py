"""No system scores an event with a label it could not have seen: flipping the labels of the
event, of everything after it and of everything within the refresh latency before it
changes none of its scores, while flipping older labels does change some."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import pytest
import torch

from limaml.adapters.synthetic import SyntheticConfig, generate_synthetic
from limaml.model_config import default_tunables
from limaml.data import InteractionLog
from limaml.evaluation.baselines import WideAndDeep
from limaml.evaluation.counting import score_counting
from limaml.evaluation.maml_full_network import build_full_network_maml
from limaml.evaluation.melu import build_melu
from limaml.evaluation.online import score_online
from limaml.evaluation.protocol import DAILY, DAY_MS, Refresh, split_by_time, streaming
from limaml.evaluation.systems import score_fine_tuned, score_limaml
from limaml.train import build_model

LATENCY_S = 3 * 3600.0
QUANTILE = 0.6
Scorer = Callable[[InteractionLog, Refresh], np.ndarray]


@pytest.fixture(scope="module")
def log() -> InteractionLog:
    data = generate_synthetic(SyntheticConfig(n_members=30, n_items=25, mean_events=20, duration_days=3,
                                              seed=9)).log
    return dataclasses.replace(data, ts=data.ts // 60_000 * 60_000)  # minute resolution: ties


@pytest.fixture(scope="module")
def scorers(log: InteractionLog) -> dict[str, Scorer]:
    torch.manual_seed(0)
    tunables = default_tunables() | {"meta_dim": 8, "global_hidden": (16, 8), "inner_steps": 2}
    limaml = build_model(log, tunables)
    melu = build_melu(log, local_lr=0.5, local_steps=2)
    full = build_full_network_maml(log, tunables, inner_lr=0.1)
    train, _ = split_by_time(log, QUANTILE)
    known = np.bincount(train.member, minlength=len(log.members)) > 0
    id_model = WideAndDeep(build_model(log, tunables), known, id_dropout=0.1).eval()
    cpu = torch.device("cpu")

    def split(data: InteractionLog):
        return split_by_time(data, QUANTILE)

    return {
        "limaml": lambda data, policy: score_limaml(limaml, data, split(data)[1], policy, 16, cpu),
        "melu": lambda data, policy: score_fine_tuned(melu, data, split(data)[1], policy, 16, cpu),
        "maml_full_network": lambda data, policy: score_fine_tuned(full, data, split(data)[1], policy, 16, cpu),
        "counting": lambda data, policy: score_counting(data, *split(data), policy, 2.0, 2.0, 8),
        "id_embedding_online": lambda data, policy: score_online(id_model, data, split(data)[1], policy, 1.0),
    }


def flipped(data: InteractionLog, mask: np.ndarray) -> InteractionLog:
    label = data.label.copy()
    label[mask] = 1.0 - label[mask]
    return dataclasses.replace(data, label=label)


@pytest.mark.parametrize("system", ["limaml", "melu", "maml_full_network", "counting", "id_embedding_online"])
def test_no_score_uses_a_label_within_the_latency_or_later(log, scorers, system) -> None:
    score = scorers[system]
    _, test = split_by_time(log, QUANTILE)
    policy = streaming(1, LATENCY_S)
    base = score(log, policy)
    positions = np.arange(log.n_events)
    # events whose member had test events within the latency before them: L = 0 would see those
    hidden = np.flatnonzero(test.refresh_point(policy) < test.refresh_point(streaming(1)))
    assert hidden.size > 20
    for t in np.concatenate([hidden[::hidden.size // 6], [0, len(test) - 1]]):
        event, ts = test.index[t], test.ts[t]
        unseen = (positions >= event) | ((log.ts > ts - LATENCY_S * 1000) & (log.ts >= test.split_ts))
        np.testing.assert_allclose(score(flipped(log, unseen), policy)[t], base[t], rtol=1e-6, atol=1e-7)
    older = (log.ts >= test.split_ts) & (log.ts < test.ts[-1] - LATENCY_S * 1000)
    assert not np.allclose(score(flipped(log, older), policy), base)  # the visible past does matter


def test_the_nightly_batch_uses_no_label_of_the_events_day(log, scorers) -> None:
    score = scorers["limaml"]
    _, test = split_by_time(log, QUANTILE)
    base = score(log, DAILY)
    for t in np.linspace(0, len(test) - 1, 8).astype(int):
        midnight = test.ts[t] // DAY_MS * DAY_MS
        np.testing.assert_allclose(score(flipped(log, log.ts >= midnight), DAILY)[t], base[t], rtol=1e-6, atol=1e-7)
    assert not np.allclose(score(flipped(log, log.ts < test.ts[-1] // DAY_MS * DAY_MS), DAILY), base)
