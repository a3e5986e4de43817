"""The evaluator's bookkeeping on a tiny hand-made log whose answers are known by hand."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from limaml.data import InteractionLog, Vocabulary
from limaml.evaluation.protocol import (BUCKET_NAMES, DAILY, DAY_MS, FROZEN, NEVER, Refresh, split_by_time,
                                       streaming, tasks_for)
from limaml.evaluation.bootstrap import MemberBootstrap
from limaml.evaluation.stats import Estimate
from limaml.evaluation.summary import check_claims, summarise
from limaml.evaluation.systems import score_limaml
from limaml.train import build_model

# (member, item, ts) in file order; the split time is 4. Events 5 and 7 tie at ts 4.
EVENTS = [(1, 1, 1), (2, 2, 1), (1, 3, 2), (1, 1, 3), (2, 3, 3),
          (1, 2, 4), (3, 1, 4), (1, 3, 4), (2, 1, 5), (3, 2, 6), (1, 1, 7)]
SPLIT_QUANTILE = 0.5  # ts[int(0.5 * 11)] = ts[5] = 4


def tiny_log(labels: np.ndarray | None = None, events: list[tuple[int, int, int]] = EVENTS,
             ms: int = 1000) -> InteractionLog:
    """The hand-made log; `ms` milliseconds per time unit of `events`."""
    member, item, ts = (np.array(column, dtype=np.int64) for column in zip(*events))
    n = member.size
    if labels is None:
        labels = np.array([1, 0, 1, 1, 0, 0, 1, 1, 0, 1, 0] * n, dtype=np.float32)[:n]
    return InteractionLog(
        name="tiny", member=member, item=item, label=labels, ts=ts * ms,
        context=np.zeros((n, 0), dtype=np.float32), context_names=(),
        members=Vocabulary(("a", "b", "c")), items=Vocabulary(("x", "y", "z")),
        member_features={"gender": np.array([0, 1, 2, 1])},
        member_feature_vocabs={"gender": Vocabulary(("f", "m"))},
        item_features=np.array([[0.0], [1.0], [0.0], [1.0]], dtype=np.float32),
        item_feature_names=("genre",))


def test_the_split_and_each_test_events_place_in_its_members_history() -> None:
    train, test = split_by_time(tiny_log(), SPLIT_QUANTILE)
    assert test.split_ts == 4000 and train.n_events == 5 and (train.ts < 4000).all()
    np.testing.assert_array_equal(test.index, [5, 6, 7, 8, 9, 10])
    np.testing.assert_array_equal(test.member, [1, 3, 1, 2, 3, 1])
    np.testing.assert_array_equal(test.position, [3, 0, 4, 2, 1, 5])  # prior interactions
    np.testing.assert_array_equal(test.split_count, [3, 0, 3, 2, 0, 3])


def test_refresh_points_of_each_policy() -> None:
    _, test = split_by_time(tiny_log(), SPLIT_QUANTILE)
    np.testing.assert_array_equal(test.refresh_point(NEVER), [0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(test.refresh_point(FROZEN), [3, 0, 3, 2, 0, 3])
    np.testing.assert_array_equal(test.refresh_point(streaming(1)), [3, 0, 4, 2, 1, 5])
    np.testing.assert_array_equal(test.refresh_point(streaming(2)), [3, 0, 3, 2, 0, 5])
    np.testing.assert_array_equal(test.refresh_point(streaming(1000)), test.refresh_point(FROZEN))
    with pytest.raises(ValueError, match="every >= 1"):
        streaming(0)
    with pytest.raises(ValueError, match="latency_s >= 0"):
        Refresh("streaming", 1, -1.0)


def test_a_refresh_is_usable_only_latency_seconds_after_the_event_that_triggered_it() -> None:
    _, test = split_by_time(tiny_log(), SPLIT_QUANTILE)  # test events at 4, 4, 4, 5, 6, 7 s
    # event 7 (ts 4) no longer sees event 5 of the same second once L > 0
    np.testing.assert_array_equal(test.visible_count(0.5), [3, 0, 3, 2, 1, 5])
    np.testing.assert_array_equal(test.refresh_point(streaming(1, 1.0)), [3, 0, 3, 2, 1, 5])
    np.testing.assert_array_equal(test.refresh_point(streaming(1, 2.0)), [3, 0, 3, 2, 1, 5])
    # L = 3: event 9 (ts 6) sees nothing of its member's event at 4 s; events 5, 7 and 8 see
    # fewer events than their members had before the split, and keep the frozen state (r = s)
    np.testing.assert_array_equal(test.visible_count(3.0), [1, 0, 1, 1, 0, 5])
    np.testing.assert_array_equal(test.refresh_point(streaming(1, 3.0)), [3, 0, 3, 2, 0, 5])
    np.testing.assert_array_equal(test.refresh_point(streaming(1, 4.0)), test.refresh_point(FROZEN))
    # below a millisecond the rule is L = 0's: never an event later in the file
    np.testing.assert_array_equal(test.refresh_point(streaming(1, 1e-4)), test.refresh_point(streaming(1)))
    for latency in (0.0, 0.5, 1.0, 3.0, 10.0):
        assert (test.refresh_point(streaming(1, latency)) <= test.position).all()


def test_the_daily_batch_sees_the_events_before_the_last_midnight() -> None:
    hour = 3_600_000
    times = np.array([10, 23, 25, 29, 48, 51, 52]) * hour  # member 1; member 2 at 30 h
    log = tiny_log(events=[(1, 1, t) for t in times[:4]] + [(2, 2, 30 * hour)]
                   + [(1, 2, t) for t in times[4:]], ms=1)
    _, test = split_by_time(log, 0.4)  # split at 29 h
    np.testing.assert_array_equal(test.ts // hour, [29, 30, 48, 51, 52])
    # the event at 48 h sits on midnight: the batch of that midnight saw everything before it
    np.testing.assert_array_equal(test.refresh_point(DAILY), [2, 0, 4, 4, 4])
    assert DAY_MS == 24 * hour


def test_support_sets_hold_only_earlier_events_and_ties_follow_file_order() -> None:
    log = tiny_log()
    _, test = split_by_time(log, SPLIT_QUANTILE)
    tasks = tasks_for(test, streaming(1))
    events, mask = tasks.support_windows(test.histories, 2)
    support = {int(test.index[t]): sorted(events[tasks.of_event[t]][mask[tasks.of_event[t]]].tolist())
               for t in range(len(test))}
    # event 7 ties with event 5 at ts 4 and comes later in the file: it sees 5, 5 does not see 7
    assert support == {5: [2, 3], 6: [], 7: [3, 5], 8: [1, 4], 9: [6], 10: [5, 7]}
    for policy in (NEVER, FROZEN, DAILY, streaming(1), streaming(2), streaming(3), streaming(1, 1.0)):
        tasks = tasks_for(test, policy)
        events, mask = tasks.support_windows(test.histories, 64)
        seen = np.where(mask, events, -1)[tasks.of_event]  # [T, K] per test event
        assert (seen < test.index[:, None]).all(), policy
        assert (np.where(mask[tasks.of_event], log.member[events[tasks.of_event]], test.member[:, None])
                == test.member[:, None]).all()


def test_tasks_are_shared_by_events_with_the_same_refresh_point() -> None:
    _, test = split_by_time(tiny_log(), SPLIT_QUANTILE)
    tasks = tasks_for(test, FROZEN)
    assert len(tasks) == 3  # one per member
    assert tasks.of_event[0] == tasks.of_event[2] == tasks.of_event[5]
    assert len(tasks_for(test, streaming(1))) == len(test)


def test_no_event_is_scored_with_information_from_its_own_future() -> None:
    log = tiny_log()
    _, test = split_by_time(log, SPLIT_QUANTILE)
    torch.manual_seed(0)
    tunables = dict(meta_dim=4, member_field_dim=4, meta_hidden=8, item_embedding_dim=4,
                    global_hidden=(8,), inner_steps=3, inner_lr=1.0, learned_inner_lr=False,
                    first_order=True)
    model = build_model(log, tunables)
    base = score_limaml(model, log, test, streaming(1), 64, torch.device("cpu"))
    for t, event in enumerate(test.index):
        flipped = log.label.copy()
        flipped[event:] = 1.0 - flipped[event:]  # the event itself and everything after it
        rescored = score_limaml(model, dataclasses.replace(log, label=flipped), test, streaming(1), 64,
                                torch.device("cpu"))
        np.testing.assert_allclose(rescored[:t + 1], base[:t + 1], rtol=0, atol=0)
    everything = score_limaml(model, dataclasses.replace(log, label=1.0 - log.label), test, streaming(1),
                              64, torch.device("cpu"))
    assert not np.allclose(everything, base)  # the past does matter


def test_bucket_assignment() -> None:
    _, test = split_by_time(tiny_log(), SPLIT_QUANTILE)
    positions = np.array([0, 1, 4, 5, 19, 20, 49, 50, 300])
    many = dataclasses.replace(test, position=positions)
    np.testing.assert_array_equal(many.bucket(), [0, 1, 1, 2, 2, 3, 3, 4, 4])
    masks = many.bucket_masks()
    assert tuple(masks) == BUCKET_NAMES
    assert masks["all"].all() and sum(int(masks[b].sum()) for b in BUCKET_NAMES[1:]) == positions.size
    np.testing.assert_array_equal(test.bucket(), [1, 0, 1, 1, 1, 2])


def test_summary_cells_match_sklearn_per_bucket_and_seed_and_decide_claims() -> None:
    rng = np.random.default_rng(0)
    member = rng.integers(0, 40, 500)
    labels = rng.integers(0, 2, 500).astype(np.float32)
    scores = [np.round(rng.random(500) + 0.3 * labels, 2) for _ in range(3)]  # with ties
    masks = {"all": np.ones(500, dtype=bool), "some": rng.random(500) < 0.3}
    bootstrap = MemberBootstrap(member, resamples=300)
    summary = summarise(bootstrap, labels, masks, {"limaml_streaming": scores, "coin": [rng.random(500)] * 3})
    for name, mask in masks.items():
        expected = [roc_auc_score(labels[mask], s[mask]) for s in scores]
        cell = summary["limaml_streaming"][name]
        np.testing.assert_allclose(cell.per_seed["auc"], expected, rtol=1e-12)
        interval = cell.interval("auc")
        assert interval.value == pytest.approx(np.mean(expected)) and cell.n == int(mask.sum())
        assert interval.low < interval.value < interval.high
        seeds = cell.seeds("auc")
        assert seeds.ci_low < seeds.mean < seeds.ci_high
        json_cell = cell.to_json()
        assert {"auc", "auc_ci_low", "gauc", "gauc_ci_high", "log_loss", "log_loss_per_seed",
                "auc_seed_ci_low", "n"} <= set(json_cell)
    claims = check_claims(summary, buckets=("all",))
    assert [(c.other, c.metric) for c in claims] == [("coin", "auc"), ("coin", "gauc")]
    assert claims[0].held and claims[0].difference.low > 0
    assert check_claims(summary, subject="coin", buckets=("all",))[0].held is False


def test_interval_across_seeds_is_the_student_t_interval() -> None:
    estimate = Estimate.of([0.5, 0.6])
    half = 12.706 * np.std([0.5, 0.6], ddof=1) / np.sqrt(2)
    assert estimate.mean == pytest.approx(0.55)
    assert (estimate.ci_low, estimate.ci_high) == pytest.approx((0.55 - half, 0.55 + half))
    single = Estimate.of([0.7])
    assert single.mean == 0.7 and single.ci_low is None and single.ci_high is None
