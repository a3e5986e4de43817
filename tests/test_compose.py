"""docker-compose.yml and the Dockerfile: valid, and consistent with the native stack.

No Docker engine is needed. The compose file is checked against the Compose Specification
JSON schema (tests/data/compose-spec.json, vendored from compose-go: see
tests/data/README.md), and against the code it deploys: every `limaml` command a container
runs exists, every LIMAML_<SECTION>_<FIELD> variable is an option of that command with the
native default unless the difference is listed below with its reason, ports, health
checks, volumes and paths agree, and the Kafka image is deploy/kafka.sh's release. Where a
`docker compose` binary is installed, `docker compose config` runs too.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from conftest import REPO_ROOT, require_component
from limaml import cli
from limaml.deploy.processes import KAFKA_SH
from limaml.layered_config import Option, Section, parse_value

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
SCHEMA = Path(__file__).resolve().parent / "data" / "compose-spec.json"
PROFILES = ("gpu", "demo")

# Settings that differ from the native defaults on purpose, and why. Anything else set in
# the compose file must equal the default of `limaml <command> --help`. Paths (options
# named *_dir) may differ too, but must lie on a volume the container mounts.
DEPLOYMENT_VALUES = {
    "LIMAML_KAFKA_BOOTSTRAP": ("kafka:19092", "the broker's listener on the compose network"),
    "LIMAML_FEAST_ONLINE_STORE": ("redis://redis:6379/0", "the redis service, not a SQLite file"),
    "LIMAML_STREAM_WEB_BIND": ("0.0.0.0", "reachable through the published port"),
    "LIMAML_ADAPT_WEB_BIND": ("0.0.0.0", "reachable through the published port"),
    "LIMAML_SERVE_HOST": ("0.0.0.0", "reachable through the published port"),
    "LIMAML_REPLAY_RATE": ("200", "the demo paces the replay; the native default is unpaced"),
}
SERVICE_VALUES = {  # values that only one service sets
    ("adapt-gpu", "LIMAML_ADAPT_DEVICE"): ("cuda", "fail loudly rather than adapt on the CPU"),
}
# Each long-running limaml service: the option that names its HTTP port and the path its
# health check reads.
WEB_SERVICES = {
    "stream": ("LIMAML_STREAM_WEB_PORT", "/metrics"),
    "adapt": ("LIMAML_ADAPT_WEB_PORT", "/metrics"),
    "adapt-gpu": ("LIMAML_ADAPT_WEB_PORT", "/metrics"),
    "serve": ("LIMAML_SERVE_PORT", "/healthz"),
}
INTERPOLATION = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")
GO_DURATION = re.compile(r"^(0|([0-9]+(\.[0-9]*)?|\.[0-9]+)(ns|us|µs|ms|s|m|h))+$")
OPTION_HELP = re.compile(r"\(default: (.*); env (LIMAML_\w+)\)$", re.DOTALL)


# --- helpers ------------------------------------------------------------------------------

@cache
def compose() -> dict[str, Any]:
    """The compose file as YAML data (anchors and `<<` merge keys resolved)."""
    return yaml.safe_load(COMPOSE_FILE.read_text())


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def interpolate(value: str) -> str:
    """`${VAR:-default}` replaced by its default, as compose does with VAR unset."""
    return INTERPOLATION.sub(lambda m: m.group(2) or "", value)


def is_limaml_image(service: dict[str, Any]) -> bool:
    return str(service.get("image", "")).startswith("limaml:")


def limaml_services() -> dict[str, dict[str, Any]]:
    return {name: s for name, s in services().items() if is_limaml_image(s)}


def command_text(service: dict[str, Any]) -> str:
    command = service.get("command", "")
    return command if isinstance(command, str) else shlex.join(map(str, command))


def limaml_commands(service: dict[str, Any]) -> list[str]:
    """The `limaml` subcommands a service's command runs (several in a shell script)."""
    return re.findall(r"(?:^|[\s;&|(])'?limaml'? +([a-z][a-z-]*)", command_text(service))


@cache
def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    (action,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def command_options(command: str) -> dict[str, str]:
    """{LIMAML_* variable: its default as `--help` shows it} of one `limaml` subcommand."""
    if command not in subcommands():  # `serve` comes with limaml/serving (issue 5): expected
        pytest.fail(f"`limaml {command}` is not a command of limaml/cli.py "
                    f"(commands: {sorted(subcommands())})")
    options = {}
    for action in subcommands()[command]._actions:
        match = OPTION_HELP.search(action.help or "")
        if match:
            options[match.group(2)] = match.group(1)
    return options


@cache
def options_by_env() -> dict[str, Option]:
    """Every option of the CLI's settings sections, by its environment variable."""
    found: dict[str, Option] = {}

    def visit(value: Any) -> None:
        if isinstance(value, Section):
            for option in value.options:
                found[f"LIMAML_{value.name}_{option.name}".upper()] = option
        elif isinstance(value, (tuple, list)):
            for item in value:
                visit(item)
        elif isinstance(value, dict):
            for item in value.values():
                visit(item)

    visit({command: cli.sections(command) for command in cli.COMMANDS})
    return found


def section_names() -> set[str]:
    return {name.split("_")[1] for name in options_by_env()}


def env_of(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return {str(k): str(v) for k, v in environment.items()}


def service_options(service: dict[str, Any]) -> dict[str, str]:
    """{LIMAML_* variable: native default} for all the limaml commands a service runs."""
    options: dict[str, str] = {}
    for command in limaml_commands(service):
        options.update(command_options(command))
    return options


def setting(name: str, service_name: str) -> str:
    """The value a service's command sees for a LIMAML_* variable: its env, or the default."""
    service = services()[service_name]
    value = env_of(service).get(name)
    return value if value is not None else service_options(service)[name]


def volume_targets(service: dict[str, Any]) -> dict[str, str]:
    """{container path: named volume} of a service's short-syntax volume mounts."""
    targets = {}
    for mount in service.get("volumes", []):
        source, target = str(mount).split(":")[:2]
        targets[target] = source
    return targets


def published_ports(service: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(host ip, host port, container port) of each short-syntax port mapping."""
    ports = []
    for mapping in service.get("ports", []):
        parts = interpolate(str(mapping)).rsplit(":", 2)
        host_ip, published, target = ["0.0.0.0", *parts] if len(parts) == 2 else parts
        ports.append((host_ip or "0.0.0.0", int(published), int(target)))
    return ports


def healthcheck_text(service: dict[str, Any]) -> str:
    test = service["healthcheck"]["test"]
    return test if isinstance(test, str) else " ".join(map(str, test))


def docker_compose_available() -> bool:
    if shutil.which("docker") is None:
        return False
    result = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True,
                            timeout=60, check=False)
    return result.returncode == 0


# --- the Compose Specification --------------------------------------------------------------

def compose_validator() -> jsonschema.Validator:
    schema = json.loads(SCHEMA.read_text())
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    return validator_class(schema)


def test_compose_file_matches_the_compose_specification() -> None:
    errors = sorted(compose_validator().iter_errors(compose()), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def test_the_schema_rejects_what_compose_rejects() -> None:
    """The vendored schema is really applied: typos and wrong types fail."""
    validator = compose_validator()
    assert validator.is_valid({"services": {"a": {"image": "redis:7"}}})
    assert not validator.is_valid({"services": {"a": {"image": "redis:7", "helthcheck": {}}}})
    assert not validator.is_valid({"services": {"a": {"image": "redis:7", "ports": 6379}}})
    assert not validator.is_valid({"services": {"a": {"depends_on": {"b": {"condition": "done"}}}}})
    assert not validator.is_valid({"servces": {}})


def test_durations_parse_as_go_durations() -> None:
    """compose parses these with Go's time.ParseDuration, after the schema check."""
    for name, service in services().items():
        for key in ("interval", "timeout", "start_period", "start_interval"):
            value = service.get("healthcheck", {}).get(key)
            assert value is None or GO_DURATION.match(str(value)), (name, key, value)
        value = service.get("stop_grace_period")
        assert value is None or GO_DURATION.match(str(value)), (name, "stop_grace_period", value)


@pytest.mark.parametrize("profiles", [(), PROFILES], ids=["default", "all-profiles"])
def test_docker_compose_config(profiles: tuple[str, ...], tmp_path: Path) -> None:
    """The real parser (no engine needed for `config`); `make test` builds it when missing."""
    require_component("docker compose", docker_compose_available(), "run `bash deploy/compose.sh install`")
    args = ["docker", "compose", "--project-directory", str(REPO_ROOT), "-f", str(COMPOSE_FILE)]
    for profile in profiles:
        args += ["--profile", profile]
    env = {k: v for k, v in os.environ.items()  # the file's own defaults, not this shell's
           if not k.startswith(("LIMAML_", "COMPOSE_", "PUBLISH_ADDR", "DOCKER_HOST"))}
    result = subprocess.run([*args, "config", "--format", "json"], capture_output=True, text=True,
                            timeout=120, check=False, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)
    expected = {name for name, s in services().items() if not set(s.get("profiles", [])) - set(profiles)}
    assert set(resolved["services"]) == expected
    assert resolved["services"]["kafka"]["ports"][0]["host_ip"] == "127.0.0.1"


# --- Kafka: the same broker as deploy/kafka.sh ----------------------------------------------

def test_kafka_matches_kafka_sh() -> None:
    kafka = services()["kafka"]
    script_version = re.search(r'KAFKA_VERSION="\$\{LIMAML_KAFKA_VERSION:-([0-9.]+)\}"', KAFKA_SH.read_text())
    assert script_version is not None
    assert kafka["image"] == f"apache/kafka:{script_version.group(1)}"
    assert ("127.0.0.1", 9092, 9092) in published_ports(kafka)
    env = kafka["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert str(env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"]) == "1"
    assert "kafka-broker-api-versions.sh" in healthcheck_text(kafka)
    # The containers' bootstrap address is the broker's advertised in-network listener.
    bootstrap = DEPLOYMENT_VALUES["LIMAML_KAFKA_BOOTSTRAP"][0]
    assert f"PLAINTEXT://{bootstrap}" in env["KAFKA_ADVERTISED_LISTENERS"].split(",")


def test_redis_is_the_online_store() -> None:
    redis = services()["redis"]
    assert redis["image"].startswith("redis:7")
    assert "redis-cli ping" in healthcheck_text(redis).replace("CMD ", "")
    assert ("127.0.0.1", 6379, 6379) in published_ports(redis)
    assert "/data" in volume_targets(redis)
    assert DEPLOYMENT_VALUES["LIMAML_FEAST_ONLINE_STORE"][0].startswith("redis://redis:6379/")


# --- the limaml containers and the CLI --------------------------------------------------------

def test_every_command_is_a_limaml_command() -> None:
    expected = {"init": ["models", "train", "profiles"], "stream": ["stream"], "adapt": ["adapt"],
                "adapt-gpu": ["adapt"], "serve": ["serve"], "replay": ["replay"], "feature-server": []}
    assert {name: limaml_commands(s) for name, s in limaml_services().items()} == expected
    for name, service in limaml_services().items():
        for command in limaml_commands(service):
            assert command in subcommands(), f"{name}: `limaml {command}` is not a limaml command"
    # --worker-id and --quiet are command-line flags of those commands, not settings.
    for name, service in limaml_services().items():
        for flag in re.findall(r"(?<!\S)--[a-z-]+", command_text(service)):
            commands = limaml_commands(service)
            known = {opt for c in commands for a in subcommands()[c]._actions for opt in a.option_strings}
            if commands:
                assert flag in known, f"{name}: {flag} is no option of limaml {'/'.join(commands)}"


def test_every_limaml_variable_is_an_option_of_the_containers_command() -> None:
    for name, service in limaml_services().items():
        options = service_options(service)
        for variable in env_of(service):
            assert variable.startswith("LIMAML_"), f"{name}: {variable} is not a LIMAML_* setting"
            assert variable in options, (f"{name}: {variable} is no option of limaml "
                                         f"{'/'.join(limaml_commands(service))}")
    # Variables shaped like options anywhere in the file (interpolations too) are real ones.
    sections = "|".join(sorted(section_names()))
    for variable in set(re.findall(rf"\bLIMAML_(?:{sections.upper()})_\w+", COMPOSE_FILE.read_text())):
        assert variable in options_by_env(), f"{variable} is no limaml option"


def test_settings_are_the_native_defaults_except_the_deployment_ones() -> None:
    for name, service in limaml_services().items():
        options = service_options(service)
        for variable, value in env_of(service).items():
            option = options_by_env()[variable]
            expected = SERVICE_VALUES.get((name, variable)) or DEPLOYMENT_VALUES.get(variable)
            if expected is not None:
                assert value == expected[0], f"{name}: {variable}={value}, expected {expected[0]}"
            elif option.name.endswith("_dir"):
                mounted = [target for target in volume_targets(service)
                           if value == target or value.startswith(target.rstrip("/") + "/")]
                assert value.startswith("/") and mounted, f"{name}: {variable}={value} is on no volume"
            else:
                default = parse_value(option, options[variable], "--help")
                assert parse_value(option, value, variable) == default, (
                    f"{name}: {variable}={value} differs from the native default {options[variable]}; "
                    "add it to DEPLOYMENT_VALUES with a reason if that is intended")


def test_services_share_one_model_store_and_one_feast_repo() -> None:
    artifact_dirs = {setting(v, n) for n, s in limaml_services().items()
                     for v in service_options(s) if v.endswith("_ARTIFACTS_DIR")}
    assert len(artifact_dirs) == 1, artifact_dirs
    (artifacts,) = artifact_dirs
    repo_dirs = {setting("LIMAML_FEAST_REPO_DIR", n) for n, s in limaml_services().items()
                 if "LIMAML_FEAST_REPO_DIR" in service_options(s)}
    assert len(repo_dirs) == 1, repo_dirs
    (repo,) = repo_dirs
    for name in ("init", "adapt", "adapt-gpu", "serve"):
        assert volume_targets(services()[name]).get(artifacts) == "artifacts", name
    for name in ("init", "adapt", "adapt-gpu", "serve", "feature-server"):
        assert volume_targets(services()[name]).get(repo) == "feast-repo", name
    stream_dir = setting("LIMAML_STREAM_DATA_DIR", "stream")
    assert volume_targets(services()["stream"]).get(stream_dir) == "stream-state"
    # The feature server runs in the repo that `limaml profiles` rendered and applied.
    feature_server = services()["feature-server"]["command"]
    assert feature_server[:4] == ["feast", "--chdir", repo, "serve"]
    assert feature_server[feature_server.index("--host") + 1] == "0.0.0.0"


def test_init_trains_only_without_an_active_model() -> None:
    init = services()["init"]
    assert init["restart"] == "no"
    script = init["command"][-1].replace("$$", "$")  # compose's escape of a literal $
    assert init["command"][:2] == ["sh", "-ec"]
    result = subprocess.run(["sh", "-n", "-c", script], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    # `limaml models` exits non-zero when no version is ACTIVE: that gates the training.
    assert re.search(r"if limaml models --artifacts-dir \"\$LIMAML_TRAIN_ARTIFACTS_DIR\"", script)
    assert script.index("limaml models") < script.index("limaml train") < script.index("limaml profiles")
    assert '--dataset "$LIMAML_TRAIN_DATASET"' in script
    assert setting("LIMAML_TRAIN_DATASET", "init") == setting("LIMAML_REPLAY_DATASET", "replay")


def test_web_ports_health_checks_and_binds() -> None:
    for name, (port_option, path) in WEB_SERVICES.items():
        service = services()[name]
        port = int(setting(port_option, name))
        assert [target for _, _, target in published_ports(service)] == [port], name
        assert all(host_ip == "127.0.0.1" for host_ip, _, _ in published_ports(service)), name
        assert f"http://127.0.0.1:{port}{path}" in healthcheck_text(service), name
    assert int(setting("LIMAML_SERVE_PORT", "serve")) == 8000  # ServeConfig's default
    assert int(setting("LIMAML_STREAM_WEB_PORT", "stream")) == 6066
    assert int(setting("LIMAML_ADAPT_WEB_PORT", "adapt")) == 6067
    feast = services()["feature-server"]
    assert published_ports(feast) == [("127.0.0.1", 6566, 6566)]
    assert "http://127.0.0.1:6566/health" in healthcheck_text(feast)
    host_ports = [p for s in services().values() for _, p, _ in published_ports(s)]
    assert len(host_ports) == len(set(host_ports)), "two services publish one host port"


def test_serve_health_check_path_is_a_route() -> None:
    from limaml.serving.ops import router

    assert WEB_SERVICES["serve"][1] in {route.path for route in router.routes}


def test_long_running_services_are_restarted_after_a_crash() -> None:
    """As `limaml up` does: a crashed worker comes back; only the one-shot jobs run once."""
    one_shot = {"init", "replay"}
    for name, service in services().items():
        expected = "no" if name in one_shot else "unless-stopped"
        assert service.get("restart", "no") == expected, f"{name}: restart {service.get('restart')!r}"
        if name not in one_shot:
            assert "healthcheck" in service, f"{name} has no health check"


def test_dependencies_wait_for_health_and_for_init() -> None:
    for name, service in services().items():
        if service.get("restart", "no") != "no" or name == "kafka":
            assert "healthcheck" in service, f"{name} has no health check"
        for target, condition in (service.get("depends_on") or {}).items():
            assert target in services(), (name, target)
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in services()[target], (name, target)
            if condition["condition"] == "service_completed_successfully":
                assert services()[target].get("restart") == "no", (name, target)
    for name, service in limaml_services().items():
        env, depends = env_of(service), service.get("depends_on") or {}
        if "LIMAML_KAFKA_BOOTSTRAP" in env:
            assert depends.get("kafka") == {"condition": "service_healthy"}, name
        if env.get("LIMAML_FEAST_ONLINE_STORE", "").startswith("redis://") or name == "feature-server":
            assert depends.get("redis") == {"condition": "service_healthy"}, name
        if name in ("adapt", "adapt-gpu", "serve", "feature-server"):
            assert depends.get("init") == {"condition": "service_completed_successfully"}, name


def test_profiles_gpu_and_demo() -> None:
    assert {name: s.get("profiles") for name, s in services().items() if s.get("profiles")} == {
        "adapt-gpu": ["gpu"], "replay": ["demo"]}
    cpu, gpu = services()["adapt"], services()["adapt-gpu"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert gpu["build"]["args"]["TORCH_VARIANT"] == "cuda"
    assert cpu["build"]["args"]["TORCH_VARIANT"] == "cpu"
    assert gpu["image"] != cpu["image"]
    assert env_of(gpu) == env_of(cpu) | {"LIMAML_ADAPT_DEVICE": "cuda"}
    assert gpu["command"] == cpu["command"]


def test_one_image_for_every_limaml_service() -> None:
    images = {s["image"] for s in limaml_services().values()}
    assert images == {"limaml:${LIMAML_IMAGE_TAG:-latest}", "limaml:${LIMAML_IMAGE_TAG:-latest}-cuda"}
    for name, service in limaml_services().items():
        assert service["build"]["context"] == ".", name
        assert service.get("init") is True, name  # tini forwards SIGTERM for graceful stops


# --- the Dockerfile -------------------------------------------------------------------------

def test_dockerfile_installs_every_package_and_runs_unprivileged() -> None:
    text = DOCKERFILE.read_text()
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    package_dirs = {d.split("/")[0] for d in project["tool"]["setuptools"]["package-dir"].values()}
    copied = set(re.findall(r"^COPY (\S+) \./\S+$", text, re.MULTILINE))
    assert package_dirs <= copied, f"not copied into the image: {package_dirs - copied}"
    ignored = {line.strip().rstrip("/") for line in DOCKERIGNORE.read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert not (package_dirs | {"pyproject.toml", "README.md"}) & ignored
    assert {".venv", ".git", ".cache", "artifacts", "datasets"} <= ignored
    assert re.search(r"^FROM python:\$\{PYTHON_VERSION\}-slim AS runtime$", text, re.MULTILINE)
    assert re.search(r"^ARG PYTHON_VERSION=3\.11$", text, re.MULTILINE)
    assert re.search(r"^USER limaml", text, re.MULTILINE)
    runtime = text[text.index("AS runtime"):]  # a C++ compiler for the compiled inner loop (Inductor)
    assert re.search(r"apt-get install -y --no-install-recommends g\+\+", runtime)
    assert "https://download.pytorch.org/whl/cpu" in text
    for variant in ("cpu", "cuda"):
        assert re.search(rf"^\s+{variant}\)", text, re.MULTILINE), variant
    # The volumes' mount points exist in the image, owned by the unprivileged user.
    for target in {t for s in limaml_services().values() for t in volume_targets(s)}:
        assert target in text, f"{target} is not created in the image"
