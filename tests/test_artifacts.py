"""Artifacts: round trip, the ACTIVE pointer, and clear errors for anything incompatible."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import random_members, small_model
from limaml.adaptation import AdaptationEngine
from limaml.artifacts import (ArtifactError, FeatureSchema, active_version, load_artifact,
                              save_artifact, set_active)
from limaml.data import Vocabulary


def schema(items: int = 49) -> FeatureSchema:
    return FeatureSchema(
        items=Vocabulary(tuple(f"i{n}" for n in range(items))),
        member_fields={"age": Vocabulary(("a", "b", "c", "d")), "sex": Vocabulary(("f", "m"))},
        item_feature_names=("g0", "g1", "g2", "g3"),
        context_names=("slot", "hour"),
    )


def save(root: Path, **kwargs) -> str:
    return save_artifact(root, small_model(), schema(), {"valid_auc_adapted": 0.7}, {"seed": 0},
                         **kwargs)


def test_round_trip_gives_the_same_model_and_embeddings(tmp_path: Path) -> None:
    version = save(tmp_path)
    assert active_version(tmp_path) == version
    artifact = load_artifact(tmp_path)
    assert artifact.version == version and artifact.metrics["valid_auc_adapted"] == 0.7
    assert artifact.schema.digests() == schema().digests()
    original = small_model()
    for name, tensor in original.state_dict().items():
        assert torch.equal(tensor, artifact.model.state_dict()[name]), name
    members = random_members(original, [0, 9, 20])
    np.testing.assert_array_equal(AdaptationEngine(original, "cpu").adapt_members(members),
                                  AdaptationEngine(artifact.model, "cpu").adapt_members(members))


POINTER_READER = """
import collections, json, pathlib, sys
pointer, stop = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
seen = collections.Counter()
print("reading", flush=True)
while not stop.exists():
    for _ in range(200):
        try:
            seen[pointer.read_text()] += 1
        except FileNotFoundError:
            seen["<missing>"] += 1
print(json.dumps(seen))
"""
"""Reads the ACTIVE pointer as fast as it can, in its own process, until `stop` exists;
prints how often it read each content."""
POINTER_SWITCHES = 1000  # about 0.3 s; a write in place shows as thousands of empty reads


def test_versions_are_immutable_and_active_moves_atomically(tmp_path: Path) -> None:
    first = save(tmp_path)
    second = save(tmp_path, activate=False)
    assert first != second and active_version(tmp_path) == first
    set_active(tmp_path, second)
    assert active_version(tmp_path) == second
    with pytest.raises(ArtifactError, match="no model version 'nope'"):
        set_active(tmp_path, "nope")
    assert active_version(tmp_path) == second
    # A reader never sees the pointer empty or half-written while it moves back and forth.
    stop = tmp_path.parent / f"{tmp_path.name}.stop"
    reader = subprocess.Popen([sys.executable, "-c", POINTER_READER, str(tmp_path / "ACTIVE"), str(stop)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout is not None and reader.stdout.readline() == "reading\n"
        for switch in range(POINTER_SWITCHES):
            set_active(tmp_path, (first, second)[switch % 2])
    finally:
        stop.touch()
        output, _ = reader.communicate(timeout=30)
    seen = json.loads(output)  # both versions, read while the pointer moved, and nothing else
    assert set(seen) == {first + "\n", second + "\n"}, f"the reader saw {seen}"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first, second, "ACTIVE"])  # no leftovers


def test_missing_active_pointer_says_how_to_fix_it(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="limaml train"):
        load_artifact(tmp_path)


def edit_json(path: Path, change: Callable[[dict], None]) -> dict:
    """Apply `change` to a JSON file in place; returns the original content."""
    original = json.loads(path.read_text())
    edited = json.loads(path.read_text())
    change(edited)
    path.write_text(json.dumps(edited))
    return original


def test_tampered_vocabulary_is_detected(tmp_path: Path) -> None:
    version = save(tmp_path)
    edit_json(tmp_path / version / "vocab.json", lambda vocab: vocab["items"].__setitem__(0, "x"))
    with pytest.raises(ArtifactError, match="does not match the digests"):
        load_artifact(tmp_path)


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path: Path) -> None:
    version = save(tmp_path)
    edit_json(tmp_path / version / "config.json", lambda c: c["model"].update(meta_dim=16))
    with pytest.raises(ArtifactError, match="weights do not fit the model config"):
        load_artifact(tmp_path)


def test_unknown_format_and_missing_files_are_reported(tmp_path: Path) -> None:
    version = save(tmp_path)
    config_path = tmp_path / version / "config.json"
    original = edit_json(config_path, lambda c: c.update(format_version=99))
    with pytest.raises(ArtifactError, match="format 99 is not supported"):
        load_artifact(tmp_path)
    config_path.write_text(json.dumps(original))
    (tmp_path / version / "metrics.json").unlink()
    with pytest.raises(ArtifactError, match="metrics.json is missing"):
        load_artifact(tmp_path)


def test_schema_mismatch_names_what_differs() -> None:
    with pytest.raises(ArtifactError, match="items") as error:
        schema().check_compatible(schema(items=60), "MovieLens")
    assert "member_field" not in str(error.value)
    schema().check_compatible(schema())  # identical: no error
