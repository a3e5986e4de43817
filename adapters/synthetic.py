"""Synthetic interaction logs with a known ground truth, for demos and scale tests.

Every member has a latent taste vector, weakly tied to their demographics; some members'
taste changes at a random moment inside their history. Every item has a latent vector
and a popularity. The click probability of an event is

    sigmoid(base_logit + label_scale * <taste, item> / sqrt(taste_dim)
            + popularity_weight * popularity - position_bias * slot)

and the label is drawn from it, so a model can be compared with the best possible one.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, fields

import numpy as np

from limaml.data import InteractionLog, Vocabulary, time_order

logger = logging.getLogger(__name__)

DAY_MS = 86_400_000


@dataclass(frozen=True)
class SyntheticConfig:
    """Generator parameters; validated on construction (ValueError naming the field)."""

    n_members: int = 1000
    n_items: int = 500
    taste_dim: int = 16  # size of the latent taste and item vectors
    mean_events: float = 50.0  # mean events per member; activity is lognormal
    activity_sigma: float = 1.0  # lognormal sigma of activity: larger = heavier tail
    n_demo_fields: int = 3  # member categorical features demo_0, demo_1, ...
    demo_cardinality: int = 5  # values per demographic field
    demo_taste_weight: float = 0.4  # taste = w * group centre + sqrt(1 - w^2) * personal noise
    drift_fraction: float = 0.1  # fraction of members whose taste changes mid-history
    label_scale: float = 2.0  # logit per unit of affinity: lower means noisier labels
    base_logit: float = -1.0  # logit intercept, sets the overall click rate
    popularity_weight: float = 0.5  # logit per unit of item popularity (a standard normal)
    exposure_skew: float = 1.0  # items are shown with probability ~ exp(skew * popularity)
    position_bias: float = 1.0  # logit lost from the top slot (0) to the bottom slot (1)
    n_slots: int = 10  # ranked positions; context feature slot = position / (n_slots - 1)
    n_genres: int = 8  # item content flags: thresholded noisy projections of the item vector
    genre_noise: float = 0.5  # noise added to those projections before thresholding
    duration_days: float = 90.0  # events are spread uniformly over this span
    start_epoch_ms: int = 1_700_000_000_000  # time of the first possible event
    seed: int = 0

    def __post_init__(self) -> None:
        positive = ("n_members", "n_items", "taste_dim", "mean_events", "demo_cardinality",
                    "n_genres", "duration_days")
        non_negative = ("activity_sigma", "n_demo_fields", "label_scale", "exposure_skew",
                        "genre_noise", "start_epoch_ms", "seed")
        fractions = ("demo_taste_weight", "drift_fraction")
        for field in fields(self):
            value = getattr(self, field.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"SyntheticConfig.{field.name} must be finite, got {value}")
            if field.name in positive and value <= 0:
                raise ValueError(f"SyntheticConfig.{field.name} must be > 0, got {value}")
            if field.name in non_negative and value < 0:
                raise ValueError(f"SyntheticConfig.{field.name} must be >= 0, got {value}")
            if field.name in fractions and not 0.0 <= value <= 1.0:
                raise ValueError(f"SyntheticConfig.{field.name} must be in [0, 1], got {value}")
        if self.n_slots < 2:
            raise ValueError(f"SyntheticConfig.n_slots must be >= 2, got {self.n_slots}")


@dataclass
class SyntheticTruth:
    """The hidden state behind a synthetic log, indexed like the log (row 0 = OOV, zeros)."""

    taste_before: np.ndarray  # [len(members), taste_dim] float32 taste before any drift
    taste_after: np.ndarray  # [len(members), taste_dim] float32 from drift_ts on (= before if none)
    drift_ts: np.ndarray  # [len(members)] int64 epoch ms taste_after applies from, -1 if never
    item_vectors: np.ndarray  # [len(items), taste_dim] float32
    item_popularity: np.ndarray  # [len(items)] float32, standard normal
    click_prob: np.ndarray  # [E] float64 true click probability of every event, log order


@dataclass
class SyntheticDataset:
    log: InteractionLog
    truth: SyntheticTruth


def _with_oov_row(array: np.ndarray, fill: float = 0) -> np.ndarray:
    """The array with a leading OOV row (or element) holding `fill`."""
    head = np.full((1,) + array.shape[1:], fill, dtype=array.dtype)
    return np.concatenate([head, array])


def _members(config: SyntheticConfig, rng: np.random.Generator
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Demographic codes [M, fields] (0-based), taste [M, d] and the same noise redrawn."""
    d, weight = config.taste_dim, config.demo_taste_weight
    codes = rng.integers(0, config.demo_cardinality, size=(config.n_members, config.n_demo_fields))
    centres = rng.standard_normal((config.n_demo_fields, config.demo_cardinality, d))
    group = np.zeros((config.n_members, d))
    for field_index in range(config.n_demo_fields):
        group += centres[field_index, codes[:, field_index]]
    group /= math.sqrt(max(config.n_demo_fields, 1))  # unit variance per component
    personal = math.sqrt(1.0 - weight**2)
    before = weight * group + personal * rng.standard_normal((config.n_members, d))
    after = weight * group + personal * rng.standard_normal((config.n_members, d))
    return codes, before, after


def _activity(config: SyntheticConfig, rng: np.random.Generator) -> np.ndarray:
    """Events per member: Poisson around a lognormal rate with mean `mean_events`, at least 1."""
    sigma = config.activity_sigma
    rates = rng.lognormal(math.log(config.mean_events) - sigma**2 / 2, sigma, config.n_members)
    return np.maximum(rng.poisson(rates), 1)


def _genres(config: SyntheticConfig, item_vectors: np.ndarray,
            rng: np.random.Generator) -> np.ndarray:
    """[N, n_genres] 0/1 flags: noisy random projections of the item vector, about a third set."""
    projection = rng.standard_normal((config.taste_dim, config.n_genres))
    scores = item_vectors @ projection / math.sqrt(config.taste_dim)
    scores += config.genre_noise * rng.standard_normal(scores.shape)
    return (scores > 0.43).astype(np.float32)  # 0.43 ~ the standard normal's 2/3 quantile


def generate_synthetic(config: SyntheticConfig | None = None) -> SyntheticDataset:
    """A time-ordered synthetic log and the truth that generated it; deterministic per seed."""
    config = config or SyntheticConfig()
    rng = np.random.default_rng(config.seed)
    codes, taste_before, taste_after = _members(config, rng)
    item_vectors = rng.standard_normal((config.n_items, config.taste_dim))
    popularity = rng.standard_normal(config.n_items)

    counts = _activity(config, rng)
    member = np.repeat(np.arange(config.n_members), counts)  # grouped by member
    n_events = member.shape[0]
    duration_ms = int(config.duration_days * DAY_MS)
    ts = config.start_epoch_ms + rng.integers(0, duration_ms, size=n_events)
    exposure = np.exp(config.exposure_skew * (popularity - popularity.max()))
    item = rng.choice(config.n_items, size=n_events, p=exposure / exposure.sum())
    position = rng.integers(0, config.n_slots, size=n_events)
    slot = position / (config.n_slots - 1)

    # Drift moments: uniform between each drifting member's first and last event.
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    first, last = np.minimum.reduceat(ts, starts), np.maximum.reduceat(ts, starts)
    drifting = np.zeros(config.n_members, dtype=bool)
    n_drifting = round(config.drift_fraction * config.n_members)
    drifting[rng.permutation(config.n_members)[:n_drifting]] = True
    offset = (rng.random(config.n_members) * (last - first)).astype(np.int64)
    drift_ts = np.where(drifting, first + offset, -1)
    taste_after = np.where(drifting[:, None], taste_after, taste_before)

    affinity = np.einsum("ed,ed->e", taste_before[member], item_vectors[item])
    moved = np.flatnonzero(drifting[member] & (ts >= drift_ts[member]))
    affinity[moved] = np.einsum("ed,ed->e", taste_after[member[moved]], item_vectors[item[moved]])
    logit = (config.base_logit + config.label_scale * affinity / math.sqrt(config.taste_dim)
             + config.popularity_weight * popularity[item] - config.position_bias * slot)
    click_prob = 1.0 / (1.0 + np.exp(-logit))
    label = (rng.random(n_events) < click_prob).astype(np.float32)
    genres = _genres(config, item_vectors, rng)

    order = time_order(ts)
    demo_vocab = Vocabulary(tuple(str(value) for value in range(config.demo_cardinality)))
    log = InteractionLog(
        name="synthetic",
        member=member[order] + 1,
        item=item[order] + 1,
        label=label[order],
        ts=ts[order].astype(np.int64),
        context=slot[order].astype(np.float32)[:, None],
        context_names=("slot",),
        members=Vocabulary(tuple(f"m{index}" for index in range(config.n_members))),
        items=Vocabulary(tuple(f"i{index}" for index in range(config.n_items))),
        member_features={f"demo_{field_index}": _with_oov_row(codes[:, field_index] + 1)
                         for field_index in range(config.n_demo_fields)},
        member_feature_vocabs={f"demo_{field_index}": demo_vocab
                               for field_index in range(config.n_demo_fields)},
        item_features=_with_oov_row(genres),
        item_feature_names=tuple(f"genre_{index}" for index in range(config.n_genres)),
    )
    truth = SyntheticTruth(
        taste_before=_with_oov_row(taste_before.astype(np.float32)),
        taste_after=_with_oov_row(taste_after.astype(np.float32)),
        drift_ts=_with_oov_row(drift_ts.astype(np.int64), fill=-1),
        item_vectors=_with_oov_row(item_vectors.astype(np.float32)),
        item_popularity=_with_oov_row(popularity.astype(np.float32)),
        click_prob=click_prob[order],
    )
    logger.info("generated %d synthetic events for %d members, %d drifting", n_events,
                config.n_members, int(drifting.sum()))
    return SyntheticDataset(log=log, truth=truth)
