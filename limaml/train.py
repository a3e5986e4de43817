"""MAML meta-training of the meta block's initialisation and the global block.

Each outer step samples two tasks per member of a batch, each cutting the member's history
at a random point (see `episodes`), adapts every member's meta block on each support set at
once (`adaptation.adapt`), and minimises, with respect to the meta block's initialisation,
the global block and, with Meta-SGD, the inner step sizes:

- the log-loss of the adapted embeddings on the query sets, and
- a pairwise ranking loss within each member over the events of both query sets, each
  scored with its own cut's embedding: a member's positives should rank above their
  negatives whatever the state their embedding was in when each was scored. This is how a
  streaming embedding is judged by per-member AUC, and it raised that metric by about 0.003
  on the ML-100K validation protocol (docs/evaluation.md).

Training events see their item priors without their own labels, as events after training do.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from limaml.adaptation import SupportBatch, adapt, adapted_embeddings, example_weights
from limaml.data import InteractionLog
from limaml.episodes import Episodes, MemberHistories, holdout_episodes, sample_episodes
from limaml.item_statistics import ItemStatistics
from limaml.model import LiMAML, meta_forward
from limaml.model_config import ModelConfig
from limaml.ranking_metrics import log_loss, roc_auc
from limaml.train_config import TrainConfig

log = logging.getLogger(__name__)

TASKS_PER_MEMBER = 2  # cuts of each member's history per outer step: the pairwise loss compares them


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(log_data: InteractionLog, tunables: dict[str, Any]) -> LiMAML:
    """A fresh model whose input shapes come from the log and the rest from `tunables`."""
    config = ModelConfig(
        n_items=len(log_data.items),
        item_feature_dim=len(log_data.item_feature_names),
        context_dim=len(log_data.context_names),
        member_field_cardinalities=tuple(
            len(log_data.member_feature_vocabs[name]) for name in sorted(log_data.member_features)
        ),
        **tunables,
    )
    model = LiMAML(config)
    with torch.no_grad():
        model.global_block.item_features.copy_(torch.from_numpy(log_data.item_features))
    return model


def fit_item_statistics(model: LiMAML, train_log: InteractionLog, seed: int = 0) -> None:
    """Fill the global block's item prior and taste factors from the training events."""
    model.global_block.fit_item_statistics(ItemStatistics.of(train_log, model.config.taste_factors, seed))


def query_loss(logits: torch.Tensor, query: SupportBatch) -> torch.Tensor:
    """Mean over members of each member's mean log-loss on its query set; logits [B, Q]."""
    losses = F.binary_cross_entropy_with_logits(logits, query.labels, reduction="none")
    return (losses * example_weights(query.mask)).sum() / len(query)


def pairwise_loss(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over members with both labels of the mean logistic loss of their (positive,
    negative) pairs: log(1 + exp(s_negative - s_positive)). All inputs [B, Q]."""
    positive = mask & (labels > 0.5)
    negative = mask & (labels < 0.5)
    pairs = (positive.unsqueeze(-1) & negative.unsqueeze(-2)).to(logits.dtype)  # [B, Q, Q]
    losses = F.softplus(logits.unsqueeze(-2) - logits.unsqueeze(-1))  # [B, Q, Q]: s_j - s_i
    per_member = pairs.sum(dim=(-1, -2))
    mean = (losses * pairs).sum(dim=(-1, -2)) / per_member.clamp(min=1.0)
    ranked = per_member > 0
    return mean[ranked].mean() if ranked.any() else logits.sum() * 0.0


def meta_loss(logits: Sequence[torch.Tensor], episodes: Sequence[Episodes],
              pairwise_weight: float) -> torch.Tensor:
    """The outer loss of several tasks per member (rows aligned across `episodes`, logits
    [B, Q] of each task's query set): the mean query log-loss plus `pairwise_weight` times
    the pairwise loss over the events of all the member's query sets."""
    loss = sum(query_loss(scores, task.query) for scores, task in zip(logits, episodes)) / len(episodes)
    if pairwise_weight > 0:
        loss = loss + pairwise_weight * pairwise_loss(
            torch.cat(list(logits), dim=-1), torch.cat([task.query.labels for task in episodes], dim=-1),
            torch.cat([task.query.mask for task in episodes], dim=-1))
    return loss


def outer_step(model: LiMAML, optimizer: torch.optim.Optimizer, episodes: tuple[Episodes, ...],
               pairwise_weight: float) -> float:
    """One update on several tasks per member (their rows aligned across `episodes`)."""
    optimizer.zero_grad(set_to_none=True)
    logits = []
    for task in episodes:
        embeddings = meta_forward(adapt(model, task.support, training_events=True))  # [B, E]
        logits.append(model.global_block(embeddings, task.query.items, task.query.context,
                                         own_labels=task.query.labels))  # [B, Q]
    loss = meta_loss(logits, episodes, pairwise_weight)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def evaluate_holdout(model: LiMAML, episodes: Episodes, chunk: int = 1024) -> dict[str, float]:
    """AUC and log-loss on the query events, with the prior and with adapted embeddings."""
    scores: dict[str, list[np.ndarray]] = {"prior": [], "adapted": []}
    labels: list[np.ndarray] = []
    with torch.no_grad():
        for start in range(0, len(episodes.support), chunk):
            support = episodes.support.rows(start, start + chunk)
            query = episodes.query.rows(start, start + chunk)
            embeddings = {
                "prior": model.meta_block(support.member_features),
                "adapted": adapted_embeddings(model, support),
            }
            mask = query.mask.cpu().numpy()
            for name, embedding in embeddings.items():
                logits = model.global_block(embedding, query.items, query.context)
                scores[name].append(torch.sigmoid(logits).cpu().numpy()[mask])
            labels.append(query.labels.cpu().numpy()[mask])
    y = np.concatenate(labels)
    metrics: dict[str, float] = {"valid_events": float(y.size)}
    for name, parts in scores.items():
        p = np.concatenate(parts)
        metrics[f"valid_auc_{name}"] = roc_auc(y, p)
        metrics[f"valid_logloss_{name}"] = log_loss(y, p)
    return metrics


def meta_train(log_data: InteractionLog, config: TrainConfig, tunables: dict[str, Any],
               progress: bool = True) -> tuple[LiMAML, dict[str, Any]]:
    """Meta-train a model on `log_data`; return it with its metrics."""
    seed_everything(config.seed)
    device = resolve_device(config.device)
    if config.max_events:
        log_data = log_data.subset(np.arange(log_data.n_events) < config.max_events)
    holdout = None
    train_log = log_data
    if config.valid_fraction > 0:
        split_ts = log_data.time_quantile(1.0 - config.valid_fraction)
        train_log = log_data.subset(log_data.ts < split_ts)
        holdout = holdout_episodes(log_data, MemberHistories.from_log(log_data), split_ts,
                                   config.support_size, config.query_size, device)
    histories = MemberHistories.from_log(train_log)
    members = histories.active_members()
    if members.size == 0:
        raise ValueError(f"{log_data.name}: no training events before the validation split")

    model = build_model(log_data, tunables)
    fit_item_statistics(model, train_log, config.seed)
    model = model.to(device)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad],
                                 lr=config.outer_lr)
    rng = np.random.default_rng(config.seed)
    batches_per_epoch = -(-members.size // config.members_per_batch)
    history: list[dict[str, float]] = []
    bar = tqdm(total=config.epochs * batches_per_epoch, desc="meta-training", unit="batch",
               disable=not progress)
    for epoch in range(config.epochs):
        model.train()
        order = rng.permutation(members)
        losses = []
        for start in range(0, order.size, config.members_per_batch):
            batch_members = order[start:start + config.members_per_batch]
            episodes = tuple(sample_episodes(train_log, histories, batch_members, config.support_size,
                                             config.query_size, rng, device) for _ in range(TASKS_PER_MEMBER))
            losses.append(outer_step(model, optimizer, episodes, config.pairwise_weight))
            bar.update()
            bar.set_postfix(epoch=epoch + 1, loss=f"{np.mean(losses[-50:]):.4f}")
        record = {"epoch": float(epoch + 1), "train_query_loss": float(np.mean(losses))}
        if holdout is not None:
            model.eval()
            record.update(evaluate_holdout(model, holdout))
        history.append(record)
        log.info("epoch %d: %s", epoch + 1, {k: round(v, 4) for k, v in record.items()})
    bar.close()
    metrics: dict[str, Any] = dict(history[-1])
    metrics.update({"history": history, "train_events": train_log.n_events,
                    "train_members": int(members.size)})
    return model.cpu().eval(), metrics


def training_record(config: TrainConfig, log_data: InteractionLog) -> dict[str, Any]:
    """The settings stored with an artifact, so a version says how it was made."""
    record = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()}
    record["dataset_name"] = log_data.name
    return record
