"""The `limaml` command: a thin layer over the library's run functions.

Only `argparse` and `limaml.layered_config` are imported at the start. Each command's settings
(the sections its options, TOML tables and environment variables come from) and the modules
that declare them are imported when that command is named on the command line, so that
`limaml --help` and a mistyped command do not wait for torch, pandas, Kafka or Faust.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from limaml.layered_config import ConfigError, Section, add_arguments, resolve

log = logging.getLogger("limaml")


# --- the settings of the commands implemented here ---------------------------------------

@dataclass(frozen=True)
class ProfilesConfig:
    dataset: str = "synthetic"  # dataset spec whose member profiles are written, as for train


@dataclass(frozen=True)
class ForgetConfig:
    from_file: str = ""  # more member ids, one per line ("": only those on the command line)
    timeout_s: float = 30.0  # how long to wait for the confirmations


@dataclass(frozen=True)
class ModelsConfig:
    artifacts_dir: Path = Path("artifacts")  # model versions and the ACTIVE pointer, as for train
    activate: str = ""  # a version to make the active model ("": leave the active one as it is)


# --- each command's settings sections, imported when the command is named ----------------

@cache
def kafka_section() -> Section:
    from limaml.stream.topics import KafkaConfig

    return Section.of("kafka", KafkaConfig)


@cache
def feast_section() -> Section:
    from limaml.featurestore.config import SETTINGS, FeatureStoreConfig

    return Section.of("feast", FeatureStoreConfig, SETTINGS)


@cache
def model_section() -> Section:
    from limaml.model_config import MODEL_TUNABLES, ModelConfig

    return Section.of("model", ModelConfig, MODEL_TUNABLES)


@cache
def train_sections() -> tuple[Section, ...]:
    from limaml.train_config import TrainConfig

    return Section.of("train", TrainConfig), model_section()


@cache
def eval_sections() -> tuple[Section, ...]:
    from limaml.evaluation.config import EVAL_TRAIN_FIELDS, BaselineConfig, EvalConfig
    from limaml.train_config import TrainConfig

    return (Section.of("eval", EvalConfig), Section.of("train", TrainConfig, EVAL_TRAIN_FIELDS),
            model_section(), Section.of("baselines", BaselineConfig))


@cache
def ablate_sections() -> tuple[Section, ...]:
    from limaml.evaluation.config import AblationConfig

    return *eval_sections()[:3], Section.of("ablation", AblationConfig)


@cache
def replay_sections() -> tuple[Section, ...]:
    from limaml.adapters.replay import ReplayConfig

    return kafka_section(), Section.of("replay", ReplayConfig)


@cache
def stream_sections() -> tuple[Section, ...]:
    from limaml.stream.config import StreamConfig

    return kafka_section(), Section.of("stream", StreamConfig)


@cache
def adapt_sections() -> tuple[Section, ...]:
    from limaml.stream.config import AdaptConfig

    return kafka_section(), Section.of("adapt", AdaptConfig), feast_section()


@cache
def serve_sections() -> tuple[Section, ...]:
    from limaml.serving.config import ServeConfig

    return kafka_section(), Section.of("serve", ServeConfig), feast_section()


@cache
def profiles_sections() -> tuple[Section, ...]:
    return Section.of("profiles", ProfilesConfig), feast_section()


@cache
def forget_sections() -> tuple[Section, ...]:
    return Section.of("forget", ForgetConfig), kafka_section()


@cache
def models_sections() -> tuple[Section, ...]:
    return (Section.of("models", ModelsConfig),)


@cache
def up_sections() -> tuple[Section, ...]:
    from limaml.deploy.stack import StackConfig

    return (Section.of("up", StackConfig),)


@cache
def demo_sections() -> tuple[Section, ...]:
    from limaml.deploy.stack import DEMO_DEFAULTS
    from limaml.evaluation.config import with_defaults

    return with_defaults(up_sections(), DEMO_DEFAULTS)


def quick(of: tuple[Section, ...], args: argparse.Namespace) -> tuple[Section, ...]:
    """eval's and ablate's sections, with the --quick profile's defaults when it is given."""
    from limaml.evaluation.config import QUICK, with_defaults

    return with_defaults(of, QUICK) if args.quick else of


def emit(result: dict[str, Any]) -> None:
    """A command's result, as JSON on standard output (logs go to standard error)."""
    sys.stdout.write(json.dumps(result, indent=2) + "\n")


def run_train(args: argparse.Namespace) -> int:
    from limaml.adapters.registry import load_dataset
    from limaml.artifacts import FeatureSchema, save_artifact
    from limaml.train import meta_train, training_record
    from limaml.train_config import TrainConfig

    settings = resolve(train_sections(), args.config, args)
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
    from limaml.evaluation.config import BaselineConfig, EvalConfig
    from limaml.evaluation.runner import run_evaluation

    settings = resolve(quick(eval_sections(), args), args.config, args)
    config = EvalConfig(**settings["eval"])
    results = run_evaluation(config, settings["train"], settings["model"],
                             BaselineConfig(**settings["baselines"]), progress=not args.quiet)
    emit({"report": str(config.out_dir / "report.md"),
          **{metric: {system: buckets["all"].interval(metric).value for system, buckets in results.items()}
             for metric in ("auc", "gauc", "log_loss")}})
    return 0


def run_ablate(args: argparse.Namespace) -> int:
    from limaml.evaluation.ablation import run_ablation
    from limaml.evaluation.config import AblationConfig, EvalConfig

    settings = resolve(quick(ablate_sections(), args), args.config, args)
    config = EvalConfig(**settings["eval"])
    results = run_ablation(config, AblationConfig(**settings["ablation"]), settings["train"],
                           settings["model"], progress=not args.quiet)
    emit({"report": str(config.out_dir / "ablation.md"),
          "streaming_auc": {factor: {value: summary["limaml_streaming"]["all"].interval("auc").value
                                     for value, summary in values.items()}
                            for factor, values in results.items()}})
    return 0


def run_replay(args: argparse.Namespace) -> int:
    from limaml.adapters.replay import ReplayConfig, run_replay as replay
    from limaml.stream.topics import KafkaConfig

    settings = resolve(replay_sections(), args.config, args)
    report = replay(KafkaConfig(**settings["kafka"]), ReplayConfig(**settings["replay"]), progress=not args.quiet)
    emit(dataclasses.asdict(report))
    return 0 if report.failed == 0 and not report.interrupted else 1


def run_worker(args: argparse.Namespace) -> int:
    from limaml.featurestore.config import FeatureStoreConfig
    from limaml.stream.config import AdaptConfig, StreamConfig
    from limaml.stream.run import run_adapt_worker, run_stream_worker
    from limaml.stream.topics import KafkaConfig

    kind = args.command
    settings = resolve(COMMANDS[kind].sections(), args.config, args)
    kafka = KafkaConfig(**settings["kafka"])
    if kind == "stream":
        config = StreamConfig(**settings["stream"])
        run_stream_worker(kafka, config, config.worker_id)
    else:
        config = AdaptConfig(**settings["adapt"])
        run_adapt_worker(kafka, config, FeatureStoreConfig(**settings["feast"]), config.worker_id)
    return 0


def run_serve(args: argparse.Namespace) -> int:
    from limaml.featurestore.config import FeatureStoreConfig
    from limaml.serving.config import ServeConfig
    from limaml.serving.run import run_serve as serve
    from limaml.stream.topics import KafkaConfig

    settings = resolve(serve_sections(), args.config, args)
    return serve(KafkaConfig(**settings["kafka"]), ServeConfig(**settings["serve"]),
                 FeatureStoreConfig(**settings["feast"]))


def run_profiles(args: argparse.Namespace) -> int:
    """Write a dataset's member profiles (the meta block's inputs) to the Feast store."""
    from limaml.adapters.registry import load_dataset
    from limaml.featurestore.config import FeatureStoreConfig
    from limaml.featurestore.profiles import write_member_profiles
    from limaml.featurestore.store import online_store_answering, open_feature_store

    settings = resolve(profiles_sections(), args.config, args)
    log_data = load_dataset(ProfilesConfig(**settings["profiles"]).dataset)
    config = FeatureStoreConfig(**settings["feast"] | {
        "profile_fields": ",".join(sorted(log_data.member_features))})
    with online_store_answering(config):
        written = write_member_profiles(open_feature_store(config), log_data)
    emit({"dataset": log_data.name, "profiles": written, "repo_dir": str(config.repo_dir),
          "online_store": config.shown_online_store})
    return 0


def run_forget(args: argparse.Namespace) -> int:
    """Erase members from every store; one line each; 1 when any is not confirmed in time."""
    from limaml.stream.forget import forget_members, members_to_forget
    from limaml.stream.topics import KafkaConfig

    settings = resolve(forget_sections(), args.config, args)
    options = ForgetConfig(**settings["forget"])
    members = members_to_forget(args.member_ids, Path(options.from_file) if options.from_file else None)
    if options.timeout_s <= 0:
        raise ConfigError(f"--timeout-s must be positive, got {options.timeout_s}")
    erasures = forget_members(KafkaConfig(**settings["kafka"]), members, options.timeout_s)
    for erasure in erasures:
        sys.stdout.write(erasure.line(options.timeout_s) + "\n")
    return 0 if all(erasure.seconds is not None for erasure in erasures) else 1


def run_models(args: argparse.Namespace) -> int:
    from limaml.artifacts import active_version, load_artifact, set_active

    options = ModelsConfig(**resolve(models_sections(), args.config, args)["models"])
    root = options.artifacts_dir
    if options.activate:
        set_active(root, options.activate)
    active = active_version(root)
    artifact = load_artifact(root, active)
    versions = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    emit({"active": active, "path": str(artifact.path), "versions": versions,
          "metrics": {k: v for k, v in artifact.metrics.items() if k != "history"}})
    return 0


def run_up(args: argparse.Namespace) -> int:
    """The local stack: until Ctrl-C (up), or until one member is scored (demo)."""
    from limaml.deploy.stack import StackConfig, run_stack

    demo = args.command == "demo"
    settings = resolve(demo_sections() if demo else up_sections(), args.config, args)
    return run_stack(StackConfig(**settings["up"]), demo=demo, config_file=args.config)


# --- the command line ----------------------------------------------------------------------

def progress_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def evaluation_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="fewer seeds, epochs and variants: minutes on two CPU cores")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def forget_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("member_ids", nargs="*", metavar="MEMBER_ID", help="members to forget")


def no_flags(parser: argparse.ArgumentParser) -> None:
    pass


STACK_CONFIG_HELP = ("TOML file with an [up] table; it is also handed to the workers, so its [kafka], "
                     "[stream], [adapt], [serve] tables tune them")
UP_HELP = ("the local stack without Docker: Kafka broker, stream and adaptation workers, scoring service "
           "and a replay, with a live view; Ctrl-C stops it")
DEMO_HELP = ("train a model if none fits, run the local stack on a finite replay, score one member through "
             "the service, stop")


@dataclass(frozen=True)
class Command:
    """One `limaml` command. Its options are `flags`' and those of its settings `sections`,
    which are imported only when the command is named (or every command's parser is built)."""

    help: str
    run: Callable[[argparse.Namespace], int]
    sections: Callable[[], tuple[Section, ...]]
    flags: Callable[[argparse.ArgumentParser], None] = no_flags  # options that are no settings
    config_help: str = ""  # the --config option's help ("": the tables of the sections)
    description: str | None = None  # `limaml COMMAND --help`'s text above the options


COMMANDS: dict[str, Command] = {
    "train": Command("meta-learn a model on an interaction log", run_train, train_sections, progress_flags),
    "eval": Command("offline evaluation: LiMAML refresh policies against baselines", run_eval, eval_sections,
                    evaluation_flags),
    "ablate": Command("LiMAML ablations: inner steps, meta_dim, order, K", run_ablate, ablate_sections,
                      evaluation_flags),
    "replay": Command("stream an interaction log into the interactions topic", run_replay, replay_sections,
                      progress_flags),
    "stream": Command("run a stream worker: validate, keep support sets, trigger", run_worker, stream_sections),
    "adapt": Command("run an adaptation worker: batched inner loop, write embeddings", run_worker,
                     adapt_sections),
    "serve": Command("run the scoring service: POST /v1/score ranks a member's candidates (docs at /docs)",
                     run_serve, serve_sections),
    "profiles": Command("write a dataset's member profiles to Feast", run_profiles, profiles_sections),
    "forget": Command("erase members from every store (support set, online store, compacted embeddings) and "
                      "wait for the confirmations; exit 1 if any is missing", run_forget, forget_sections,
                      forget_flags),
    "models": Command("list model versions; show or set the active one", run_models, models_sections),
    "up": Command(UP_HELP, run_up, up_sections, config_help=STACK_CONFIG_HELP, description=UP_HELP),
    "demo": Command(DEMO_HELP, run_up, demo_sections, config_help=STACK_CONFIG_HELP, description=DEMO_HELP),
}


def sections(command: str) -> tuple[Section, ...]:
    """The settings sections of a command (this imports the modules that declare them)."""
    return COMMANDS[command].sections()


def tables(of: Iterable[Section]) -> str:
    """ "a [x] table", "[x] and [y] tables", "[x], [y] and [z] tables" """
    names = [f"[{section.name}]" for section in of]
    if len(names) == 1:
        return f"a {names[0]} table"
    return f"{', '.join(names[:-1])} and {names[-1]} tables"


def build_parser(commands: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or with only `commands`' options declared (the others'
    settings modules are then not imported: `main` declares only the command it is given)."""
    wanted = set(COMMANDS if commands is None else commands)
    parser = argparse.ArgumentParser(prog="limaml", description=__doc__.partition("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name, command in COMMANDS.items():
        subparser = subparsers.add_parser(name, help=command.help, description=command.description)
        subparser.set_defaults(run=command.run)
        if name in wanted:
            command.flags(subparser)
            settings = command.sections()
            subparser.add_argument("--config", type=Path,
                                   help=command.config_help or f"TOML file with {tables(settings)}")
            add_arguments(subparser, settings)
    return parser


def named_command(argv: Sequence[str]) -> str | None:
    """The command `argv` names: its first word that is no option (limaml's own options take
    no value); None when there is none (`limaml --help`)."""
    return next((word for word in argv if not word.startswith("-")), None)


def expected_error(error: Exception) -> bool:
    """A mistake in the input or the settings: reported in one line, not as a traceback. An
    ArtifactError can only come from limaml.artifacts, so torch is not imported to check."""
    artifacts = sys.modules.get("limaml.artifacts")
    return (isinstance(error, (ConfigError, ValueError, FileNotFoundError))
            or (artifacts is not None and isinstance(error, artifacts.ArtifactError)))


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = named_command(argv)
    args = build_parser([command] if command else []).parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.run(args)
    except Exception as error:
        if not expected_error(error):
            raise
        log.error("%s", error, exc_info=args.verbose)
        return 2


if __name__ == "__main__":
    sys.exit(main())
