"""Task construction: support strictly before the cut, query from it on, nothing leaks."""

from __future__ import annotations

import numpy as np

from limaml.data import InteractionLog, Vocabulary
from limaml.episodes import MemberHistories, holdout_episodes, sample_episodes


def tiny_log() -> InteractionLog:
    # member 1: 6 events, member 2: 2 events, interleaved; item index encodes the event order
    member = np.array([1, 2, 1, 1, 2, 1, 1, 1])
    n = member.size
    return InteractionLog(
        name="tiny", member=member, item=np.arange(1, n + 1), label=(np.arange(n) % 2).astype(np.float32),
        ts=np.arange(n, dtype=np.int64) * 1000, context=np.arange(n, dtype=np.float32)[:, None],
        context_names=("c",), members=Vocabulary(("a", "b")), items=Vocabulary(tuple(map(str, range(n)))),
        member_features={"f": np.array([0, 1, 2])}, member_feature_vocabs={"f": Vocabulary(("x", "y"))},
        item_features=np.zeros((n + 1, 1), dtype=np.float32), item_feature_names=("g",),
    )


def test_histories_group_each_members_events_in_time_order() -> None:
    histories = MemberHistories.from_log(tiny_log())
    assert histories.count.tolist() == [0, 6, 2]
    member_1 = histories.order[histories.start[1]:histories.start[1] + 6]
    assert member_1.tolist() == [0, 2, 3, 5, 6, 7]
    assert histories.active_members().tolist() == [1, 2]


def test_sampled_support_precedes_query_and_windows_are_bounded() -> None:
    log = tiny_log()
    histories = MemberHistories.from_log(log)
    rng = np.random.default_rng(0)
    for _ in range(50):
        episodes = sample_episodes(log, histories, np.array([1, 2]), support_size=3, query_size=2, rng=rng)
        for row in range(2):
            s_items = episodes.support.items[row][episodes.support.mask[row]].numpy()
            q_items = episodes.query.items[row][episodes.query.mask[row]].numpy()
            assert 1 <= q_items.size <= 2 and s_items.size <= 3
            if s_items.size:
                assert s_items.max() < q_items.min()  # item index = position in time
            owner = log.member[q_items - 1]
            assert (owner == row + 1).all() and (log.member[s_items - 1] == row + 1).all()
            # context rides along with its event
            np.testing.assert_array_equal(
                episodes.query.context[row][episodes.query.mask[row]].numpy()[:, 0], q_items - 1)


def test_holdout_uses_the_last_events_before_the_split_and_the_first_after() -> None:
    log = tiny_log()
    episodes = holdout_episodes(log, MemberHistories.from_log(log), split_ts=5000,
                                support_size=2, query_size=2)
    assert episodes is not None
    assert episodes.support.member_features[:, 0].tolist() == [1]  # only member 1 has later events
    assert episodes.support.items[0][episodes.support.mask[0]].tolist() == [3, 4]
    assert episodes.query.items[0][episodes.query.mask[0]].tolist() == [6, 7]
