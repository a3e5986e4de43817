"""The outer loop the per-member fine-tuned baselines share: Adam over sampled episodes."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from limaml.data import InteractionLog
from limaml.episodes import Episodes, MemberHistories, sample_episodes


def fit_on_episodes(model: nn.Module, train_log: InteractionLog,
                    episode_loss: Callable[[tuple[Episodes, ...]], Tensor], optimizer: torch.optim.Optimizer,
                    epochs: int, tasks_per_batch: int, support_size: int, query_size: int, seed: int,
                    device: torch.device, desc: str, tasks_per_member: int = 1, progress: bool = False) -> None:
    """`epochs` passes over the members with training events, `tasks_per_member` tasks per
    member per pass (LiMAML's episodes: K events before a random cut, Q after it), one step
    per batch of members."""
    histories = MemberHistories.from_log(train_log)
    members = histories.active_members()
    rng = np.random.default_rng(seed)
    bar = tqdm(total=epochs * -(-members.size // tasks_per_batch), desc=desc, unit="batch",
               disable=not progress)
    model.train()
    for _ in range(epochs):
        order = rng.permutation(members)
        for start in range(0, order.size, tasks_per_batch):
            batch = order[start:start + tasks_per_batch]
            loss = episode_loss(tuple(sample_episodes(train_log, histories, batch, support_size, query_size,
                                                      rng, device) for _ in range(tasks_per_member)))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            bar.update()
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
    bar.close()
