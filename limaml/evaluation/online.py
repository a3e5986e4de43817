"""`id_embedding_online`: the member-ID model keeps training on the test events as they come.

After a test event is scored, one SGD step on its log-loss updates the parameters keyed by
its member: the ID embedding row, the bias and the wide weights, every row a real-time
trainer looks up by the member's ID (and so updates, as online training systems keep ID
embeddings fresh). The shared network and the item embeddings stay frozen. A member without
training events starts from a copy of the OOV row. An update becomes usable under the same
refresh policy as every moving state: an event is scored with its member's state after r
updates, r = the policy's refresh point minus the member's events before the split.

A member's updates touch only that member's rows, so the chains of states of all members
are computed together: step j updates every member that has a j-th test event, on it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from limaml.data import InteractionLog
from limaml.evaluation.baselines import EventBatch, MemberRows, WideAndDeep
from limaml.evaluation.protocol import Refresh, TestEvents

SCORE_CHUNK = 8192


def pack(rows: MemberRows) -> Tensor:
    """[B, E + 1 + F] one flat state per member."""
    return torch.cat([rows.embedding, rows.bias[:, None], rows.cross], dim=-1)


def unpack(state: Tensor, meta_dim: int) -> MemberRows:
    return MemberRows(state[:, :meta_dim], state[:, meta_dim], state[:, meta_dim + 1:])


class StateChains:
    """Every test member's states after 0, 1, ..., n of their n test events, packed."""

    def __init__(self, model: WideAndDeep, batch: EventBatch, test: TestEvents, lr: float,
                 progress: bool = False) -> None:
        """`batch`: the test events as tensors, in test order."""
        self.meta_dim = model.net.config.meta_dim
        members, self.member_of_event, counts = np.unique(test.member, return_inverse=True,
                                                          return_counts=True)
        self.member_of_event = self.member_of_event.reshape(-1)
        self.offset = np.concatenate([[0], np.cumsum(counts + 1)[:-1]])  # [M] row of state 0
        ordinal = test.position - test.split_count  # [T] j: the event is the member's j-th test event
        with torch.no_grad():
            initial = pack(model.member_rows(torch.from_numpy(members)))  # [M, D]
        chain = initial.new_zeros((int(counts.sum() + members.size), initial.shape[1]))
        chain[torch.from_numpy(self.offset)] = initial
        by_ordinal = np.argsort(ordinal, kind="stable")
        bounds = np.searchsorted(ordinal[by_ordinal], np.arange(int(ordinal.max(initial=-1)) + 2))
        for j in tqdm(range(bounds.size - 1), desc="online ID updates", unit="step", disable=not progress):
            slots = by_ordinal[bounds[j]:bounds[j + 1]]  # one test event per member with a j-th
            rows = torch.from_numpy(self.offset[self.member_of_event[slots]] + j)
            state = chain[rows].requires_grad_(True)
            step = batch_rows(batch, torch.from_numpy(slots))
            loss = F.binary_cross_entropy_with_logits(model.logits(step, unpack(state, self.meta_dim)),
                                                      step.labels, reduction="sum")
            (gradient,) = torch.autograd.grad(loss, state)
            chain[rows + 1] = (state - lr * gradient).detach()
        self.chain = chain

    def rows(self, slots: np.ndarray, updates: np.ndarray) -> MemberRows:
        """The states of test events `slots` after `updates` of their member's updates."""
        index = torch.from_numpy(self.offset[self.member_of_event[slots]] + updates)
        return unpack(self.chain[index], self.meta_dim)


def batch_rows(batch: EventBatch, rows: Tensor) -> EventBatch:
    return EventBatch(*(t[rows] for t in (batch.member, batch.member_features, batch.items,
                                          batch.context, batch.labels)))


def score_online(model: WideAndDeep, log_data: InteractionLog, test: TestEvents, policy: Refresh,
                 lr: float, progress: bool = False) -> np.ndarray:
    """[T] click probabilities of the member-ID model updated online, under `policy`."""
    model = model.cpu().eval()
    batch = EventBatch.of(log_data, test.index)
    chains = StateChains(model, batch, test, lr, progress)
    updates = np.maximum(test.refresh_point(policy) - test.split_count, 0)
    scores = np.empty(len(test), dtype=np.float32)
    with torch.no_grad():
        for start in range(0, len(test), SCORE_CHUNK):
            slots = np.arange(start, min(start + SCORE_CHUNK, len(test)))
            logits = model.logits(batch_rows(batch, torch.from_numpy(slots)),
                                  chains.rows(slots, updates[slots]))
            scores[slots] = torch.sigmoid(logits).numpy()
    return scores
