"""Meta-learning tasks from an interaction log: one task per member, split in time.

A task cuts a member's history at a point: the support set is the K most recent events
before the cut (what online adaptation would have seen), the query set the next Q events
after it (what the adapted embedding must predict). Cutting at a random point of each
member's history, including before their first event, trains the initialisation to be a
good prior for cold members as well as a good starting point for adaptation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from limaml.adaptation import SupportBatch
from limaml.data import InteractionLog


@dataclass(frozen=True)
class MemberHistories:
    """Each member's events in time order, as slices of one index array."""

    order: np.ndarray  # [E] event indices grouped by member, time-ordered within a member
    start: np.ndarray  # [M] offset of each member's first event in `order`
    count: np.ndarray  # [M] number of events per member

    @classmethod
    def from_log(cls, log: InteractionLog) -> MemberHistories:
        order = np.argsort(log.member, kind="stable")  # the log is time-ordered already
        count = np.bincount(log.member, minlength=len(log.members))
        start = np.concatenate([[0], np.cumsum(count)[:-1]])
        return cls(order=order, start=start, count=count)

    def active_members(self, min_events: int = 1) -> np.ndarray:
        return np.flatnonzero(self.count >= min_events)


@dataclass(frozen=True)
class Episodes:
    """A batch of tasks: support and query sets padded to K and Q."""

    support: SupportBatch
    query: SupportBatch  # member_features repeated; mask marks real query events


def window_indices(histories: MemberHistories, members: np.ndarray, begin: np.ndarray,
                   end: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Event indices of positions [max(begin, end - width), end) of each member's history.

    Returns ([B, width] event indices, [B, width] mask), left-aligned, oldest first.
    """
    first = np.maximum(begin, end - width)  # [B]
    positions = first[:, None] + np.arange(width)[None, :]  # [B, width]
    mask = positions < end[:, None]
    flat = histories.start[members][:, None] + np.where(mask, positions, 0)
    return histories.order[flat], mask


def gather_batch(log: InteractionLog, members: np.ndarray, events: np.ndarray,
                 mask: np.ndarray, device: torch.device | str) -> SupportBatch:
    """A padded batch from [B, width] event indices and their mask."""
    features = log.member_feature_matrix()[members]
    items = np.where(mask, log.item[events], 0)
    labels = np.where(mask, log.label[events], 0.0).astype(np.float32)
    context = np.where(mask[..., None], log.context[events], 0.0).astype(np.float32)
    arrays = (features, items, labels, context, mask)
    return SupportBatch(*(torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in arrays))


def sample_episodes(log: InteractionLog, histories: MemberHistories, members: np.ndarray,
                    support_size: int, query_size: int, rng: np.random.Generator,
                    device: torch.device | str = "cpu") -> Episodes:
    """One task per member with the cut drawn uniformly from [0, count - 1]."""
    count = histories.count[members]
    cut = rng.integers(0, count)  # at least one query event after the cut
    zeros = np.zeros_like(cut)
    s_events, s_mask = window_indices(histories, members, zeros, cut, support_size)
    q_end = np.minimum(count, cut + query_size)
    q_events, q_mask = window_indices(histories, members, cut, q_end, query_size)
    return Episodes(
        support=gather_batch(log, members, s_events, s_mask, device),
        query=gather_batch(log, members, q_events, q_mask, device),
    )


def holdout_episodes(log: InteractionLog, histories: MemberHistories, split_ts: int,
                     support_size: int, query_size: int,
                     device: torch.device | str = "cpu") -> Episodes | None:
    """Tasks for a temporal holdout: members' last K events before `split_ts` as support and
    their first Q events from `split_ts` on as query; None when no member has both sides."""
    cut = np.bincount(log.member[log.ts < split_ts], minlength=len(log.members))
    members = np.flatnonzero(histories.count > cut)
    if members.size == 0:
        return None
    cut = cut[members]
    count = histories.count[members]
    s_events, s_mask = window_indices(histories, members, np.zeros_like(cut), cut, support_size)
    q_events, q_mask = window_indices(histories, members, cut, np.minimum(count, cut + query_size),
                                      query_size)
    return Episodes(
        support=gather_batch(log, members, s_events, s_mask, device),
        query=gather_batch(log, members, q_events, q_mask, device),
    )
