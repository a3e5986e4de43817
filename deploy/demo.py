"""The model the stack serves, and the demo's scoring of one member through the service.

`limaml up` serves the ACTIVE model and refuses to start without one that fits the
replayed dataset; `limaml demo` meta-trains one on the dataset first when none fits.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from limaml.artifacts import (
    ArtifactError,
    FeatureSchema,
    active_version,
    load_artifact,
    save_artifact,
)
from limaml.data import InteractionLog
from limaml.model_config import default_tunables

log = logging.getLogger(__name__)

COLD_MEMBER = "limaml-demo-new-member"  # an id no dataset has: the service scores it with the prior
CANDIDATES = 10  # items the demo ranks: the most frequent ones of the replayed events


def fitting_model(root: Path, dataset: InteractionLog, spec: str) -> str:
    """The ACTIVE version of `root`, checked to fit the dataset; ArtifactError otherwise."""
    version = active_version(root)
    load_artifact(root, version).schema.check_compatible(FeatureSchema.from_log(dataset), f"the dataset {spec}")
    return version


def model_for_up(root: Path, dataset: InteractionLog, spec: str) -> str:
    try:
        return fitting_model(root, dataset, spec)
    except ArtifactError as error:
        raise ArtifactError(f"{error}\n`limaml up` serves the active model of {root}: run "
                            f"`limaml train --dataset {spec} --artifacts-dir {root}` first, or "
                            "`limaml demo`, which trains one when none fits.") from None


def model_for_demo(root: Path, dataset: InteractionLog, spec: str, progress: bool = True) -> str:
    """The fitting ACTIVE version, or a new one meta-trained on the dataset (and made ACTIVE)."""
    try:
        return fitting_model(root, dataset, spec)
    except ArtifactError as error:
        log.info("%s; training one on %s (limaml train --dataset %s)", error, spec, spec)
    from limaml.train import TrainConfig, meta_train, training_record

    config = TrainConfig(dataset=spec, artifacts_dir=root)
    model, metrics = meta_train(dataset, config, default_tunables(), progress=progress)
    version = save_artifact(root, model, FeatureSchema.from_log(dataset), metrics,
                            training_record(config, dataset), activate=True)
    log.info("trained model %s: holdout AUC %.3f un-adapted, %.3f adapted", version,
             metrics.get("valid_auc_prior", float("nan")), metrics.get("valid_auc_adapted", float("nan")))
    return version


@dataclass(frozen=True)
class DemoQuery:
    member_id: str  # the replayed member with the most events
    events: int  # its events in the replayed range
    candidates: list[str]  # the most frequent items of the replayed range


def demo_query(dataset: InteractionLog, start: int, stop: int) -> DemoQuery:
    members = dataset.member[start:stop]
    items = np.bincount(dataset.item[start:stop], minlength=len(dataset.items))
    busiest = int(np.bincount(members).argmax())
    top = [int(i) for i in np.argsort(-items, kind="stable")[:CANDIDATES] if items[i] > 0]
    return DemoQuery(member_id=str(dataset.members.token(busiest)), events=int((members == busiest).sum()),
                     candidates=[str(dataset.items.token(i)) for i in top])


def score(url: str, member_id: str, candidates: list[str], token: str | None,
          timeout_s: float = 10.0) -> dict[str, Any]:
    """POST /v1/score (with the service's bearer token, if it has one); the response body."""
    body = json.dumps({"member_id": member_id, "candidates": candidates}).encode()
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {token}"} if token else {})
    request = urllib.request.Request(url, data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as reply:
            return json.loads(reply.read())
    except urllib.error.HTTPError as error:
        raise RuntimeError(f"POST {url} answered {error.code}: {error.read().decode(errors='replace')}") from None


def score_demo_member(url: str, query: DemoQuery, token: str | None) -> list[str]:
    """Rank the candidates for the busiest member and for a new one; the lines to print."""
    member = score(url, query.member_id, query.candidates, token)
    cold = score(url, COLD_MEMBER, query.candidates, token)
    used = member["embedding"]
    how = (f"its adapted embedding (adapted after {used['seq']} events, {used['age_s']:.1f} s old, "
           f"model {used['model_version']})" if used["source"] == "adapted"
           else f"the prior (model {used['model_version']}): no adapted embedding of this version yet")
    cold_scores = {item["item_id"]: item["score"] for item in cold["ranked"]}
    cold_rank = {item["item_id"]: rank for rank, item in enumerate(cold["ranked"], 1)}
    lines = [(f"POST {url}: member {query.member_id} ({query.events} events replayed), "
              f"{len(query.candidates)} popular items,"),
             f"scored with {how}:",
             f"  {'rank':>4}  {'item':<12} {'this member':>11}   {'a new member (prior)':>20}"]
    for rank, item in enumerate(member["ranked"], 1):
        lines.append(f"  {rank:>4}  {item['item_id']:<12} {item['score']:>11.3f}   "
                     f"{cold_scores[item['item_id']]:>13.3f} (#{cold_rank[item['item_id']]})")
    return lines
