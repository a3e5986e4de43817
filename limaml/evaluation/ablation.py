"""`limaml ablate`: LiMAML's design choices varied one at a time around the configured model.

Each variant changes one factor (inner steps, meta embedding size, first- or second-order
meta-training, support size K) and keeps every other setting; it is meta-trained for each
seed on the events before the split and scored with the frozen and streaming policies.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from limaml.evaluation.bootstrap import MemberBootstrap
from limaml.evaluation.config import AblationConfig, BaselineConfig, EvalConfig
from limaml.evaluation.plots import plot_panels
from limaml.evaluation.protocol import FROZEN, Refresh, streaming
from limaml.evaluation.report import format_interval, write_json
from limaml.evaluation.runner import make_trainer
from limaml.evaluation.summary import Summary, summarise, summary_json
from limaml.evaluation.systems import score_limaml
from limaml.evaluation.training import Trainer
from limaml.train import resolve_device

log = logging.getLogger(__name__)

COMPARED = ("limaml_frozen", "limaml_streaming")
SHOWN_BUCKETS = ("all", "1-4", "5-19")


@dataclass(frozen=True)
class Variant:
    factor: str
    value: str
    tunables: dict[str, Any]  # ModelConfig overrides
    train: dict[str, Any]  # TrainConfig overrides


def variants(config: AblationConfig) -> list[Variant]:
    found = [Variant("inner steps", str(n), {"inner_steps": n}, {}) for n in config.sweep_inner_steps]
    found += [Variant("meta_dim", str(d), {"meta_dim": d}, {}) for d in config.sweep_meta_dim]
    if config.sweep_order:
        found += [Variant("order", name, {"first_order": first}, {})
                  for name, first in (("first", True), ("second", False))]
    found += [Variant("support size K", str(k), {}, {"support_size": k}) for k in config.sweep_support_size]
    return found


def score_variant(trainer: Trainer, variant: Variant, policy: Refresh, seed: int,
                  device: str) -> dict[str, np.ndarray]:
    exp = trainer.experiment
    model = trainer.limaml(seed, tunables=variant.tunables, train=variant.train)
    k = variant.train.get("support_size", trainer.train["support_size"])
    return {name: score_limaml(model, exp.log, exp.test, p, k, resolve_device(device))
            for name, p in (("limaml_frozen", FROZEN), ("limaml_streaming", policy))}


def run_ablation(config: EvalConfig, ablation: AblationConfig, train: dict[str, Any],
                 tunables: dict[str, Any], progress: bool = False) -> dict[str, dict[str, Summary]]:
    """Factor -> value -> summary; writes ablation.md, ablation.json and ablation.png."""
    trainer = make_trainer(config, train, tunables, BaselineConfig(), progress)
    labels, test = trainer.experiment.labels, trainer.experiment.test
    masks = {name: mask for name, mask in test.bucket_masks().items() if name in SHOWN_BUCKETS}
    bootstrap = MemberBootstrap(test.member, config.bootstrap_resamples)
    policy = streaming(config.refresh_every, config.refresh_latency_s)
    results: dict[str, dict[str, Summary]] = {}
    todo = variants(ablation)
    for variant in tqdm(todo, desc="ablation variants", unit="variant", disable=not progress):
        per_seed = [score_variant(trainer, variant, policy, seed, config.device)
                    for seed in range(config.seeds)]
        scores = {name: [s[name] for s in per_seed] for name in COMPARED}
        results.setdefault(variant.factor, {})[variant.value] = summarise(bootstrap, labels, masks, scores)
        log.info("ablation %s=%s: streaming AUC %.4f", variant.factor, variant.value,
                 results[variant.factor][variant.value]["limaml_streaming"]["all"].interval("auc").value)
    write_ablation(config.out_dir, results, config, tunables, train)
    return results


def write_ablation(out_dir: Path, results: dict[str, dict[str, Summary]], config: EvalConfig,
                   tunables: dict[str, Any], train: dict[str, Any]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "ablation.json", {factor: {value: summary_json(summary) for value, summary in values.items()}
                                           for factor, values in results.items()})
    panels = {factor: (list(values), {name: [values[v][name]["all"].interval("auc") for v in values]
                                      for name in COMPARED})
              for factor, values in results.items()}
    plot_panels(panels, out_dir / "ablation.png",
                f"LiMAML ablations on {config.dataset} ({config.seeds} seed(s))", "AUC, all test events")
    header = " | ".join(f"{name} {metric.upper()} {bucket}" for name in reversed(COMPARED)
                        for metric in ("auc", "gauc") for bucket in SHOWN_BUCKETS)
    columns = 2 * 2 * len(SHOWN_BUCKETS)
    lines = [f"# LiMAML ablations: {config.dataset}\n",
             f"One factor varied at a time around inner_steps={tunables['inner_steps']}, "
             f"meta_dim={tunables['meta_dim']}, first_order={tunables['first_order']}, "
             f"K={train['support_size']}; streaming refreshes every N={config.refresh_every} events with "
             f"latency L={config.refresh_latency_s:g} s; mean over {config.seeds} seed(s) [95% interval of a "
             f"bootstrap over the test members].\n",
             f"| factor | value | {header} |",
             "| --- | --- | " + " | ".join("---:" for _ in range(columns)) + " |"]
    for factor, values in results.items():
        for value, summary in values.items():
            cells = [format_interval(summary[name][bucket].interval(metric)) for name in reversed(COMPARED)
                     for metric in ("auc", "gauc") for bucket in SHOWN_BUCKETS]
            lines.append(f"| {factor} | {value} | " + " | ".join(cells) + " |")
    lines.append("\n![ablations](ablation.png)\n")
    (out_dir / "ablation.md").write_text("\n".join(lines))
