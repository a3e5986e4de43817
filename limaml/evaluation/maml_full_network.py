"""`maml_full_network`: MAML over LiMAML's whole decision network, fine-tuned per member.

In the manner of MeLU (Lee et al., KDD 2019), which fine-tunes a recommender's decision
layers per user, but on LiMAML's own network: the meta block and every weight of the
global block are adapted; the item tables (item bias, MLP item embedding) and the item
statistics stay shared, as MeLU keeps its embeddings global. Each adapted tensor has one
learned inner step size (Meta-SGD per tensor). It is the quality reference LiMAML's meta
embeddings replace: a member's state is a full copy of the decision network instead of
one small vector. `limaml.evaluation.melu` is MeLU itself.

Members are batched: every member gets its own copy of the weights along a leading
dimension, the global block runs once per member under `vmap` with `functional_call`, and
the summed per-member loss is differentiated with `torch.func.grad`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from limaml.adaptation import SupportBatch, example_weights
from limaml.data import InteractionLog
from limaml.episodes import Episodes
from limaml.evaluation.episodic import fit_on_episodes
from limaml.model import AdaptedParams, LiMAML, meta_forward
from limaml.train import (TASKS_PER_MEMBER, TrainConfig, build_model, fit_item_statistics, meta_loss,
                          resolve_device, seed_everything)

META_PARAMS = ("input", "w1", "b1", "w2", "b2")
SHARED_TABLES = ("item_bias.", "mlp.item_embedding.")
"""Global-block parameters every member shares: the per-item tables."""


class FullNetworkMAML(nn.Module):
    """LiMAML's network with the meta block and all global-block weights adapted per member."""

    def __init__(self, net: LiMAML, inner_lr: float) -> None:
        super().__init__()
        self.net = net
        self.decision = tuple(name for name, _ in net.global_block.named_parameters()
                              if not name.startswith(SHARED_TABLES))
        self.step_sizes = nn.ParameterDict({_key(name): nn.Parameter(torch.tensor(inner_lr))
                                            for name in META_PARAMS + self.decision})

    def initial_params(self, member_features: Tensor) -> AdaptedParams:
        """The meta-learned decision network, one (view) copy per member."""
        batch = member_features.shape[0]
        params = self.net.meta_block.initial_params(member_features)
        weights = dict(self.net.global_block.named_parameters())
        params.update({name: weights[name].expand(batch, *weights[name].shape) for name in self.decision})
        return params

    def fine_tune(self, support: SupportBatch) -> AdaptedParams:
        """Scoring's adaptation: the configured inner steps, no outer-loop graph."""
        return self.adapt(support, self.net.config.inner_steps, first_order=True)

    def logits(self, params: AdaptedParams, items: Tensor, context: Tensor,
               own_labels: Tensor | None = None) -> Tensor:
        """items [B, K], context [B, K, C] -> [B, K] logits of the fine-tuned networks;
        `own_labels` as in `GlobalBlock.item_prior` (training events)."""
        embedding = meta_forward({name: params[name] for name in META_PARAMS})  # [B, E]
        decision = {name: params[name] for name in self.decision}
        block = self.net.global_block

        def one_member(weights: dict[str, Tensor], member: Tensor, member_items: Tensor,
                       member_context: Tensor, labels: Tensor | None) -> Tensor:
            own = None if labels is None else labels[None]
            return functional_call(block, weights, (member[None], member_items[None], member_context[None],
                                                    own))[0]

        in_dims = (0, 0, 0, 0, None if own_labels is None else 0)
        return vmap(one_member, in_dims=in_dims)(decision, embedding, items, context, own_labels)

    def adapt(self, support: SupportBatch, steps: int, first_order: bool,
              training_events: bool = False) -> AdaptedParams:
        """Fine-tune every member's decision network on its support set."""
        params = self.initial_params(support.member_features)
        weights = example_weights(support.mask, self.net.config.support_prior_count)
        own_labels = support.labels if training_events else None
        for _ in range(steps):
            grads = _summed_loss_grad(params, self, support, weights, own_labels)
            if first_order:
                grads = {name: g.detach() for name, g in grads.items()}
            params = {name: p - self.step_sizes[_key(name)] * grads[name] for name, p in params.items()}
        return params


def _key(name: str) -> str:
    """A parameter name as a ParameterDict key (no dots)."""
    return name.replace(".", "__")


def _summed_loss(params: AdaptedParams, model: FullNetworkMAML, support: SupportBatch, weights: Tensor,
                 own_labels: Tensor | None) -> Tensor:
    logits = model.logits(params, support.items, support.context, own_labels)
    losses = F.binary_cross_entropy_with_logits(logits, support.labels, reduction="none")
    return (losses * weights).sum()


_summed_loss_grad = grad(_summed_loss)


def build_full_network_maml(log_data: InteractionLog, tunables: dict[str, Any],
                            inner_lr: float) -> FullNetworkMAML:
    return FullNetworkMAML(build_model(log_data, tunables), inner_lr)


def meta_train_full_network(train_log: InteractionLog, full_log: InteractionLog, config: TrainConfig,
                            tunables: dict[str, Any], inner_lr: float,
                            progress: bool = False) -> FullNetworkMAML:
    """MAML over the whole decision network, with LiMAML's episodes, outer loss and budget."""
    seed_everything(config.seed)
    device = resolve_device(config.device)
    model = build_full_network_maml(full_log, tunables, inner_lr)
    fit_item_statistics(model.net, train_log, config.seed)
    model = model.to(device)
    steps, first_order = model.net.config.inner_steps, model.net.config.first_order
    trainable = [p for name, p in model.named_parameters() if not name.startswith("net.inner_lr")]

    def episode_loss(episodes: tuple[Episodes, ...]) -> Tensor:
        logits = [model.logits(model.adapt(task.support, steps, first_order, training_events=True),
                               task.query.items, task.query.context, own_labels=task.query.labels)
                  for task in episodes]
        return meta_loss(logits, episodes, config.pairwise_weight)

    fit_on_episodes(model, train_log, episode_loss, torch.optim.Adam(trainable, lr=config.outer_lr),
                    config.epochs, config.members_per_batch, config.support_size, config.query_size,
                    config.seed, device, "meta-training maml_full_network", TASKS_PER_MEMBER, progress)
    return model.cpu().eval()
