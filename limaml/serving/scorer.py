"""One model version's scoring path: meta embedding + candidates -> ranked scores. Pure: no
I/O, testable without HTTP or a feature store.

The global block's member-free part (`GlobalBlock.item_part`) is affine in the context, so
it splits into a per-item table computed once per model version ([n_items, P], at zero
context) and a per-request shift (a [P, C] matrix times the request's context). A request
is then a gather of K rows, one add and `logits_from_parts`: one small batched forward
pass of a few ops (a serving process runs them with cold caches between requests, where
every op dispatch counts).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

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
        self._global_block = block
        self._meta_block = model.meta_block
        self._prior = functools.lru_cache(maxsize=PRIOR_CACHE_SIZE)(self._prior_of_codes)
        with torch.inference_mode():
            all_items = torch.arange(config.n_items)
            self._item_table = block.item_part(all_items, torch.zeros(config.n_items, config.context_dim))  # [n_items, P]
            # Column j: what context feature j = 1 adds to every item's part.
            unit = torch.cat([torch.zeros(1, config.context_dim), torch.eye(config.context_dim)])  # [1 + C, C]
            parts = block.item_part(torch.zeros(1 + config.context_dim, dtype=torch.int64), unit)  # [1 + C, P]
            self._context_shift = (parts[1:] - parts[:1]).t().contiguous()  # [P, C]

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
        request_context = torch.from_numpy(self.encoder.context([context])[0])  # [C]
        with torch.inference_mode():
            parts = torch.index_select(self._item_table, 0, torch.from_numpy(items))  # [K, P]
            parts.add_(self._context_shift @ request_context)  # [K, P]
            member = torch.tensor(embedding, dtype=torch.float32)[None]  # [1, E], a copy: priors are read-only
            logits = self._global_block.logits_from_parts(member, parts[None])[0]  # [K]
            scores = torch.sigmoid(logits).numpy()
        order = np.argsort(-logits.numpy(), kind="stable")  # by logit: sigmoid saturates; ties keep request order
        return Ranking(order=order, scores=scores[order], known=items[order] != OOV_INDEX)
