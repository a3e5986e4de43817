"""The `limaml` command end to end, and configuration precedence."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from limaml.adapters.registry import load_dataset
from limaml.adapters.tabular import write_table
from limaml.artifacts import active_version, load_artifact
from limaml.cli import build_parser, main, sections
from limaml.featurestore.profiles import read_member_profiles
from limaml.featurestore.config import FeatureStoreConfig
from limaml.featurestore.store import open_feature_store
from limaml.layered_config import ConfigError, resolve

LIMAML = Path(sys.executable).parent / "limaml"
TRAIN_SECTIONS = sections("train")


def test_train_on_a_movielens_slice_writes_an_active_artifact(ml100k_dir: Path, tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    result = subprocess.run(
        [str(LIMAML), "train", "--dataset", f"movielens:{ml100k_dir}", "--artifacts-dir", str(artifacts),
         "--max-events", "20000", "--epochs", "2", "--meta-dim", "16", "--quiet"],
        capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["version"] == active_version(artifacts)
    assert summary["train_events"] < 20000 and 0.5 < summary["valid_auc_adapted"] < 1.0
    artifact = load_artifact(artifacts)
    assert artifact.model.config.meta_dim == 16
    assert artifact.training["dataset"] == f"movielens:{ml100k_dir}"
    assert len(artifact.schema.items) == 1683  # 1,682 movies and the OOV slot


def test_models_command_lists_and_activates_versions(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    for _ in range(2):
        assert main(["train", "--dataset", "synthetic:n_members=60,n_items=30,seed=1", "--epochs", "1",
                     "--artifacts-dir", str(tmp_path), "--quiet"]) == 0
    capsys.readouterr()
    versions = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert main(["models", "--artifacts-dir", str(tmp_path), "--activate", versions[0]]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["active"] == versions[0] and listing["versions"] == versions
    # Its options come from a TOML file and the environment too, as every command's do.
    config_file = tmp_path.parent / f"{tmp_path.name}.toml"
    config_file.write_text(f"[models]\nartifacts_dir = '{tmp_path}'\nactivate = '{versions[0]}'\n")
    monkeypatch.setenv("LIMAML_MODELS_ACTIVATE", versions[1])
    assert main(["models", "--config", str(config_file)]) == 0
    assert json.loads(capsys.readouterr().out)["active"] == versions[1]


def test_bad_input_fails_with_a_message_not_a_traceback(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert main(["train", "--dataset", "nonsense", "--artifacts-dir", str(tmp_path)]) == 2
    assert "accepted forms" in caplog.text
    assert main(["train", "--dataset", f"movielens:{tmp_path / 'missing'}"]) == 2
    assert main(["train", "--epochs", "many"]) == 2
    assert "invalid value 'many' for 'epochs'" in caplog.text


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["train", *argv])


def test_precedence_is_defaults_then_file_then_environment_then_command_line(tmp_path: Path) -> None:
    """Each option is set in a different set of layers, each layer to its own value, so
    swapping any two layers changes some option's result."""
    config_file = tmp_path / "limaml.toml"
    config_file.write_text("[train]\nepochs = 3\nseed = 5\nsupport_size = 16\nmembers_per_batch = 30\n"
                           "[model]\nmeta_dim = 12\nglobal_hidden = [64, 32]\n")
    environ = {"LIMAML_TRAIN_SEED": "6", "LIMAML_TRAIN_MEMBERS_PER_BATCH": "40",
               "LIMAML_TRAIN_QUERY_SIZE": "8", "LIMAML_MODEL_FIRST_ORDER": "true"}
    cli = parse("--members-per-batch", "50", "--support-size", "24", "--query-size", "9", "--inner-steps", "2")
    settings = resolve(TRAIN_SECTIONS, config_file, cli, environ)
    assert settings["train"]["outer_lr"] == 1e-3  # default only
    assert settings["train"]["artifacts_dir"] == Path("artifacts")
    assert settings["train"]["epochs"] == 3  # file beats default
    assert settings["model"]["meta_dim"] == 12 and settings["model"]["global_hidden"] == (64, 32)
    assert settings["model"]["first_order"] is True  # environment beats default
    assert settings["train"]["seed"] == 6  # environment beats file
    assert settings["train"]["support_size"] == 24  # command line beats file
    assert settings["train"]["query_size"] == 9  # command line beats environment
    assert settings["train"]["members_per_batch"] == 50  # command line beats environment and file
    assert settings["model"]["inner_steps"] == 2  # command line beats default


@pytest.mark.parametrize("command, section, option, values", [
    ("models", "models", "artifacts_dir", (Path("artifacts"), Path("file"), Path("env"), Path("flag"))),
    ("models", "models", "activate", ("", "v1", "v2", "v3")),
    ("profiles", "profiles", "dataset", ("synthetic", "movielens", "synthetic:seed=2", "table:log")),
    ("forget", "forget", "timeout_s", (30.0, 5.0, 7.5, 9.0)),
    ("forget", "forget", "from_file", ("", "a.txt", "b.txt", "c.txt")),
    ("stream", "stream", "worker_id", ("0", "1", "2", "3")),
    ("adapt", "adapt", "worker_id", ("0", "1", "2", "3")),
])
def test_the_options_once_declared_by_hand_come_from_the_same_layers(
        tmp_path: Path, capsys: pytest.CaptureFixture, command: str, section: str, option: str,
        values: tuple) -> None:
    """The options that were declared by hand (the worker id, and models', profiles' and
    forget's) have a TOML table and environment variables too."""
    default, in_file, in_env, on_command_line = values
    config_file = tmp_path / "limaml.toml"
    in_toml = json.dumps(str(in_file) if isinstance(in_file, Path) else in_file)  # as TOML writes it
    config_file.write_text(f"[{section}]\n{option} = {in_toml}\n")
    variable = f"LIMAML_{section}_{option}".upper()
    flag = "--" + option.replace("_", "-")

    def value(file: Path | None, environ: dict[str, str], *argv: str) -> object:
        args = build_parser([command]).parse_args([command, *argv])
        return resolve(sections(command), file, args, environ)[section][option]

    assert value(None, {}) == default
    assert value(config_file, {}) == in_file
    assert value(config_file, {variable: str(in_env)}) == in_env
    assert value(config_file, {variable: str(in_env)}, flag, str(on_command_line)) == on_command_line
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert variable in capsys.readouterr().out


def test_configuration_errors_say_what_is_wrong(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nepochz = 3\n")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['epochz'\] in \[train\]"):
        resolve(TRAIN_SECTIONS, bad, None, {})
    with pytest.raises(ConfigError, match="does not exist"):
        resolve(TRAIN_SECTIONS, tmp_path / "absent.toml", None, {})
    with pytest.raises(ConfigError, match="LIMAML_MODEL_LEARNED_INNER_LR"):
        resolve(TRAIN_SECTIONS, None, None, {"LIMAML_MODEL_LEARNED_INNER_LR": "maybe"})
    bad.write_text("[train\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        resolve(TRAIN_SECTIONS, bad, None, {})


def test_help_text_comes_from_the_field_comments(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert "K: most recent events a member is adapted on" in text
    assert "LIMAML_MODEL_META_DIM" in text


def test_profiles_command_writes_the_datasets_member_features_to_feast(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    spec = "synthetic:n_members=20,n_items=10,seed=1"
    assert main(["profiles", "--dataset", spec, "--repo-dir", str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out)["profiles"] == 20
    log_data = load_dataset(spec)
    fields = ",".join(sorted(log_data.member_features))
    store = open_feature_store(FeatureStoreConfig(repo_dir=tmp_path, profile_fields=fields))
    profile = read_member_profiles(store, ["m3"])["m3"]
    member = log_data.members.index("m3")
    assert profile == {name: log_data.member_feature_vocabs[name].token(
        int(log_data.member_features[name][member])) for name in sorted(log_data.member_features)}


def test_profiles_of_a_log_without_member_features_are_none_to_write(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A `table:` log without a members file is valid (every member's meta block reads the
    learned constant input), so there is nothing to snapshot, and that is not an error."""
    write_table(load_dataset("synthetic:n_members=20,n_items=10,seed=1"), tmp_path / "log", "csv")
    (tmp_path / "log" / "members.csv").unlink()
    assert main(["profiles", "--dataset", f"table:{tmp_path / 'log'}", "--repo-dir", str(tmp_path / "feast")]) == 0
    assert json.loads(capsys.readouterr().out)["profiles"] == 0


def test_forget_takes_members_from_the_command_line_and_a_file_once_each(tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    from limaml.stream.forget import members_to_forget

    listed = tmp_path / "members.txt"
    listed.write_text("m2\n\n  m3 \nm1\n")
    assert members_to_forget(["m1", "m2"], listed) == ["m1", "m2", "m3"]
    assert members_to_forget(["m1"], None) == ["m1"]
    for members, from_file, message in (([], None, "no member to forget"),
                                        (["m1", " "], None, "an empty member id"),
                                        ([], tmp_path / "absent.txt", "cannot read members")):
        with pytest.raises(ConfigError, match=message):
            members_to_forget(members, from_file)
    # Refused before anything is sent: no broker listens at this bootstrap.
    assert main(["forget", "--bootstrap", "127.0.0.1:1"]) == 2
    assert main(["forget", "m1", "--timeout-s", "0", "--bootstrap", "127.0.0.1:1"]) == 2
    assert "--timeout-s must be positive" in caplog.text


def test_an_adaptation_worker_with_micro_batch_limits_that_cannot_hold_refuses_to_start(
        caplog: pytest.LogCaptureFixture) -> None:
    assert main(["adapt", "--batch-size", "8", "--max-batch", "4", "--bootstrap", "127.0.0.1:1"]) == 2
    assert "batch_size must be between 1 and max_batch (4), got 8" in caplog.text
    assert main(["adapt", "--max-wait-s", "-1", "--bootstrap", "127.0.0.1:1"]) == 2
    assert "max_wait_s must be 0 or more" in caplog.text
