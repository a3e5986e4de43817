"""The two-block LiMAML ranking network.

The meta block reads only member meta features and outputs the meta embedding; it is
the part adapted per member. The global block is shared by everyone: it reads the meta
embedding with the item and context features and predicts the click logit

    logit = item prior + item bias + member bias(e) + <e, item vector> + context term [+ MLP]

where e is the meta embedding. The item prior is the item's smoothed training positive
rate and the item vector is read from the item's taste factors and content features
(`limaml.item_statistics`): adapting e moves the member's base rate and their taste, and
the dot product lets a few support examples change how the member ranks items. An MLP
path (the paper's concatenation network) is optional: on ML-100K it lowered both AUC and
per-member AUC (docs/evaluation.md).

The global block is computed in two stages. `item_part` is everything that does not
depend on the member (one row per item and context); `logits_from_parts` combines it with
meta embeddings. The inner loop computes the item part once per support example instead
of once per inner step, and the scoring service once per model version.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from limaml.item_statistics import ItemStatistics
from limaml.model_config import ModelConfig

RATE_EPS = 1e-4  # item rates are clamped to [eps, 1 - eps] before their logit

AdaptedParams = dict[str, Tensor]
"""The per-member copy of the meta block, each tensor with a leading member dimension B:
input [B, D_in] (the member's gathered feature embeddings), w1 [B, H, D_in], b1 [B, H],
w2 [B, E, H], b2 [B, E]. Adapting the gathered embeddings is the same as adapting the
embedding-table rows the member reads, which are the only rows its loss touches."""


class MetaBlock(nn.Module):
    """Member meta features -> meta embedding."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.field_embeddings = nn.ModuleList(
            nn.Embedding(cardinality, config.member_field_dim)
            for cardinality in config.member_field_cardinalities
        )
        # Anonymous members (no meta features) read one learned constant input.
        self.constant_input = (
            None if self.field_embeddings else nn.Parameter(torch.zeros(config.member_field_dim))
        )
        self.hidden = nn.Linear(config.meta_input_dim, config.meta_hidden)
        self.out = nn.Linear(config.meta_hidden, config.meta_dim)

    def gather_input(self, member_features: Tensor) -> Tensor:
        """[B, n_fields] int64 codes -> [B, D_in] concatenated field embeddings."""
        if self.constant_input is not None:
            return self.constant_input.expand(member_features.shape[0], -1)
        return torch.cat(
            [table(member_features[:, i]) for i, table in enumerate(self.field_embeddings)], dim=-1
        )

    def initial_params(self, member_features: Tensor) -> AdaptedParams:
        """The meta-learned initialisation, broadcast to one (view) copy per member."""
        batch = member_features.shape[0]
        return {
            "input": self.gather_input(member_features),
            "w1": self.hidden.weight.expand(batch, -1, -1),
            "b1": self.hidden.bias.expand(batch, -1),
            "w2": self.out.weight.expand(batch, -1, -1),
            "b2": self.out.bias.expand(batch, -1),
        }

    def forward(self, member_features: Tensor) -> Tensor:
        """[B, n_fields] -> [B, E], the un-adapted prior embedding."""
        return self.out(torch.relu(self.hidden(self.gather_input(member_features))))


def meta_forward(params: AdaptedParams) -> Tensor:
    """The meta block evaluated with per-member weights: -> [B, E]."""
    hidden = torch.relu(torch.einsum("bhd,bd->bh", params["w1"], params["input"]) + params["b1"])
    return torch.einsum("beh,bh->be", params["w2"], hidden) + params["b2"]  # [B, E]


class MLPPath(nn.Module):
    """The optional concatenation network: ReLU MLP over [meta embedding, item, context],
    with its first layer split into a member part and an item part."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.item_embedding = nn.Embedding(config.n_items, config.item_embedding_dim)
        item_in = config.item_embedding_dim + config.item_feature_dim + config.context_dim
        first = config.global_hidden[0]
        self.item_proj = nn.Linear(item_in, first)
        self.meta_proj = nn.Linear(config.meta_dim, first, bias=False)
        layers: list[nn.Module] = [nn.ReLU()]
        for width_in, width_out in zip(config.global_hidden, config.global_hidden[1:]):
            layers += [nn.Linear(width_in, width_out), nn.ReLU()]
        layers.append(nn.Linear(config.global_hidden[-1], 1))
        self.head = nn.Sequential(*layers)

    def item_part(self, items: Tensor, item_features: Tensor, context: Tensor) -> Tensor:
        """-> [..., K, H1], the first layer's member-free term."""
        return self.item_proj(torch.cat([self.item_embedding(items), item_features, context], dim=-1))

    def logits(self, meta_embedding: Tensor, item_part: Tensor) -> Tensor:
        """meta_embedding [B, E], item_part [B, K, H1] -> [B, K]."""
        return self.head(item_part + self.meta_proj(meta_embedding).unsqueeze(-2)).squeeze(-1)


class GlobalBlock(nn.Module):
    """(meta embedding, item, context) -> click logit, shared by every member.

    The item statistics buffers are filled from the training events by `fit_item_statistics`
    and saved with the model.
    """

    item_features: Tensor  # [n_items, F] item content features
    item_positives: Tensor  # [n_items] positive training events of each item
    item_counts: Tensor  # [n_items] training events of each item
    global_rate: Tensor  # [] positive rate of the training events
    item_factors: Tensor  # [n_items, taste_factors]

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("item_features", torch.zeros(config.n_items, config.item_feature_dim))
        self.register_buffer("item_positives", torch.zeros(config.n_items))
        self.register_buffer("item_counts", torch.zeros(config.n_items))
        self.register_buffer("global_rate", torch.tensor(0.5))
        self.register_buffer("item_factors", torch.zeros(config.n_items, config.taste_factors))
        self.item_bias = nn.Embedding(config.n_items, 1)  # learned correction to the item prior
        nn.init.zeros_(self.item_bias.weight)
        self.item_vector = nn.Linear(config.taste_factors + config.item_feature_dim, config.meta_dim)
        nn.init.normal_(self.item_vector.weight, std=0.01)
        nn.init.zeros_(self.item_vector.bias)
        self.member_bias = nn.Linear(config.meta_dim, 1)
        self.context_weight = nn.Linear(config.context_dim, 1, bias=False) if config.context_dim else None
        self.mlp = MLPPath(config) if config.global_hidden else None

    def fit_item_statistics(self, statistics: ItemStatistics) -> None:
        with torch.no_grad():
            self.item_positives.copy_(torch.from_numpy(statistics.positives))
            self.item_counts.copy_(torch.from_numpy(statistics.counts))
            self.global_rate.fill_(statistics.global_rate)
            self.item_factors.copy_(torch.from_numpy(statistics.factors))

    def item_prior(self, items: Tensor, own_labels: Tensor | None = None) -> Tensor:
        """[..., K] logit of each item's smoothed training positive rate.

        `own_labels` are given when the events are themselves training events (meta-training):
        each event's own label is then left out of its item's rate, as it will be for an event
        the model scores after training.
        """
        positives, counts = self.item_positives[items], self.item_counts[items]
        if own_labels is not None:
            counted = (counts > 0).to(positives.dtype)  # padding reads the OOV item, never counted
            positives, counts = positives - own_labels * counted, counts - counted
        pseudo = self.config.item_prior_count
        rate = (positives + pseudo * self.global_rate) / (counts + pseudo)
        return torch.logit(rate, eps=RATE_EPS)  # a log of positives only has rates of exactly 1

    def item_part(self, items: Tensor, context: Tensor, own_labels: Tensor | None = None) -> Tensor:
        """items [..., K] int64, context [..., K, C] -> [..., K, 1 + E (+ H1)]: the member-free
        terms (item prior + item bias + context term, item vector, MLP first layer)."""
        features = self.item_features[items]  # [..., K, F]
        constant = self.item_prior(items, own_labels) + self.item_bias(items).squeeze(-1)  # [..., K]
        if self.context_weight is not None:
            constant = constant + self.context_weight(context).squeeze(-1)
        vector = self.item_vector(torch.cat([self.item_factors[items], features], dim=-1))  # [..., K, E]
        parts = [constant.unsqueeze(-1), vector]
        if self.mlp is not None:
            parts.append(self.mlp.item_part(items, features, context))
        return torch.cat(parts, dim=-1)

    def logits_from_parts(self, meta_embedding: Tensor, item_part: Tensor) -> Tensor:
        """meta_embedding [B, E], item_part [B, K, P] -> logits [B, K]."""
        dim = self.config.meta_dim
        constant, vector = item_part[..., 0], item_part[..., 1:1 + dim]
        logits = (constant + self.member_bias(meta_embedding)  # [B, K] + [B, 1]
                  + torch.einsum("bke,be->bk", vector, meta_embedding))
        if self.mlp is not None:
            logits = logits + self.mlp.logits(meta_embedding, item_part[..., 1 + dim:])
        return logits

    def forward(self, meta_embedding: Tensor, items: Tensor, context: Tensor,
                own_labels: Tensor | None = None) -> Tensor:
        """meta_embedding [B, E], items [B, K], context [B, K, C] -> logits [B, K]."""
        return self.logits_from_parts(meta_embedding, self.item_part(items, context, own_labels))


class LiMAML(nn.Module):
    """The meta block, the global block and the inner loop's step sizes."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.meta_block = MetaBlock(config)
        self.global_block = GlobalBlock(config)
        # One step size per meta-block weight (Meta-SGD) when learned, else a fixed scalar.
        shapes = {
            "input": (config.meta_input_dim,),
            "w1": tuple(self.meta_block.hidden.weight.shape),
            "b1": tuple(self.meta_block.hidden.bias.shape),
            "w2": tuple(self.meta_block.out.weight.shape),
            "b2": tuple(self.meta_block.out.bias.shape),
        }
        self.inner_lr = nn.ParameterDict(
            {
                name: nn.Parameter(
                    torch.full(shape if config.learned_inner_lr else (), config.inner_lr),
                    requires_grad=config.learned_inner_lr,
                )
                for name, shape in shapes.items()
            }
        )

    def forward(self, meta_embedding: Tensor, items: Tensor, context: Tensor) -> Tensor:
        return self.global_block(meta_embedding, items, context)

    @property
    def device(self) -> torch.device:
        return self.global_block.member_bias.weight.device
