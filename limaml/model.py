"""The two-block LiMAML ranking network.

The meta block reads only member meta features and outputs the meta embedding; it is
the part adapted per member. The global block is shared by everyone: it reads the meta
embedding with the item and context features and predicts the click logit.

The global block's first layer is written as two projections whose sum equals one
linear layer over the concatenation [meta embedding, item part]. The item part does not
depend on the member's adapted weights, so the inner loop computes it once per support
example instead of once per inner step.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from limaml.config import ModelConfig

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


class GlobalBlock(nn.Module):
    """(meta embedding, item, context) -> click logit, shared by every member."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.item_embedding = nn.Embedding(config.n_items, config.item_embedding_dim)
        self.register_buffer("item_features", torch.zeros(config.n_items, config.item_feature_dim))
        item_in = config.item_embedding_dim + config.item_feature_dim + config.context_dim
        first = config.global_hidden[0]
        self.item_proj = nn.Linear(item_in, first)
        self.meta_proj = nn.Linear(config.meta_dim, first, bias=False)
        layers: list[nn.Module] = [nn.ReLU()]
        for width_in, width_out in zip(config.global_hidden, config.global_hidden[1:]):
            layers += [nn.Linear(width_in, width_out), nn.ReLU()]
        layers.append(nn.Linear(config.global_hidden[-1], 1))
        self.head = nn.Sequential(*layers)

    def item_part(self, items: Tensor, context: Tensor) -> Tensor:
        """items [..., K] int64, context [..., K, C] -> [..., K, H1], the member-free term."""
        features = [self.item_embedding(items), self.item_features[items], context]
        return self.item_proj(torch.cat(features, dim=-1))

    def logits_from_parts(self, meta_embedding: Tensor, item_part: Tensor) -> Tensor:
        """meta_embedding [B, E], item_part [B, K, H1] -> logits [B, K]."""
        pre_activation = item_part + self.meta_proj(meta_embedding).unsqueeze(-2)  # [B, K, H1]
        return self.head(pre_activation).squeeze(-1)

    def forward(self, meta_embedding: Tensor, items: Tensor, context: Tensor) -> Tensor:
        """meta_embedding [B, E], items [B, K], context [B, K, C] -> logits [B, K]."""
        return self.logits_from_parts(meta_embedding, self.item_part(items, context))


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
        return self.global_block.item_proj.weight.device
