"""The synthetic generator's ground truth, and dataset spec parsing."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from limaml.adapters.registry import load_dataset, parse_synthetic_config
from limaml.adapters.synthetic import SyntheticConfig, SyntheticDataset, generate_synthetic

SMALL = SyntheticConfig(n_members=400, n_items=200, mean_events=40.0, drift_fraction=0.25, seed=7)


@pytest.fixture(scope="module")
def data() -> SyntheticDataset:
    return generate_synthetic(SMALL)


def test_deterministic_under_seed(data: SyntheticDataset) -> None:
    again = generate_synthetic(SMALL)
    for name in ("member", "item", "label", "ts", "context", "item_features"):
        assert np.array_equal(getattr(data.log, name), getattr(again.log, name)), name
    assert np.array_equal(data.truth.click_prob, again.truth.click_prob)
    assert np.array_equal(data.truth.drift_ts, again.truth.drift_ts)


def test_different_seeds_differ(data: SyntheticDataset) -> None:
    other = generate_synthetic(SyntheticConfig(n_members=400, n_items=200, mean_events=40.0,
                                               drift_fraction=0.25, seed=8))
    assert not np.array_equal(data.truth.taste_before, other.truth.taste_before)
    assert (other.log.n_events != data.log.n_events
            or not np.array_equal(other.log.item, data.log.item))


def test_log_shape(data: SyntheticDataset) -> None:
    log, truth = data.log, data.truth
    assert log.context_names == ("slot",)
    assert 0.0 <= log.context.min() and log.context.max() == 1.0
    assert sorted(log.member_features) == ["demo_0", "demo_1", "demo_2"]
    assert log.item_features.shape == (201, 8) and not log.item_features[0].any()
    assert set(np.unique(log.item_features)) == {0.0, 1.0}
    assert truth.click_prob.shape == (log.n_events,)
    assert truth.taste_before.shape == (401, SMALL.taste_dim) and not truth.taste_before[0].any()
    assert truth.item_vectors.shape == (201, SMALL.taste_dim)


def test_drift_members(data: SyntheticDataset) -> None:
    log, truth = data.log, data.truth
    drifting = np.flatnonzero(truth.drift_ts >= 0)
    assert len(drifting) == 100  # a quarter of 400
    assert truth.drift_ts[0] == -1
    steady = np.setdiff1d(np.arange(1, 401), drifting)
    assert np.array_equal(truth.taste_before[steady], truth.taste_after[steady])
    same = np.isclose(truth.taste_before[drifting], truth.taste_after[drifting]).all(axis=1)
    assert not same.any()
    for member in drifting:
        events = log.member == member
        assert log.ts[events].min() <= truth.drift_ts[member] <= log.ts[events].max()


def _logit(data: SyntheticDataset, taste: np.ndarray) -> np.ndarray:
    """The click logit recomputed from the truth with the given per-event taste."""
    log, truth, config = data.log, data.truth, SMALL
    affinity = (taste * truth.item_vectors[log.item]).sum(axis=1) / np.sqrt(config.taste_dim)
    return (config.base_logit + config.label_scale * affinity
            + config.popularity_weight * truth.item_popularity[log.item]
            - config.position_bias * log.context[:, 0])


def test_click_prob_uses_taste_after_drift_time(data: SyntheticDataset) -> None:
    log, truth = data.log, data.truth
    after = (truth.drift_ts[log.member] >= 0) & (log.ts >= truth.drift_ts[log.member])
    assert 0 < after.sum() < log.n_events
    taste = np.where(after[:, None], truth.taste_after[log.member], truth.taste_before[log.member])
    expected = 1.0 / (1.0 + np.exp(-_logit(data, taste)))
    np.testing.assert_allclose(truth.click_prob, expected, rtol=1e-4, atol=1e-6)
    stale = 1.0 / (1.0 + np.exp(-_logit(data, truth.taste_before[log.member])))
    assert np.abs(stale[after] - truth.click_prob[after]).mean() > 0.05


def test_heavy_tailed_activity(data: SyntheticDataset) -> None:
    per_member = np.bincount(data.log.member, minlength=401)[1:]
    assert per_member.min() >= 1
    assert per_member.max() > 8 * np.median(per_member)


def test_true_click_prob_is_predictive(data: SyntheticDataset) -> None:
    assert roc_auc_score(data.log.label, data.truth.click_prob) > 0.75
    assert data.log.label.mean() == pytest.approx(data.truth.click_prob.mean(), abs=0.02)


def test_position_bias_lowers_clicks_at_bottom_slots(data: SyntheticDataset) -> None:
    slot = data.log.context[:, 0]
    assert data.log.label[slot < 0.25].mean() > data.log.label[slot > 0.75].mean() + 0.05


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="drift_fraction must be in"):
        SyntheticConfig(drift_fraction=1.5)
    with pytest.raises(ValueError, match="n_members must be > 0"):
        SyntheticConfig(n_members=0)


def test_registry_synthetic_overrides() -> None:
    config = parse_synthetic_config("n_members=2000, seed=3,drift_fraction=0.2,mean_events=7")
    assert (config.n_members, config.seed, config.drift_fraction) == (2000, 3, 0.2)
    assert config.mean_events == 7.0
    assert isinstance(config.mean_events, float)
    log = load_dataset("synthetic:n_members=50,n_items=30,seed=1")
    assert len(log.members) == 51 and len(log.items) == 31
    assert np.array_equal(log.item, generate_synthetic(
        SyntheticConfig(n_members=50, n_items=30, seed=1)).log.item)
    assert load_dataset("synthetic").n_events == generate_synthetic().log.n_events


@pytest.mark.parametrize(("spec", "message"), [
    ("synthetic:n_users=5", "unknown synthetic option 'n_users'.*n_members"),
    ("synthetic:n_members=2.5", "n_members expects int, got '2.5'"),
    ("synthetic:drift_fraction=lots", "drift_fraction expects float"),
    ("synthetic:drift_fraction=nan", "expects a finite number"),
    ("synthetic:drift_fraction=2", "drift_fraction must be in"),
    ("synthetic:seed", "not of the form key=value"),
    ("synthetic:", "not of the form key=value"),
    ("synthetic:seed=1,seed=2", "given twice"),
    ("imagenet", "unknown dataset spec 'imagenet'.*synthetic:key=value.*movielens:/path"),
])
def test_registry_errors(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_dataset(spec)
