"""Following the ACTIVE pointer: a new version takes over, a broken one leaves the old in use."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import save_tiny_model
from limaml.adapt_version import AdaptVersion
from limaml.adapters.registry import load_dataset
from limaml.artifacts import ArtifactError

DATASET = "synthetic:n_members=30,n_items=20,seed=3"


def test_the_adaptation_model_survives_a_broken_active_version(tmp_path: Path) -> None:
    dataset = load_dataset(DATASET)
    first = save_tiny_model(tmp_path, dataset)
    model = AdaptVersion(tmp_path, "cpu")
    assert model.current.version == first and not model.refresh()

    (tmp_path / "ACTIVE").write_text("no-such-version\n")
    assert not model.refresh()
    assert model.current.version == first
    assert model.load_error is not None and "no-such-version" in model.load_error

    second = save_tiny_model(tmp_path, dataset, seed=1)  # a good version becomes ACTIVE
    assert model.refresh()
    assert (model.current.version, model.load_error) == (second, None)


def test_nothing_starts_without_a_loadable_model(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="no ACTIVE model"):
        AdaptVersion(tmp_path, "cpu")
