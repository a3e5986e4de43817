"""Model configuration: the dimensions and inner-loop settings saved with every artifact, here
rather than in `limaml.model` so that the command line reads them without importing torch."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class ModelConfig:
    # --- shapes fixed by the data (vocabulary sizes include the OOV slot) ---
    n_items: int  # rows of the item-ID embedding table
    item_feature_dim: int  # item content features (genres, year, ...)
    context_dim: int  # per-event context features (0 when the log has none)
    member_field_cardinalities: tuple[int, ...]  # one categorical meta feature per entry
    # --- meta block: member meta features -> meta embedding (adapted per member) ---
    meta_dim: int = 32  # size of the meta embedding kept per member in the feature store
    member_field_dim: int = 8  # embedding size of each member meta feature
    meta_hidden: int = 64  # hidden width of the meta block
    # --- global block: shared by every member ---
    taste_factors: int = 16  # item taste factors: top singular vectors of the training interactions
    item_prior_count: float = 5.0  # pseudo-count pulling an item's training positive rate to the global one
    global_hidden: tuple[int, ...] = ()  # widths of the optional MLP path; () = none (it hurt on ML-100K)
    item_embedding_dim: int = 32  # item-ID embedding read by the MLP path only
    # --- inner loop (used identically in meta-training and online adaptation) ---
    inner_steps: int = 5
    inner_lr: float = 0.5  # initial value when learned_inner_lr is set
    learned_inner_lr: bool = True  # Meta-SGD: one learned step size per meta-block weight
    first_order: bool = False  # drop second-order terms of the outer gradient (FOMAML)
    support_prior_count: float = 20.0  # n0: a member's n support examples each weigh 1/(n + n0)

    def __post_init__(self) -> None:
        if self.n_items < 1 or self.meta_dim < 1 or self.meta_hidden < 1:
            raise ValueError("n_items, meta_dim and meta_hidden must be positive")
        if min(self.global_hidden, default=1) < 1 or self.taste_factors < 0:
            raise ValueError("global_hidden widths must be positive and taste_factors >= 0")
        if self.inner_steps < 0 or self.inner_lr <= 0:
            raise ValueError("inner_steps must be >= 0 and inner_lr > 0")
        if self.item_prior_count <= 0 or self.support_prior_count < 0:
            raise ValueError("item_prior_count must be > 0 and support_prior_count >= 0")
        object.__setattr__(self, "member_field_cardinalities", tuple(self.member_field_cardinalities))
        object.__setattr__(self, "global_hidden", tuple(self.global_hidden))

    @property
    def meta_input_dim(self) -> int:
        """Width of the meta block's input: the concatenated member feature embeddings."""
        return max(1, len(self.member_field_cardinalities)) * self.member_field_dim

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**values)


MODEL_TUNABLES = ("meta_dim", "member_field_dim", "meta_hidden", "taste_factors", "item_prior_count",
                  "global_hidden", "item_embedding_dim", "inner_steps", "inner_lr", "learned_inner_lr",
                  "first_order", "support_prior_count")
"""The ModelConfig fields a user sets; the others are read off the data."""


def default_tunables() -> dict[str, Any]:
    return {name: ModelConfig.__dataclass_fields__[name].default for name in MODEL_TUNABLES}
