"""`limaml eval`: train every system for several seeds, score the test period, write a report.

Systems (all on the same split and the same test events; see docs/evaluation.md):

- global: LiMAML's network trained supervised; the member is only their meta features.
- popularity / counting: the item's training positive rate; plus the member's recent one.
- id_embedding / id_embedding_online: wide-and-deep with member-ID rows, static or trained
  on each test event after it is scored.
- melu: MeLU as published; maml_full_network: MAML over LiMAML's whole network.
- batch_daily / limaml_never / limaml_frozen / limaml_streaming: the meta-trained LiMAML
  model with its meta embedding rebuilt every night, never, once at the split, or after
  every N events with latency L.

Every member state that moves during the test period (streaming, melu, maml_full_network,
counting's member rate, id_embedding_online) moves under the same policy: N and L.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from limaml.evaluation import drift
from limaml.evaluation.baselines import WideAndDeep, predict
from limaml.evaluation.bootstrap import MemberBootstrap
from limaml.evaluation.config import BaselineConfig, EvalConfig
from limaml.evaluation.counting import score_counting, score_popularity
from limaml.evaluation.online import score_online
from limaml.evaluation.plots import plot_buckets, plot_panels
from limaml.evaluation.protocol import DAILY, FROZEN, NEVER, Refresh, streaming
from limaml.evaluation.report import claims_markdown, markdown_table, seed_table, write_json
from limaml.evaluation.summary import CLAIM_BUCKETS, Summary, check_claims, summarise, summary_json
from limaml.evaluation.systems import score_fine_tuned, score_limaml
from limaml.evaluation.training import Experiment, ModelCache, Trainer
from limaml.model import LiMAML
from limaml.train import resolve_device

log = logging.getLogger(__name__)

LIMAML_POLICIES: dict[str, Refresh | None] = {
    "batch_daily": DAILY, "limaml_never": NEVER, "limaml_frozen": FROZEN, "limaml_streaming": None}
"""The LiMAML systems and their refresh policies (None: the configured streaming policy)."""
SWEPT = ("limaml_streaming", "counting")  # the systems of the latency sweep
NEVER_ROW = "never"  # the latency sweep's last row: no refresh after the split (frozen)

PerSeed = dict[str, list[np.ndarray]]  # row -> [T] scores of each seed


def make_trainer(config: EvalConfig, train: dict[str, Any], tunables: dict[str, Any],
                 baselines: BaselineConfig, progress: bool) -> Trainer:
    experiment = Experiment.load(config.dataset, config.max_events, config.split_quantile)
    cache = ModelCache(config.out_dir / "models" if config.reuse_models else None,
                       {"dataset": config.dataset, "max_events": config.max_events,
                        "split_quantile": config.split_quantile})
    return Trainer(experiment, train, tunables, baselines, cache, config.device, progress)


def latency_label(seconds: float) -> str:
    for unit, size in (("day", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)} {unit}"
    return f"{seconds:g} s"


@dataclass
class SeedRun:
    """Scores one seed's systems; each model is trained (or loaded) once."""

    trainer: Trainer
    config: EvalConfig
    seed: int
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    @cached_property
    def model(self) -> LiMAML:
        started = time.monotonic()
        model = self.trainer.limaml(self.seed)
        self.seconds["limaml (training or loading)"] += time.monotonic() - started
        return model

    @cached_property
    def id_model(self) -> WideAndDeep:
        """Shared by id_embedding and id_embedding_online."""
        return self.trainer.id_embedding(self.seed)

    def policy(self, latency_s: float | None = None, every: int | None = None) -> Refresh:
        """The policy of every moving state: N and L of the config unless given."""
        return streaming(self.config.refresh_every if every is None else every,
                         self.config.refresh_latency_s if latency_s is None else latency_s)

    def limaml(self, policy: Refresh) -> np.ndarray:
        exp = self.trainer.experiment
        return score_limaml(self.model, exp.log, exp.test, policy, self.trainer.train["support_size"],
                            resolve_device(self.config.device), self.trainer.progress)

    def counting(self, policy: Refresh) -> np.ndarray:
        exp, b = self.trainer.experiment, self.trainer.baselines
        return score_counting(exp.log, exp.train_log, exp.test, policy, b.counting_item_prior,
                              b.counting_member_prior, b.counting_window)

    def system(self, name: str) -> np.ndarray:
        if name in LIMAML_POLICIES:
            _ = self.model  # trained or loaded outside the system's own time
        started = time.monotonic()
        scores = self._score(name)
        self.seconds[name] += time.monotonic() - started
        return scores

    def _score(self, name: str) -> np.ndarray:
        trainer, exp, b = self.trainer, self.trainer.experiment, self.trainer.baselines
        k, device = trainer.train["support_size"], resolve_device(self.config.device)
        if name in LIMAML_POLICIES:
            return self.limaml(LIMAML_POLICIES[name] or self.policy())
        if name == "global":
            return predict(trainer.global_model(self.seed), exp.log, exp.test.index)
        if name == "id_embedding":
            return predict(self.id_model, exp.log, exp.test.index)
        if name == "id_embedding_online":
            return score_online(self.id_model, exp.log, exp.test, self.policy(), b.online_lr, trainer.progress)
        if name == "popularity":
            return score_popularity(exp.log, exp.train_log, exp.test, b.popularity_prior)
        if name == "counting":
            return self.counting(self.policy())
        model = trainer.melu(self.seed) if name == "melu" else trainer.maml_full_network(self.seed)
        return score_fine_tuned(model, exp.log, exp.test, self.policy(), k, device, trainer.progress)


@dataclass
class Scores:
    """Every seed's [T] scores: systems, the latency sweep per swept system, the N sweep."""

    systems: PerSeed = field(default_factory=lambda: defaultdict(list))
    latency: dict[str, PerSeed] = field(default_factory=lambda: defaultdict(lambda: defaultdict(list)))
    refresh: PerSeed = field(default_factory=lambda: defaultdict(list))


def score_seed(run: SeedRun, scores: Scores) -> None:
    """Add one seed's scores of every system and sweep."""
    config = run.config
    names = config.system_names
    mine = {name: run.system(name) for name in names}
    for name, values in mine.items():
        scores.systems[name].append(values)
    started = time.monotonic()
    sweeps = {"limaml_streaming": run.limaml, "counting": run.counting}
    for name in (n for n in SWEPT if n in names):
        for latency in config.latency_sweep:
            same = latency == config.refresh_latency_s
            values = mine[name] if same else sweeps[name](run.policy(latency_s=latency))
            scores.latency[name][latency_label(latency)].append(values)
        frozen = mine.get("limaml_frozen") if name == "limaml_streaming" else None
        scores.latency[name][NEVER_ROW].append(frozen if frozen is not None else sweeps[name](FROZEN))
    if "limaml_streaming" in names:
        for every in config.refresh_sweep:
            same = every == config.refresh_every
            scores.refresh[str(every)].append(mine["limaml_streaming"] if same else
                                              run.limaml(run.policy(every=every)))
    run.seconds["sweeps"] += time.monotonic() - started


def run_evaluation(config: EvalConfig, train: dict[str, Any], tunables: dict[str, Any],
                   baselines: BaselineConfig, progress: bool = False) -> Summary:
    """Run every system over the seeds; write the report into `config.out_dir`; return results."""
    started = time.monotonic()
    trainer = make_trainer(config, train, tunables, baselines, progress)
    scores = Scores()
    seconds: dict[str, float] = defaultdict(float)
    for seed in tqdm(range(config.seeds), desc="seeds", unit="seed", disable=not progress):
        run = SeedRun(trainer, config, seed)
        score_seed(run, scores)
        for name, value in run.seconds.items():
            seconds[name] += value
    scored = time.monotonic()
    settings = {"eval": asdict(config), "train": train, "model": tunables, "baselines": asdict(baselines),
                "seconds_per_system": {name: round(value, 1) for name, value in seconds.items()}}
    results = write_report(config, trainer.experiment, settings, scores, started)
    log.info("scored in %.0f s, summarised in %.0f s; %.0f s in all", scored - started,
             time.monotonic() - scored, time.monotonic() - started)
    return results


def write_report(config: EvalConfig, experiment: Experiment, settings: dict[str, Any], scores: Scores,
                 started: float) -> Summary:
    """report.md, results.json, claims.json, latency.json, refresh.json, settings.json,
    scores.npz and the plots."""
    out_dir = config.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    labels, masks = experiment.labels, experiment.test.bucket_masks()
    bootstrap = MemberBootstrap(experiment.test.member, config.bootstrap_resamples)
    results = summarise(bootstrap, labels, masks, scores.systems)
    claims = check_claims(results)
    sweep_masks = {name: masks[name] for name in CLAIM_BUCKETS}
    latency = {name: summarise(bootstrap, labels, sweep_masks, rows) for name, rows in scores.latency.items()}
    refresh = summarise(bootstrap, labels, sweep_masks, scores.refresh)
    write_json(out_dir / "results.json", summary_json(results))
    write_json(out_dir / "claims.json", [claim.to_json() for claim in claims])
    write_json(out_dir / "latency.json", {name: summary_json(s) for name, s in latency.items()})
    write_json(out_dir / "refresh.json", summary_json(refresh))
    arrays = {f"{name}_seed{i}": values for name, per_seed in scores.systems.items()
              for i, values in enumerate(per_seed)}
    np.savez_compressed(out_dir / "scores.npz", labels=labels, prior=experiment.test.position,
                        member=experiment.test.member, **arrays)  # type: ignore[arg-type]
    title = f"{experiment.log.name}, {config.seeds} seed(s)"
    plot_buckets(results, out_dir / "auc_by_bucket.png", f"AUC and GAUC by prior interactions ({title})")
    sections = [
        "## Pooled AUC by the member's prior interactions\n\n", markdown_table(results),
        "\n## GAUC (per-member AUC) by the member's prior interactions\n\n", markdown_table(results, "gauc"),
        "\n## Log-loss by the member's prior interactions\n\n", markdown_table(results, "log_loss"),
        "\n## Spread over seeds, all events (mean [Student-t 95% interval] (per seed))\n\n",
        seed_table(results),
        "\n![AUC and GAUC by bucket](auc_by_bucket.png)\n",
        "\n## Claims (held when the paired member-bootstrap interval of the difference is above 0)\n\n",
        claims_markdown(claims) if claims else "limaml_streaming was not run.\n"]
    if latency:
        sections += [latency_section(latency, out_dir, title)]
    if refresh:
        sections += ["\n## limaml_streaming against the refresh interval N "
                     f"(L = {latency_label(config.refresh_latency_s)})\n\n",
                     "Pooled AUC:\n\n", markdown_table(refresh, first_header="N", counts=False),
                     "\nGAUC:\n\n", markdown_table(refresh, "gauc", first_header="N", counts=False)]
    drift_ts = drift.drift_times(experiment.spec)
    if drift_ts is not None:
        sections.append(drift.drift_report(experiment, drift_ts, scores.systems, bootstrap, out_dir))
    settings["elapsed_s"] = round(time.monotonic() - started, 1)
    write_json(out_dir / "settings.json", settings)
    (out_dir / "report.md").write_text(header(experiment, config, settings) + "".join(sections))
    log.info("report written to %s", out_dir / "report.md")
    return results


def latency_section(latency: dict[str, Summary], out_dir: Path, title: str) -> str:
    """What a second of freshness is worth: AUC and GAUC against the refresh latency L."""
    rows = list(next(iter(latency.values())))
    columns = [(name, metric, bucket) for name in latency for bucket in ("all", "5-19")
               for metric in ("auc", "gauc")]
    lines = ["| L | " + " | ".join(f"{name} {metric.upper()} {bucket}" for name, metric, bucket in columns) + " |",
             "| --- | " + " | ".join("---:" for _ in columns) + " |"]
    for row in rows:
        lines.append(f"| {row} | " + " | ".join(
            f"{latency[name][row][bucket].interval(metric).value:.4f}" for name, metric, bucket in columns) + " |")
    plot_panels({metric.upper(): (rows, {name: [summary[row]["all"].interval(metric) for row in rows]
                                         for name, summary in latency.items()})
                 for metric in ("auc", "gauc")},
                out_dir / "auc_vs_latency.png", f"AUC and GAUC against the refresh latency L ({title})",
                "all test events, 95% member-bootstrap interval", xlabel="refresh latency L", connect=True)
    return ("\n## What a second of freshness is worth: AUC and GAUC against the refresh latency L\n\n"
            "Each moving member state is usable L seconds after the event that triggered it; "
            "never: no refresh after the split (limaml_frozen); intervals in latency.json.\n\n" + "\n".join(lines) + "\n\n![against L](auc_vs_latency.png)\n")


def header(experiment: Experiment, config: EvalConfig, settings: dict[str, Any]) -> str:
    test = experiment.test
    return (f"# Offline evaluation: {experiment.spec}\n\n"
            f"- {experiment.train_log.n_events} training events before the split "
            f"(ts {test.split_ts}, quantile {config.split_quantile}), {len(test)} test events "
            f"of {np.unique(test.member).size} members, {experiment.labels.mean():.3f} positive\n"
            f"- seeds 0..{config.seeds - 1}; a value is the mean over seeds; 95% intervals are percentile "
            f"intervals of a bootstrap over the test members ({config.bootstrap_resamples} resamples, "
            "the same for every system, so differences are paired)\n"
            f"- moving member states are rebuilt after every N = {config.refresh_every} new events of a "
            f"member and usable L = {latency_label(config.refresh_latency_s)} after the triggering event; "
            f"support sets are the K = {settings['train']['support_size']} most recent visible events\n"
            f"- settings: settings.json; run time {settings['elapsed_s']} s\n\n")
