"""Versioned, immutable model artifacts and the ACTIVE pointer.

    <root>/
      ACTIVE                      the served version's name, replaced atomically
      <version>/
        model.safetensors         weights and buffers
        config.json               format, model config, vocabulary digests, training settings
        vocab.json                item and member-feature vocabularies, feature names
        metrics.json              what training reached

A version directory is written under a temporary name and renamed into place, so a reader
never sees a half-written version, and an existing version is never overwritten.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from limaml.data import InteractionLog, Vocabulary
from limaml.model import LiMAML
from limaml.model_config import ModelConfig

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
ACTIVE_FILE = "ACTIVE"


class ArtifactError(Exception):
    """A model artifact is missing, damaged, or does not fit the data it is used with."""


@dataclass(frozen=True)
class FeatureSchema:
    """What the model's inputs mean: vocabularies and feature names, in input order."""

    items: Vocabulary
    member_fields: dict[str, Vocabulary]  # sorted by name, the meta block's field order
    item_feature_names: tuple[str, ...]
    context_names: tuple[str, ...]

    @classmethod
    def from_log(cls, log: InteractionLog) -> FeatureSchema:
        return cls(
            items=log.items,
            member_fields={name: log.member_feature_vocabs[name] for name in sorted(log.member_features)},
            item_feature_names=log.item_feature_names,
            context_names=log.context_names,
        )

    def digests(self) -> dict[str, str]:
        digests = {"items": self.items.digest()}
        digests.update({f"member_field:{name}": v.digest() for name, v in self.member_fields.items()})
        digests["item_feature_names"] = Vocabulary(self.item_feature_names).digest()
        digests["context_names"] = Vocabulary(self.context_names).digest()
        return digests

    def to_json(self) -> dict[str, Any]:
        return {
            "items": list(self.items.tokens),
            "member_fields": {name: list(v.tokens) for name, v in self.member_fields.items()},
            "item_feature_names": list(self.item_feature_names),
            "context_names": list(self.context_names),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FeatureSchema:
        return cls(
            items=Vocabulary(tuple(data["items"])),
            member_fields={name: Vocabulary(tuple(t)) for name, t in data["member_fields"].items()},
            item_feature_names=tuple(data["item_feature_names"]),
            context_names=tuple(data["context_names"]),
        )

    def check_compatible(self, other: FeatureSchema, what: str = "the data") -> None:
        """Raise ArtifactError naming every input whose vocabulary or layout differs."""
        mine, theirs = self.digests(), other.digests()
        differing = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
        if differing:
            raise ArtifactError(
                f"the model's inputs do not match {what}: {', '.join(differing)} differ. "
                "Train a model on this data (limaml train) or use the data the model was trained on."
            )


@dataclass(frozen=True)
class Artifact:
    """A loaded model version."""

    version: str
    path: Path
    model: LiMAML
    schema: FeatureSchema
    metrics: dict[str, Any]
    training: dict[str, Any]


def new_version_name() -> str:
    """Sortable and unique: UTC time plus a random suffix."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def save_artifact(root: Path, model: LiMAML, schema: FeatureSchema, metrics: dict[str, Any],
                  training: dict[str, Any], activate: bool = True) -> str:
    """Write a new immutable version under `root`; point ACTIVE at it when `activate`."""
    root.mkdir(parents=True, exist_ok=True)
    version = new_version_name()
    config = {
        "format_version": FORMAT_VERSION,
        "version": version,
        "created_at": datetime.now(timezone.utc).isoformat(),
        "model": model.config.to_dict(),
        "vocabulary_digests": schema.digests(),
        "training": training,
    }
    staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=root))
    tensors = {name: t.detach().cpu().contiguous() for name, t in model.state_dict().items()}
    save_file(tensors, str(staging / "model.safetensors"))
    _write_json(staging / "config.json", config)
    _write_json(staging / "vocab.json", schema.to_json())
    _write_json(staging / "metrics.json", metrics)
    os.rename(staging, root / version)  # fails rather than replace an existing version
    log.info("saved model version %s in %s", version, root)
    if activate:
        set_active(root, version)
    return version


def set_active(root: Path, version: str) -> None:
    if not (root / version / "config.json").is_file():
        raise ArtifactError(f"no model version '{version}' in {root}")
    pointer = root / f".{ACTIVE_FILE}.{secrets.token_hex(4)}"
    pointer.write_text(version + "\n")
    os.replace(pointer, root / ACTIVE_FILE)


def active_version(root: Path) -> str:
    pointer = root / ACTIVE_FILE
    if not pointer.is_file():
        raise ArtifactError(f"no {ACTIVE_FILE} model in {root}: run `limaml train` first, "
                            "or point the artifacts directory at a trained model")
    return pointer.read_text().strip()


def load_artifact(root: Path, version: str | None = None,
                  device: torch.device | str = "cpu") -> Artifact:
    """Load a version (the ACTIVE one by default), checking it is complete and consistent."""
    version = version or active_version(root)
    path = root / version
    if not path.is_dir():
        raise ArtifactError(f"model version '{version}' not found in {root}")
    config = _read_json(path / "config.json")
    if config.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{path}: artifact format {config.get('format_version')!r} is not "
                            f"supported (this limaml reads format {FORMAT_VERSION}); retrain the model")
    schema = FeatureSchema.from_json(_read_json(path / "vocab.json"))
    if schema.digests() != config["vocabulary_digests"]:
        raise ArtifactError(f"{path}: vocab.json does not match the digests in config.json; "
                            "the artifact was modified after it was written")
    try:
        model_config = ModelConfig.from_dict(config["model"])
    except (TypeError, ValueError) as error:
        raise ArtifactError(f"{path}: invalid model config: {error}") from error
    if model_config.n_items != len(schema.items):
        raise ArtifactError(f"{path}: model has {model_config.n_items} item rows but the "
                            f"vocabulary has {len(schema.items)}")
    model = LiMAML(model_config)
    tensors = load_file(str(path / "model.safetensors"))
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    found = {name: tuple(t.shape) for name, t in tensors.items()}
    if expected != found:
        mismatched = sorted(n for n in expected.keys() | found.keys() if expected.get(n) != found.get(n))
        raise ArtifactError(f"{path}: weights do not fit the model config ({', '.join(mismatched)})")
    model.load_state_dict(tensors)
    return Artifact(version=version, path=path, model=model.to(device), schema=schema,
                    metrics=_read_json(path / "metrics.json"), training=config["training"])


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as error:
        raise ArtifactError(f"{path} is missing: the artifact is incomplete") from error
    except json.JSONDecodeError as error:
        raise ArtifactError(f"{path} is not valid JSON: {error}") from error
