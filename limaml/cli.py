"""The `limaml` command: a thin layer over the library's run functions."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from limaml.adapters import replay
from limaml.artifacts import ArtifactError, active_version, load_artifact, save_artifact, set_active
from limaml.config import MODEL_TUNABLES, ModelConfig
from limaml.deploy.stack import DEMO_DEFAULTS, StackConfig
from limaml.evaluation.config import (EVAL_TRAIN_FIELDS, QUICK, AblationConfig,
                                      BaselineConfig, EvalConfig, with_defaults)
from limaml.featurestore.config import SETTINGS, FeatureStoreConfig
from limaml.serving.config import ServeConfig
from limaml.settings import ConfigError, Section, add_arguments, resolve
from limaml.stream.config import AdaptConfig, StreamConfig
from limaml.stream.topics import KafkaConfig
from limaml.train import TrainConfig

log = logging.getLogger("limaml")

TRAIN_SECTIONS = (Section.of("train", TrainConfig), Section.of("model", ModelConfig, MODEL_TUNABLES))
REPLAY_SECTIONS = (Section.of("kafka", KafkaConfig), Section.of("replay", replay.ReplayConfig))
FEAST_SECTION = Section.of("feast", FeatureStoreConfig, SETTINGS)
PROFILE_SECTIONS = (FEAST_SECTION,)
WORKER_SECTIONS = {"stream": (Section.of("kafka", KafkaConfig), Section.of("stream", StreamConfig)),
                   "adapt": (Section.of("kafka", KafkaConfig), Section.of("adapt", AdaptConfig), FEAST_SECTION)}
FORGET_SECTIONS = (Section.of("kafka", KafkaConfig),)
SERVE_SECTIONS = (Section.of("kafka", KafkaConfig), Section.of("serve", ServeConfig), FEAST_SECTION)
EVAL_SECTIONS = (Section.of("eval", EvalConfig), Section.of("train", TrainConfig, EVAL_TRAIN_FIELDS),
                 Section.of("model", ModelConfig, MODEL_TUNABLES), Section.of("baselines", BaselineConfig))
ABLATE_SECTIONS = (*EVAL_SECTIONS[:3], Section.of("ablation", AblationConfig))
UP_SECTIONS = (Section.of("up", StackConfig),)
DEMO_SECTIONS = with_defaults(UP_SECTIONS, DEMO_DEFAULTS)


def emit(result: dict[str, Any]) -> None:
    """A command's result, as JSON on standard output (logs go to standard error)."""
    sys.stdout.write(json.dumps(result, indent=2) + "\n")


def run_train(args: argparse.Namespace) -> int:
    from limaml.adapters.registry import load_dataset
    from limaml.artifacts import FeatureSchema
    from limaml.train import meta_train, training_record

    settings = resolve(TRAIN_SECTIONS, args.config, args)
    config = TrainConfig(**settings["train"])
    log_data = load_dataset(config.dataset)
    log.info("dataset %s: %d events, %d members, %d items", log_data.name, log_data.n_events,
             len(log_data.members) - 1, len(log_data.items) - 1)
    model, metrics = meta_train(log_data, config, settings["model"], progress=not args.quiet)
    version = save_artifact(config.artifacts_dir, model, FeatureSchema.from_log(log_data), metrics,
                            training_record(config, log_data), activate=config.activate)
    summary = {k: v for k, v in metrics.items() if k != "history"}
    emit({"version": version, "artifacts_dir": str(config.artifacts_dir), **summary})
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from limaml.evaluation.runner import run_evaluation

    settings = resolve(with_defaults(EVAL_SECTIONS, QUICK) if args.quick else EVAL_SECTIONS, args.config, args)
    config = EvalConfig(**settings["eval"])
    results = run_evaluation(config, settings["train"], settings["model"],
                             BaselineConfig(**settings["baselines"]), progress=not args.quiet)
    emit({"report": str(config.out_dir / "report.md"),
          **{metric: {system: buckets["all"].interval(metric).value for system, buckets in results.items()}
             for metric in ("auc", "gauc", "log_loss")}})
    return 0


def run_ablate(args: argparse.Namespace) -> int:
    from limaml.evaluation.ablation import run_ablation

    settings = resolve(with_defaults(ABLATE_SECTIONS, QUICK) if args.quick else ABLATE_SECTIONS, args.config,
                       args)
    config = EvalConfig(**settings["eval"])
    results = run_ablation(config, AblationConfig(**settings["ablation"]), settings["train"],
                           settings["model"], progress=not args.quiet)
    emit({"report": str(config.out_dir / "ablation.md"),
          "streaming_auc": {factor: {value: summary["limaml_streaming"]["all"].interval("auc").value
                                     for value, summary in values.items()}
                            for factor, values in results.items()}})
    return 0


def run_replay(args: argparse.Namespace) -> int:
    settings = resolve(REPLAY_SECTIONS, args.config, args)
    report = replay.run_replay(KafkaConfig(**settings["kafka"]), replay.ReplayConfig(**settings["replay"]),
                               progress=not args.quiet)
    emit(dataclasses.asdict(report))
    return 0 if report.failed == 0 and not report.interrupted else 1


def run_worker(args: argparse.Namespace) -> int:
    from limaml.stream.run import run_adapt_worker, run_stream_worker

    kind = args.command
    settings = resolve(WORKER_SECTIONS[kind], args.config, args)
    kafka = KafkaConfig(**settings["kafka"])
    if kind == "stream":
        run_stream_worker(kafka, StreamConfig(**settings["stream"]), args.worker_id)
    else:
        run_adapt_worker(kafka, AdaptConfig(**settings["adapt"]),
                         FeatureStoreConfig(**settings["feast"]), args.worker_id)
    return 0


def run_serve(args: argparse.Namespace) -> int:
    from limaml.serving.run import run_serve as serve

    settings = resolve(SERVE_SECTIONS, args.config, args)
    return serve(KafkaConfig(**settings["kafka"]), ServeConfig(**settings["serve"]),
                 FeatureStoreConfig(**settings["feast"]))


def run_profiles(args: argparse.Namespace) -> int:
    """Write a dataset's member profiles (the meta block's inputs) to the Feast store."""
    from limaml.adapters.registry import load_dataset
    from limaml.featurestore.profiles import write_member_profiles
    from limaml.featurestore.store import open_feature_store

    settings = resolve(PROFILE_SECTIONS, args.config, args)
    log_data = load_dataset(args.dataset)
    config = FeatureStoreConfig(**settings["feast"] | {
        "profile_fields": ",".join(sorted(log_data.member_features))})
    written = write_member_profiles(open_feature_store(config), log_data)
    emit({"dataset": log_data.name, "profiles": written, "repo_dir": str(config.repo_dir),
          "online_store": config.shown_online_store})
    return 0


def run_forget(args: argparse.Namespace) -> int:
    """Erase members from every store; one line each; 1 when any is not confirmed in time."""
    from limaml.stream.forget import forget_members, members_to_forget

    members = members_to_forget(args.member_ids, args.from_file)
    if args.timeout_s <= 0:
        raise ConfigError(f"--timeout-s must be positive, got {args.timeout_s}")
    settings = resolve(FORGET_SECTIONS, args.config, args)
    erasures = forget_members(KafkaConfig(**settings["kafka"]), members, args.timeout_s)
    for erasure in erasures:
        sys.stdout.write(erasure.line(args.timeout_s) + "\n")
    return 0 if all(erasure.seconds is not None for erasure in erasures) else 1


def run_models(args: argparse.Namespace) -> int:
    root: Path = args.artifacts_dir
    if args.activate:
        set_active(root, args.activate)
    active = active_version(root)
    artifact = load_artifact(root, active)
    versions = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    emit({"active": active, "path": str(artifact.path), "versions": versions,
          "metrics": {k: v for k, v in artifact.metrics.items() if k != "history"}})
    return 0


def run_up(args: argparse.Namespace) -> int:
    """The local stack: until Ctrl-C (up), or until one member is scored (demo)."""
    from limaml.deploy.stack import run_stack

    demo = args.command == "demo"
    settings = resolve(DEMO_SECTIONS if demo else UP_SECTIONS, args.config, args)
    return run_stack(StackConfig(**settings["up"]), demo=demo, config_file=args.config)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="limaml", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="meta-learn a model on an interaction log")
    train.add_argument("--config", type=Path, help="TOML file with [train] and [model] tables")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    add_arguments(train, TRAIN_SECTIONS)
    train.set_defaults(run=run_train)

    for name, sections, run, text in (
            ("eval", EVAL_SECTIONS, run_eval, "offline evaluation: LiMAML refresh policies against baselines"),
            ("ablate", ABLATE_SECTIONS, run_ablate, "LiMAML ablations: inner steps, meta_dim, order, K")):
        command = commands.add_parser(name, help=text)
        command.add_argument("--config", type=Path,
                             help="TOML file with " + ", ".join(f"[{s.name}]" for s in sections) + " tables")
        command.add_argument("--quick", action="store_true",
                             help="fewer seeds, epochs and variants: minutes on two CPU cores")
        command.add_argument("--quiet", action="store_true", help="no progress bars")
        add_arguments(command, sections)
        command.set_defaults(run=run)

    replay_log = commands.add_parser("replay", help="stream an interaction log into the interactions topic")
    replay_log.add_argument("--config", type=Path, help="TOML file with a [replay] table")
    replay_log.add_argument("--quiet", action="store_true", help="no progress bar")
    add_arguments(replay_log, REPLAY_SECTIONS)
    replay_log.set_defaults(run=run_replay)

    for kind, text in (("stream", "run a stream worker: validate, keep support sets, trigger"),
                       ("adapt", "run an adaptation worker: batched inner loop, write embeddings")):
        worker = commands.add_parser(kind, help=text)
        worker.add_argument("--config", type=Path, help="TOML file with [kafka] and [%s] tables" % kind)
        worker.add_argument("--worker-id", default="0", help="names this worker's state directory")
        add_arguments(worker, WORKER_SECTIONS[kind])
        worker.set_defaults(run=run_worker)

    serve = commands.add_parser("serve", help="run the scoring service: POST /v1/score ranks a member's "
                                              "candidates (docs at /docs)")
    serve.add_argument("--config", type=Path, help="TOML file with [kafka], [serve] and [feast] tables")
    add_arguments(serve, SERVE_SECTIONS)
    serve.set_defaults(run=run_serve)

    profiles = commands.add_parser("profiles", help="write a dataset's member profiles to Feast")
    profiles.add_argument("--dataset", default="synthetic", help="dataset spec, as for train")
    profiles.add_argument("--config", type=Path, help="TOML file with a [feast] table")
    add_arguments(profiles, PROFILE_SECTIONS)
    profiles.set_defaults(run=run_profiles)

    forget = commands.add_parser(
        "forget", help="erase members from every store (support set, online store, compacted "
                       "embeddings) and wait for the confirmations; exit 1 if any is missing")
    forget.add_argument("member_ids", nargs="*", metavar="MEMBER_ID", help="members to forget")
    forget.add_argument("--from-file", type=Path, help="more member ids, one per line")
    forget.add_argument("--timeout-s", type=float, default=30.0,
                        help="how long to wait for the confirmations (default: 30)")
    forget.add_argument("--config", type=Path, help="TOML file with a [kafka] table")
    add_arguments(forget, FORGET_SECTIONS)
    forget.set_defaults(run=run_forget)

    models = commands.add_parser("models", help="list model versions; show or set the active one")
    models.add_argument("--artifacts-dir", type=Path, default=Path("artifacts"))
    models.add_argument("--activate", metavar="VERSION", help="make VERSION the active model")
    models.set_defaults(run=run_models)

    for name, sections, text in (
            ("up", UP_SECTIONS, "the local stack without Docker: Kafka broker, stream and adaptation "
                                "workers, scoring service and a replay, with a live view; Ctrl-C stops it"),
            ("demo", DEMO_SECTIONS, "train a model if none fits, run the local stack on a finite replay, "
                                    "score one member through the service, stop")):
        stack = commands.add_parser(name, help=text, description=text)
        stack.add_argument("--config", type=Path, help="TOML file with an [up] table; it is also handed to "
                           "the workers, so its [kafka], [stream], [adapt], [serve] tables tune them")
        add_arguments(stack, sections)
        stack.set_defaults(run=run_up)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.run(args)
    except (ConfigError, ArtifactError, ValueError, FileNotFoundError) as error:
        log.error("%s", error, exc_info=args.verbose)
        return 2


if __name__ == "__main__":
    sys.exit(main())
