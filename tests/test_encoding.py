"""Ids and named values to model indices under one model version."""

from __future__ import annotations

import numpy as np

from limaml.artifacts import FeatureSchema
from limaml.data import Vocabulary
from limaml.encoding import FeatureEncoder

SCHEMA = FeatureSchema(
    items=Vocabulary(("i1", "i2", "i3")),
    member_fields={"age": Vocabulary(("young", "old")), "region": Vocabulary(("n", "s"))},
    item_feature_names=("g",),
    context_names=("slot", "hour"),
)


def test_unknown_members_items_and_values_map_to_the_oov_index() -> None:
    encoder = FeatureEncoder(SCHEMA)
    assert encoder.member_features({"age": "old", "region": "s"}).tolist() == [2, 2]
    assert encoder.member_features({"age": "ancient"}).tolist() == [0, 0]
    assert encoder.member_features(None).tolist() == [0, 0]
    assert encoder.items(["i3", "nope", "i1"]).tolist() == [3, 0, 1]


def test_context_follows_the_models_feature_order_and_ignores_the_rest() -> None:
    context = FeatureEncoder(SCHEMA).context([{"hour": 0.5, "slot": 0.1, "other": 9.0}, {}])
    np.testing.assert_array_equal(context, np.array([[0.1, 0.5], [0.0, 0.0]], dtype=np.float32))


def test_an_empty_support_set_has_the_right_shapes() -> None:
    support = FeatureEncoder(SCHEMA).support({"age": "young"}, [], [], [])
    assert support.items.shape == (0,) and support.context.shape == (0, 2)
    assert support.labels.dtype == np.float32
