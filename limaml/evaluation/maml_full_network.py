"""`maml_full_network`: MAML over LiMAML's whole decision network, fine-tuned per member.

In the manner of MeLU (Lee et al., KDD 2019), which fine-tunes a recommender's decision
layers per user, but on LiMAML's own network: the meta block and every linear layer of the
global block are adapted; the item embedding table stays shared. Each adapted tensor has
one learned inner step size (Meta-SGD per tensor). It is the quality reference LiMAML's
meta embeddings replace: a member's state is a full copy of the decision layers (~23,500
floats on ML-100K) instead of one small vector. `limaml.evaluation.melu` is MeLU itself.

Members are batched as in `limaml.adaptation`: every member gets its own copy of the
weights along a leading dimension, and the summed per-member mean loss is differentiated
with `torch.func.grad`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import grad
from tqdm import tqdm

from limaml.adaptation import SupportBatch, example_weights
from limaml.data import InteractionLog
from limaml.episodes import MemberHistories, sample_episodes
from limaml.model import AdaptedParams, LiMAML, meta_forward
from limaml.train import TrainConfig, build_model, resolve_device, seed_everything


class FullNetworkMAML(nn.Module):
    """LiMAML's network with all decision layers adapted per member."""

    def __init__(self, net: LiMAML, inner_lr: float) -> None:
        super().__init__()
        self.net = net
        self.linears = [layer for layer in net.global_block.head if isinstance(layer, nn.Linear)]
        names = ["input", "w1", "b1", "w2", "b2", "item_w", "item_b", "meta_w"]
        names += [f"head_{kind}{i}" for i in range(len(self.linears)) for kind in ("w", "b")]
        self.step_sizes = nn.ParameterDict({name: nn.Parameter(torch.tensor(inner_lr)) for name in names})

    def initial_params(self, member_features: Tensor) -> AdaptedParams:
        """The meta-learned decision network, one (view) copy per member."""
        batch = member_features.shape[0]
        params = self.net.meta_block.initial_params(member_features)
        block = self.net.global_block
        shared = {"item_w": block.item_proj.weight, "item_b": block.item_proj.bias,
                  "meta_w": block.meta_proj.weight}
        for i, layer in enumerate(self.linears):
            shared[f"head_w{i}"], shared[f"head_b{i}"] = layer.weight, layer.bias
        params.update({name: t.expand(batch, *t.shape) for name, t in shared.items()})
        return params

    def item_inputs(self, items: Tensor, context: Tensor) -> Tensor:
        """items [B, K], context [B, K, C] -> [B, K, D] the shared, un-adapted item inputs."""
        block = self.net.global_block
        return torch.cat([block.item_embedding(items), block.item_features[items], context], dim=-1)

    def fine_tune(self, support: SupportBatch) -> AdaptedParams:
        """Scoring's adaptation: the configured inner steps, no outer-loop graph."""
        return self.adapt(support, self.net.config.inner_steps, first_order=True)

    def logits(self, params: AdaptedParams, items: Tensor, context: Tensor) -> Tensor:
        """items [B, K], context [B, K, C] -> [B, K] logits of the fine-tuned networks."""
        return decision_logits(params, self, self.item_inputs(items, context))

    def adapt(self, support: SupportBatch, steps: int, first_order: bool) -> AdaptedParams:
        """Fine-tune every member's decision network on its support set."""
        params = self.initial_params(support.member_features)
        inputs = self.item_inputs(support.items, support.context)
        weights = example_weights(support.mask)
        for _ in range(steps):
            grads = _summed_loss_grad(params, self, inputs, support.labels, weights)
            if first_order:
                grads = {name: g.detach() for name, g in grads.items()}
            params = {name: p - self.step_sizes[name] * grads[name] for name, p in params.items()}
        return params


def decision_logits(params: AdaptedParams, model: FullNetworkMAML, inputs: Tensor) -> Tensor:
    """Per-member decision networks on [B, K, D] item inputs -> [B, K] logits."""
    meta = meta_forward(params)  # [B, E]
    hidden = (torch.einsum("bhd,bkd->bkh", params["item_w"], inputs) + params["item_b"][:, None]
              + torch.einsum("bhe,be->bh", params["meta_w"], meta)[:, None])  # [B, K, H1]
    for i in range(len(model.linears)):
        hidden = torch.einsum("boh,bkh->bko", params[f"head_w{i}"], torch.relu(hidden))
        hidden = hidden + params[f"head_b{i}"][:, None]
    return hidden[..., 0]


def _summed_loss(params: AdaptedParams, model: FullNetworkMAML, inputs: Tensor, labels: Tensor,
                 weights: Tensor) -> Tensor:
    losses = F.binary_cross_entropy_with_logits(decision_logits(params, model, inputs), labels,
                                                reduction="none")
    return (losses * weights).sum()


_summed_loss_grad = grad(_summed_loss)


def build_full_network_maml(log_data: InteractionLog, tunables: dict[str, Any],
                            inner_lr: float) -> FullNetworkMAML:
    return FullNetworkMAML(build_model(log_data, tunables), inner_lr)


def meta_train_full_network(train_log: InteractionLog, full_log: InteractionLog, config: TrainConfig,
                            tunables: dict[str, Any], inner_lr: float,
                            progress: bool = False) -> FullNetworkMAML:
    """MAML over the whole decision network, with the same episodes and budget as LiMAML."""
    seed_everything(config.seed)
    device = resolve_device(config.device)
    model = build_full_network_maml(full_log, tunables, inner_lr).to(device)
    steps, first_order = model.net.config.inner_steps, model.net.config.first_order
    histories = MemberHistories.from_log(train_log)
    members = histories.active_members()
    trainable = [p for name, p in model.named_parameters() if not name.startswith("net.inner_lr")]
    optimizer = torch.optim.Adam(trainable, lr=config.outer_lr)
    rng = np.random.default_rng(config.seed)
    batches = -(-members.size // config.members_per_batch)
    bar = tqdm(total=config.epochs * batches, desc="meta-training maml_full_network", unit="batch",
               disable=not progress)
    model.train()
    for _ in range(config.epochs):
        order = rng.permutation(members)
        for start in range(0, order.size, config.members_per_batch):
            episodes = sample_episodes(train_log, histories, order[start:start + config.members_per_batch],
                                       config.support_size, config.query_size, rng, device)
            params = model.adapt(episodes.support, steps, first_order)
            logits = decision_logits(params, model, model.item_inputs(episodes.query.items,
                                                                      episodes.query.context))
            losses = F.binary_cross_entropy_with_logits(logits, episodes.query.labels, reduction="none")
            loss = (losses * example_weights(episodes.query.mask)).sum() / len(episodes.query)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            bar.update()
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
    bar.close()
    return model.cpu().eval()
