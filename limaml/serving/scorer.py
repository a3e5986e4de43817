"""One model version's scoring path: meta embedding + candidates -> ranked scores. Pure: no
I/O, testable without HTTP or a feature store.

The global block's first layer is linear in [meta embedding, item embedding, item
features, context], so

    pre_activation = W_item [item_emb, item_features] + b  +  [W_meta | W_ctx] [e, context]

splits into a per-item table computed once per model version ([n_items, H1]) and a
per-request shift ([H1]). A request is then a gather of K rows, one broadcast add and the
rest of the head: one small batched forward pass of a few fused ops (a serving process
runs them with cold caches between requests, where every op dispatch counts).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from limaml.artifacts import Artifact
from limaml.data import OOV_INDEX
from limaml.encoding import FeatureEncoder

PRIOR_CACHE_SIZE = 4096  # distinct profiles whose prior is kept (MovieLens has about 3,000)


@dataclass(frozen=True)
class Ranking:
    """Candidates in descending score order."""

    order: np.ndarray  # [K] int64, positions into the request's candidate list
    scores: np.ndarray  # [K] float32, click probabilities in ranked order
    known: np.ndarray  # [K] bool, in ranked order: the item is in the model's vocabulary


class VersionScorer:
    """Everything one model version needs to score; built once per version, never mutated."""

    def __init__(self, artifact: Artifact) -> None:
        self.version = artifact.version
        self.encoder = FeatureEncoder(artifact.schema)
        self.profile_fields = tuple(artifact.schema.member_fields)  # the meta block's field order
        model = artifact.model.eval()
        block, config = model.global_block, model.config
        self._meta_block = model.meta_block
        self._prior = functools.lru_cache(maxsize=PRIOR_CACHE_SIZE)(self._prior_of_codes)
        with torch.inference_mode():
            all_items = torch.arange(config.n_items)
            no_context = torch.zeros(config.n_items, config.context_dim)
            self._item_table = block.item_part(all_items, no_context)  # [n_items, H1], bias included
            context_weight = block.item_proj.weight[:, block.item_proj.in_features - config.context_dim:]
            self._shift_weight = torch.cat([block.meta_proj.weight, context_weight], dim=1)  # [H1, E + C]
            # head = ReLU, (Linear, ReLU)*, Linear: a ReLU before every Linear.
            self._layers = [(layer.bias.clone(), layer.weight.t().contiguous())  # [out], [in, out]
                            for layer in block.head if isinstance(layer, nn.Linear)]

    def prior(self, profile: dict[str, str] | None) -> np.ndarray:
        """[E] the meta block's meta-learned initial output on the member's profile (all
        out-of-vocabulary for a member without one): the embedding of a cold member.
        Read-only: it is shared by every member with the same profile."""
        return self._prior(tuple(self.encoder.member_features(profile).tolist()))

    def _prior_of_codes(self, codes: tuple[int, ...]) -> np.ndarray:
        with torch.inference_mode():
            prior = self._meta_block(torch.tensor([codes], dtype=torch.int64))[0].numpy()  # [E]
        prior.setflags(write=False)
        return prior

    def rank(self, embedding: np.ndarray, item_ids: list[str], context: dict[str, float]) -> Ranking:
        """Score every candidate for one member in one forward pass; unknown items are scored
        with the out-of-vocabulary row."""
        items = self.encoder.items(item_ids)  # [K]
        member_and_context = np.concatenate([embedding, self.encoder.context([context])[0]])  # [E + C]
        with torch.inference_mode():
            hidden = torch.index_select(self._item_table, 0, torch.from_numpy(items))  # [K, H1]
            hidden.add_(self._shift_weight @ torch.from_numpy(member_and_context))  # [K, H1]
            for bias, weight in self._layers:
                hidden = torch.addmm(bias, hidden.relu_(), weight)  # [K, out]
            logits = hidden.squeeze(-1)  # [K]
            scores = torch.sigmoid(logits).numpy()
        order = np.argsort(-logits.numpy(), kind="stable")  # by logit: sigmoid saturates; ties keep request order
        return Ranking(order=order, scores=scores[order], known=items[order] != OOV_INDEX)
