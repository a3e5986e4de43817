"""`melu`: MeLU as published (Lee et al., KDD 2019), on the features the log has.

The network is the published `user_preference_estimator`: every feature embedded in 32
dimensions and concatenated, then fc1 (64) -> ReLU -> fc2 (64) -> ReLU -> linear_out (1).

- member: each categorical meta feature through its own `nn.Embedding(cardinality, 32)`
  (MovieLens: gender, age, occupation, zip region);
- item: the multi-hot columns (those whose values are all 0 or 1; MovieLens: the genres and
  the year-missing flag) through a bias-free `Linear(n_flags, 32)` divided by the number of
  flags set, as MeLU embeds genres, directors and actors; the other columns (the release
  year) through a `Linear(n, 32)`. There is no item-ID embedding: MeLU has none;
- context, when the log has any, appended as it is.

Only fc1, fc2 and linear_out are fine-tuned per member (MeLU's local update); the
embeddings are learned in the outer loop only. Meta-training follows the published loop:
tasks of `tasks_per_batch` members per outer Adam step, `local_steps` plain gradient steps
of size `local_lr` on the support set, the query loss after them. Two differences:

- the loss is the log-loss of the binary label (rating >= 4) instead of the MSE of the 1-5
  rating: every system here is scored as a click probability, which MSE on ratings does
  not give;
- the meta-gradient is first-order, as it is *in effect* in the published code: its local
  update builds differentiable fast weights but then copies them into the model with
  `load_state_dict`, which cuts the graph, so the query loss's gradient taken at the
  fine-tuned weights is what updates the initial ones.

Members are batched as in `limaml.adaptation`: each gets its own copy of the fine-tuned
layers along a leading dimension, differentiated together with `torch.func.grad`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import grad

from limaml.adaptation import SupportBatch, example_weights
from limaml.data import InteractionLog
from limaml.episodes import Episodes
from limaml.evaluation.episodic import fit_on_episodes
from limaml.model import AdaptedParams
from limaml.train import query_loss, resolve_device, seed_everything

EMBEDDING_DIM = 32  # the published embedding_dim
HIDDEN = (64, 64)  # the published first_fc_hidden_dim and second_fc_hidden_dim
LOCAL = ("fc1_w", "fc1_b", "fc2_w", "fc2_b", "out_w", "out_b")  # the locally updated tensors


@dataclass(frozen=True)
class MeLUConfig:
    """The shapes MeLU reads off the log."""

    member_cardinalities: tuple[int, ...]  # one embedding table per member meta feature
    flag_columns: tuple[int, ...]  # item feature columns embedded as one multi-hot group
    numeric_columns: tuple[int, ...]  # the other item feature columns
    context_dim: int

    @classmethod
    def from_log(cls, log_data: InteractionLog) -> MeLUConfig:
        features = log_data.item_features[1:]  # row 0 is the OOV item
        binary = np.isin(features, (0.0, 1.0)).all(axis=0)
        return cls(
            member_cardinalities=tuple(len(log_data.member_feature_vocabs[name])
                                       for name in sorted(log_data.member_features)),
            flag_columns=tuple(np.flatnonzero(binary).tolist()),
            numeric_columns=tuple(np.flatnonzero(~binary).tolist()),
            context_dim=len(log_data.context_names))


class MeLU(nn.Module):
    """The embeddings (outer loop only) and the decision layers' initialisation."""

    item_features: Tensor  # [n_items, F] buffer

    def __init__(self, config: MeLUConfig, item_features: np.ndarray, local_lr: float,
                 local_steps: int) -> None:
        super().__init__()
        self.config = config
        self.local_lr, self.local_steps = local_lr, local_steps
        self.register_buffer("item_features", torch.from_numpy(np.asarray(item_features, np.float32)))
        self.member_embeddings = nn.ModuleList(nn.Embedding(c, EMBEDDING_DIM)
                                               for c in config.member_cardinalities)
        self.flags = nn.Linear(len(config.flag_columns), EMBEDDING_DIM, bias=False) \
            if config.flag_columns else None
        self.numeric = nn.Linear(len(config.numeric_columns), EMBEDDING_DIM) \
            if config.numeric_columns else None
        groups = len(self.member_embeddings) + (self.flags is not None) + (self.numeric is not None)
        self.fc1 = nn.Linear(groups * EMBEDDING_DIM + config.context_dim, HIDDEN[0])
        self.fc2 = nn.Linear(HIDDEN[0], HIDDEN[1])
        self.linear_out = nn.Linear(HIDDEN[1], 1)

    def inputs(self, member_features: Tensor, items: Tensor, context: Tensor) -> Tensor:
        """member_features [B, n_fields], items [B, K], context [B, K, C] -> [B, K, D]."""
        k = items.shape[1]
        parts = [table(member_features[:, i])[:, None].expand(-1, k, -1)
                 for i, table in enumerate(self.member_embeddings)]
        features = self.item_features[items]  # [B, K, F]
        if self.flags is not None:
            flags = features[..., list(self.config.flag_columns)]
            parts.append(self.flags(flags) / flags.sum(-1, keepdim=True).clamp(min=1.0))
        if self.numeric is not None:
            parts.append(self.numeric(features[..., list(self.config.numeric_columns)]))
        return torch.cat(parts + [context], dim=-1)

    def initial_params(self, member_features: Tensor) -> AdaptedParams:
        """The decision layers, one (view) copy per member, plus the member's embeddings."""
        batch = member_features.shape[0]
        layers = {"fc1": self.fc1, "fc2": self.fc2, "out": self.linear_out}
        params = {}
        for name, layer in layers.items():
            params[f"{name}_w"] = layer.weight.expand(batch, *layer.weight.shape)
            params[f"{name}_b"] = layer.bias.expand(batch, *layer.bias.shape)
        params["member"] = member_features  # carried along for scoring, never updated
        return params

    def fine_tune(self, support: SupportBatch) -> AdaptedParams:
        """`local_steps` gradient steps of every member's decision layers on its support set.

        The local gradients are constants to the outer loop (first-order, see the module doc)."""
        params = self.initial_params(support.member_features)
        inputs = self.inputs(support.member_features, support.items, support.context)
        weights = example_weights(support.mask)
        for _ in range(self.local_steps):
            local = {name: params[name] for name in LOCAL}
            grads = _summed_loss_grad(local, inputs, support.labels, weights)
            params |= {name: local[name] - self.local_lr * grads[name].detach() for name in LOCAL}
        return params

    def logits(self, params: AdaptedParams, items: Tensor, context: Tensor) -> Tensor:
        """items [B, K], context [B, K, C] -> [B, K] logits of the fine-tuned networks."""
        return decision_logits(params, self.inputs(params["member"], items, context))


def decision_logits(params: AdaptedParams, inputs: Tensor) -> Tensor:
    """Per-member fc1 -> fc2 -> linear_out on [B, K, D] inputs -> [B, K] logits."""
    hidden = torch.relu(torch.einsum("bhd,bkd->bkh", params["fc1_w"], inputs) + params["fc1_b"][:, None])
    hidden = torch.relu(torch.einsum("boh,bkh->bko", params["fc2_w"], hidden) + params["fc2_b"][:, None])
    return (torch.einsum("boh,bkh->bko", params["out_w"], hidden) + params["out_b"][:, None])[..., 0]


def _summed_loss(local: AdaptedParams, inputs: Tensor, labels: Tensor, weights: Tensor) -> Tensor:
    """Sum over members of each member's mean log-loss."""
    losses = F.binary_cross_entropy_with_logits(decision_logits(local, inputs), labels, reduction="none")
    return (losses * weights).sum()


_summed_loss_grad = grad(_summed_loss)


@dataclass(frozen=True)
class MeLUTraining:
    """Meta-training settings (published values: 1 step, 5e-6, 5e-5, 32 tasks, 20 epochs)."""

    local_lr: float
    local_steps: int
    outer_lr: float
    tasks_per_batch: int
    epochs: int
    support_size: int  # K, as for LiMAML
    query_size: int  # Q, as for LiMAML
    seed: int = 0
    device: str = "auto"


def build_melu(log_data: InteractionLog, local_lr: float, local_steps: int) -> MeLU:
    return MeLU(MeLUConfig.from_log(log_data), log_data.item_features, local_lr, local_steps)


def meta_train_melu(train_log: InteractionLog, full_log: InteractionLog, settings: MeLUTraining,
                    progress: bool = False) -> MeLU:
    """First-order MAML over the members of the training events, on LiMAML's episodes."""
    seed_everything(settings.seed)
    device = resolve_device(settings.device)
    model = build_melu(full_log, settings.local_lr, settings.local_steps).to(device)

    def episode_loss(episodes: tuple[Episodes, ...]) -> Tensor:
        (task,) = episodes
        params = model.fine_tune(task.support)
        return query_loss(model.logits(params, task.query.items, task.query.context), task.query)

    fit_on_episodes(model, train_log, episode_loss, torch.optim.Adam(model.parameters(), lr=settings.outer_lr),
                    settings.epochs, settings.tasks_per_batch, settings.support_size, settings.query_size,
                    settings.seed, device, "meta-training MeLU", progress=progress)
    return model.cpu().eval()
