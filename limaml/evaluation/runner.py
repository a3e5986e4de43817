"""`limaml eval`: train every system for several seeds, score the test period, write a report.

Systems (all on the same features, the same split and the same test events):

- global: LiMAML's network trained supervised; the member is only their meta features.
- id_embedding: wide-and-deep with a learned member-ID embedding (OOV for new members).
- melu: the whole decision network fine-tuned per member (MeLU-style), streaming(N).
- limaml_never / limaml_frozen / limaml_streaming: the meta-trained LiMAML model with its
  meta embedding never adapted, adapted once at the split, or re-adapted every N events.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from limaml.evaluation import drift
from limaml.evaluation.baselines import predict
from limaml.evaluation.config import BaselineConfig, EvalConfig
from limaml.evaluation.plots import plot_buckets, plot_refresh
from limaml.evaluation.protocol import FROZEN, NEVER
from limaml.evaluation.report import (Summary, check_claims, claims_markdown, markdown_table,
                                      summarise, write_json)
from limaml.evaluation.systems import score_limaml, score_melu
from limaml.evaluation.training import Experiment, ModelCache, Trainer
from limaml.train import resolve_device

log = logging.getLogger(__name__)

SYSTEMS = ("global", "id_embedding", "melu", "limaml_never", "limaml_frozen", "limaml_streaming")


def make_trainer(config: EvalConfig, train: dict[str, Any], tunables: dict[str, Any],
                 baselines: BaselineConfig, progress: bool) -> Trainer:
    experiment = Experiment.load(config.dataset, config.max_events, config.split_quantile)
    cache = ModelCache(config.out_dir / "models" if config.reuse_models else None,
                       {"dataset": config.dataset, "max_events": config.max_events,
                        "split_quantile": config.split_quantile})
    return Trainer(experiment, train, tunables, baselines, cache, config.device, progress)


def score_seed(trainer: Trainer, config: EvalConfig, seed: int
               ) -> tuple[dict[str, np.ndarray], dict[int, np.ndarray]]:
    """Every system's [T] probabilities for one seed, and streaming's for each swept N."""
    exp, k, device = trainer.experiment, trainer.train["support_size"], resolve_device(config.device)
    model = trainer.limaml(seed)

    def limaml(every: int) -> np.ndarray:
        return score_limaml(model, exp.log, exp.test, every, k, device, trainer.progress)

    scores = {
        "global": predict(trainer.global_model(seed), exp.log, exp.test.index),
        "id_embedding": predict(trainer.id_embedding(seed), exp.log, exp.test.index),
        "melu": score_melu(trainer.melu(seed), exp.log, exp.test, config.refresh_every, k, device,
                           trainer.progress),
        "limaml_never": limaml(NEVER),
        "limaml_frozen": limaml(FROZEN),
        "limaml_streaming": limaml(config.refresh_every),
    }
    sweep = {n: scores["limaml_streaming"] if n == config.refresh_every else limaml(n)
             for n in config.refresh_sweep}
    return scores, sweep


def run_evaluation(config: EvalConfig, train: dict[str, Any], tunables: dict[str, Any],
                   baselines: BaselineConfig, progress: bool = False) -> Summary:
    """Run every system over the seeds; write the report into `config.out_dir`; return results."""
    started = time.monotonic()
    trainer = make_trainer(config, train, tunables, baselines, progress)
    scores: dict[str, list[np.ndarray]] = {system: [] for system in SYSTEMS}
    sweep: dict[int, list[np.ndarray]] = {n: [] for n in config.refresh_sweep}
    for seed in tqdm(range(config.seeds), desc="seeds", unit="seed", disable=not progress):
        seed_scores, seed_sweep = score_seed(trainer, config, seed)
        for system, values in seed_scores.items():
            scores[system].append(values)
        for n, values in seed_sweep.items():
            sweep[n].append(values)
    settings = {"eval": asdict(config), "train": train, "model": tunables,
                "baselines": asdict(baselines), "elapsed_s": round(time.monotonic() - started, 1)}
    return write_report(config.out_dir, trainer.experiment, settings, scores, sweep)


def write_report(out_dir: Path, experiment: Experiment, settings: dict[str, Any],
                 scores: dict[str, list[np.ndarray]], sweep: dict[int, list[np.ndarray]]) -> Summary:
    """report.md, results.json, refresh.json, settings.json, scores.npz and the plots."""
    out_dir.mkdir(parents=True, exist_ok=True)
    labels, masks = experiment.labels, experiment.test.bucket_masks()
    results = summarise(labels, masks, scores)
    refresh = summarise(labels, masks, {str(n): values for n, values in sweep.items()})
    references = {name: results[name] for name in ("limaml_frozen", "limaml_never", "global")}
    write_json(out_dir / "results.json", results)
    write_json(out_dir / "refresh.json", refresh)
    write_json(out_dir / "settings.json", settings)
    arrays = {f"{name}_seed{i}": values for name, per_seed in scores.items()
              for i, values in enumerate(per_seed)}
    np.savez_compressed(out_dir / "scores.npz", labels=labels, prior=experiment.test.position,
                        **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as bool
    title = f"{experiment.log.name}, {settings['eval']['seeds']} seed(s)"
    plot_buckets(results, out_dir / "auc_by_bucket.png", f"AUC by prior interactions ({title})")
    plot_refresh(refresh, references, out_dir / "auc_vs_refresh.png",
                 f"AUC against the refresh interval ({title})")
    sections = [header(experiment, settings),
                "## AUC by the member's prior interactions\n\n", markdown_table(results),
                "\n## Log-loss by the member's prior interactions\n\n",
                markdown_table(results, metric="log_loss"),
                "\n## limaml_streaming AUC against the refresh interval N\n\n",
                markdown_table(refresh, first_header="N", counts=False),
                "\n![AUC by bucket](auc_by_bucket.png)\n\n![AUC against N](auc_vs_refresh.png)\n",
                "\n## Claims (decided by non-overlapping 95% intervals)\n\n",
                claims_markdown(check_claims(results))]
    drift_ts = drift.drift_times(experiment.spec)
    if drift_ts is not None:
        sections.append(drift.drift_report(experiment, drift_ts, scores, out_dir))
    (out_dir / "report.md").write_text("".join(sections))
    log.info("report written to %s", out_dir / "report.md")
    return results


def header(experiment: Experiment, settings: dict[str, Any]) -> str:
    config, test = settings["eval"], experiment.test
    return (f"# Offline evaluation: {experiment.spec}\n\n"
            f"- {experiment.train_log.n_events} training events before the split "
            f"(ts {test.split_ts}, quantile {config['split_quantile']}), {len(test)} test events "
            f"of {np.unique(test.member).size} members, {experiment.labels.mean():.3f} positive\n"
            f"- seeds 0..{config['seeds'] - 1}; 95% intervals are Student-t over the per-seed "
            "values (training randomness; the test events are the same for every seed)\n"
            f"- streaming and MeLU refresh every N = {config['refresh_every']} new events of a member; "
            f"support sets are the K = {settings['train']['support_size']} most recent events\n"
            f"- settings: settings.json; run time {settings['elapsed_s']} s\n\n")
