"""Supervised baselines on LiMAML's own network and features, trained event by event.

- `GlobalModel`: the two-block network trained as one supervised model. The member enters
  only through the meta block's reading of their meta features; nothing is adapted.
- `WideAndDeep`: the same deep part plus a learned member-ID embedding added to the meta
  embedding, and a wide part of per-member weights (a bias and a weight per item content
  feature). Members without training events read the OOV row, which learns because a
  fraction of training events are shown with the OOV ID (ID dropout).

Both are trained once, on the events before the split, with the network's item prior and
taste factors computed from those events (each training event's own label left out of its
item prior, as for LiMAML); `limaml.evaluation.online` keeps training the member-ID model's
member rows during the test period.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from limaml.data import OOV_INDEX, InteractionLog
from limaml.evaluation.config import BaselineConfig
from limaml.model import LiMAML
from limaml.train import fit_item_statistics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EventBatch:
    """Events as tensors: who, their meta features, what, in which context, the label."""

    member: Tensor  # [B] int64
    member_features: Tensor  # [B, n_fields] int64
    items: Tensor  # [B] int64
    context: Tensor  # [B, C] float32
    labels: Tensor  # [B] float32

    @classmethod
    def of(cls, log_data: InteractionLog, index: np.ndarray,
           device: torch.device | str = "cpu") -> EventBatch:
        member = log_data.member[index]
        arrays = (member, log_data.member_feature_matrix()[member], log_data.item[index],
                  log_data.context[index], log_data.label[index])
        return cls(*(torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in arrays))


class GlobalModel(nn.Module):
    """LiMAML's network used as a plain supervised model: the prior embedding, never adapted."""

    def __init__(self, net: LiMAML) -> None:
        super().__init__()
        self.net = net

    def forward(self, batch: EventBatch, training_events: bool = False) -> Tensor:
        """-> [B] logits; `training_events`: leave each event's label out of its item prior."""
        embedding = self.net.meta_block(batch.member_features)  # [B, E]
        return self.net.global_block(embedding, batch.items[:, None], batch.context[:, None],
                                     own_labels(batch, training_events))[:, 0]


@dataclass(frozen=True)
class MemberRows:
    """What the member-ID model stores per member (its sparse, member-keyed parameters)."""

    embedding: Tensor  # [B, E] added to the meta embedding (deep part)
    bias: Tensor  # [B] (wide part)
    cross: Tensor  # [B, F] weights on the item content features (wide part)


class WideAndDeep(nn.Module):
    """LiMAML's network plus a member-ID embedding (deep) and per-member weights (wide)."""

    known: Tensor  # [len(members)] bool buffer: the member has training events

    def __init__(self, net: LiMAML, known_members: np.ndarray, id_dropout: float) -> None:
        super().__init__()
        self.net = net
        n_ids, config = known_members.size, net.config
        self.register_buffer("known", torch.from_numpy(known_members.astype(bool)))
        self.id_dropout = id_dropout
        self.member_id = nn.Embedding(n_ids, config.meta_dim)
        self.member_bias = nn.Embedding(n_ids, 1)
        self.member_cross = nn.Embedding(n_ids, config.item_feature_dim)
        nn.init.normal_(self.member_id.weight, std=0.01)
        nn.init.zeros_(self.member_bias.weight)
        nn.init.zeros_(self.member_cross.weight)

    def ids(self, member: Tensor) -> Tensor:
        """Member IDs as the model sees them: OOV for members without training events."""
        ids = torch.where(self.known[member], member, OOV_INDEX)
        if self.training and self.id_dropout > 0:
            ids = torch.where(torch.rand(ids.shape, device=ids.device) < self.id_dropout,
                              OOV_INDEX, ids)
        return ids

    def member_rows(self, member: Tensor) -> MemberRows:
        """The rows each member reads: their own, or the OOV row (see `ids`)."""
        ids = self.ids(member)
        return MemberRows(self.member_id(ids), self.member_bias(ids)[:, 0], self.member_cross(ids))

    def forward(self, batch: EventBatch, training_events: bool = False) -> Tensor:
        """-> [B] logits; `training_events`: leave each event's label out of its item prior."""
        return self.logits(batch, self.member_rows(batch.member), training_events)

    def logits(self, batch: EventBatch, rows: MemberRows, training_events: bool = False) -> Tensor:
        """[B] logits with the given member rows in place of the tables'."""
        embedding = self.net.meta_block(batch.member_features) + rows.embedding  # [B, E]
        deep = self.net.global_block(embedding, batch.items[:, None], batch.context[:, None],
                                     own_labels(batch, training_events))[:, 0]
        item_features = self.net.global_block.item_features[batch.items]  # [B, F]
        wide = rows.bias + (rows.cross * item_features).sum(-1)
        return deep + wide


def own_labels(batch: EventBatch, training_events: bool) -> Tensor | None:
    """[B, 1] the events' labels when they are training events (see GlobalBlock.item_prior)."""
    return batch.labels[:, None] if training_events else None


SupervisedT = TypeVar("SupervisedT", GlobalModel, WideAndDeep)


def fit_supervised(model: SupervisedT, train_log: InteractionLog, config: BaselineConfig,
                   seed: int, progress: bool = False) -> SupervisedT:
    """Fill the network's item statistics from the training events, then minimise the log-loss
    over them with Adam; return the model in eval mode."""
    generator = np.random.default_rng(seed)
    device = next(model.parameters()).device
    fit_item_statistics(model.net, train_log, seed)
    trainable = [p for name, p in model.named_parameters() if not name.startswith("net.inner_lr")]
    optimizer = torch.optim.Adam(trainable, lr=config.baseline_lr)
    steps_per_epoch = -(-train_log.n_events // config.baseline_batch_size)
    bar = tqdm(total=config.baseline_epochs * steps_per_epoch, desc=f"training {type(model).__name__}",
               unit="batch", disable=not progress)
    model.train()
    for epoch in range(config.baseline_epochs):
        order = generator.permutation(train_log.n_events)
        total = 0.0
        for start in range(0, order.size, config.baseline_batch_size):
            batch = EventBatch.of(train_log, order[start:start + config.baseline_batch_size], device)
            optimizer.zero_grad(set_to_none=True)
            loss = F.binary_cross_entropy_with_logits(model(batch, training_events=True), batch.labels)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(batch.labels)
            bar.update()
        log.debug("%s epoch %d: train log-loss %.4f", type(model).__name__, epoch + 1,
                  total / train_log.n_events)
    bar.close()
    return model.eval()


def predict(model: nn.Module, log_data: InteractionLog, index: np.ndarray,
            chunk: int = 8192) -> np.ndarray:
    """[T] click probabilities of the events `index` of the log."""
    device = next(model.parameters()).device
    model.eval()
    parts = []
    with torch.no_grad():
        for start in range(0, index.size, chunk):
            batch = EventBatch.of(log_data, index[start:start + chunk], device)
            parts.append(torch.sigmoid(model(batch)).cpu().numpy())
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
