"""The common interaction log every dataset adapter produces and every trainer reads.

Events are kept time-ordered by (timestamp, position in the source), the order the
replay producer streams them in. Members and items are dense indices into a
`Vocabulary` whose index 0 is reserved for anything unknown (a new member or item
seen online after training).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

OOV_INDEX = 0


@dataclass(frozen=True)
class Vocabulary:
    """External string keys <-> dense indices; index 0 stands for out-of-vocabulary."""

    tokens: tuple[str, ...]
    _lookup: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        lookup = {token: position + 1 for position, token in enumerate(self.tokens)}
        if len(lookup) != len(self.tokens):
            raise ValueError("vocabulary tokens must be unique")
        object.__setattr__(self, "_lookup", lookup)

    def __len__(self) -> int:
        """Number of indices, the OOV slot included (the size of an embedding table)."""
        return len(self.tokens) + 1

    def index(self, token: str) -> int:
        return self._lookup.get(token, OOV_INDEX)

    def token(self, index: int) -> str | None:
        return None if index == OOV_INDEX else self.tokens[index - 1]

    def digest(self) -> str:
        """Content hash, stored with model artifacts so a mismatched vocabulary is caught."""
        h = hashlib.sha256()
        for token in self.tokens:
            h.update(token.encode("utf-8"))
            h.update(b"\x00")
        return h.hexdigest()


@dataclass
class InteractionLog:
    """A time-ordered interaction log with member meta features and item features.

    Arrays indexed by event have length E; member arrays have length len(members)
    and item arrays len(items), row 0 being the OOV slot.
    """

    name: str
    member: np.ndarray  # [E] int64, index into `members`
    item: np.ndarray  # [E] int64, index into `items`
    label: np.ndarray  # [E] float32 in {0, 1}
    ts: np.ndarray  # [E] int64 epoch milliseconds, non-decreasing
    context: np.ndarray  # [E, C] float32 per-event context features (C may be 0)
    context_names: tuple[str, ...]
    members: Vocabulary
    items: Vocabulary
    member_features: dict[str, np.ndarray]  # name -> [len(members)] int64 codes
    member_feature_vocabs: dict[str, Vocabulary]  # name -> vocabulary of its codes
    item_features: np.ndarray  # [len(items), F] float32 item content features
    item_feature_names: tuple[str, ...]

    def __post_init__(self) -> None:
        self.validate()

    @property
    def n_events(self) -> int:
        return int(self.member.shape[0])

    def validate(self) -> None:
        """Check shapes, dtypes and ordering; raise ValueError naming what is wrong."""
        n = self.n_events
        for name in ("member", "item", "label", "ts"):
            array = getattr(self, name)
            if array.shape != (n,):
                raise ValueError(f"{self.name}: '{name}' has shape {array.shape}, expected ({n},)")
        if self.context.shape != (n, len(self.context_names)):
            raise ValueError(f"{self.name}: context has shape {self.context.shape}, "
                             f"expected ({n}, {len(self.context_names)})")
        if self.item_features.shape != (len(self.items), len(self.item_feature_names)):
            raise ValueError(f"{self.name}: item_features has shape {self.item_features.shape}, "
                             f"expected ({len(self.items)}, {len(self.item_feature_names)})")
        if set(self.member_features) != set(self.member_feature_vocabs):
            raise ValueError(f"{self.name}: member_features and member_feature_vocabs name "
                             "different features")
        for name, codes in self.member_features.items():
            if codes.shape != (len(self.members),):
                raise ValueError(f"{self.name}: member feature '{name}' has shape {codes.shape}, "
                                 f"expected ({len(self.members)},)")
            if n and (codes.min() < 0 or codes.max() >= len(self.member_feature_vocabs[name])):
                raise ValueError(f"{self.name}: member feature '{name}' has codes outside its vocabulary")
        if n:
            if self.member.min() < 0 or self.member.max() >= len(self.members):
                raise ValueError(f"{self.name}: member index out of range")
            if self.item.min() < 0 or self.item.max() >= len(self.items):
                raise ValueError(f"{self.name}: item index out of range")
            if not np.isin(self.label, (0.0, 1.0)).all():
                raise ValueError(f"{self.name}: labels must be 0 or 1")
            if np.any(np.diff(self.ts) < 0):
                raise ValueError(f"{self.name}: events are not in timestamp order")

    def subset(self, mask: np.ndarray) -> InteractionLog:
        """The events selected by a boolean mask, order kept; vocabularies and features shared."""
        return InteractionLog(
            name=self.name,
            member=self.member[mask],
            item=self.item[mask],
            label=self.label[mask],
            ts=self.ts[mask],
            context=self.context[mask],
            context_names=self.context_names,
            members=self.members,
            items=self.items,
            member_features=self.member_features,
            member_feature_vocabs=self.member_feature_vocabs,
            item_features=self.item_features,
            item_feature_names=self.item_feature_names,
        )

    def time_quantile(self, q: float) -> int:
        """The timestamp below which a fraction q of the events fall (a global split time)."""
        if not 0.0 < q < 1.0:
            raise ValueError(f"quantile must be in (0, 1), got {q}")
        return int(self.ts[min(int(q * self.n_events), self.n_events - 1)])

    def member_feature_matrix(self) -> np.ndarray:
        """[len(members), n_fields] int64 codes, fields in sorted-name order."""
        names = sorted(self.member_features)
        if not names:
            return np.zeros((len(self.members), 0), dtype=np.int64)
        return np.stack([self.member_features[name] for name in names], axis=1)


def time_order(ts: np.ndarray) -> np.ndarray:
    """Permutation sorting events by (timestamp, position in the source): a stable sort."""
    return np.argsort(ts, kind="stable")
