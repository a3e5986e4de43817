"""`limaml --help` starts without torch, pandas, Kafka or Faust (issue 14).

The command line imports each command's settings modules only when that command is named;
a fresh interpreter checks it, since this test process imported them long ago (conftest.py).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from limaml.cli import COMMANDS

HEAVY = ("torch", "pandas", "numpy", "confluent_kafka", "aiokafka", "faust", "feast", "fastapi")

LIGHT_HELP = ("train", "eval", "ablate", "profiles", "models")

PROBE = f"""
import json, sys
from limaml.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps(sorted(name for name in {HEAVY!r} if name in sys.modules)))
"""


def heavy_modules_imported(*argv: str) -> list[str]:
    """The HEAVY modules that `limaml *argv` has imported when it exits."""
    result = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True,
                            timeout=120, check=True)
    return json.loads(result.stdout.splitlines()[-1])


@pytest.mark.parametrize("argv", [("--help",), ("-v", "--help"), (), ("no-such-command",)],
                         ids=["help", "verbose-help", "no-command", "unknown-command"])
def test_the_top_level_help_and_usage_errors_import_no_heavy_module(argv: tuple[str, ...]) -> None:
    assert heavy_modules_imported(*argv) == []


@pytest.mark.parametrize("command", list(COMMANDS))
def test_no_commands_help_imports_torch(command: str) -> None:
    """Those of LIGHT_HELP import no heavy module at all; the others' settings are declared
    next to client code (KafkaConfig in limaml.stream.topics, ReplayConfig and StackConfig with
    the replay and the stack), which imports the Kafka client or pandas."""
    imported = heavy_modules_imported(command, "--help")
    assert "torch" not in imported
    if command in LIGHT_HELP:
        assert imported == []


def test_the_stream_workers_code_imports_neither_torch_nor_feast() -> None:
    """`limaml stream` runs `limaml.stream.run`: the adaptation worker's torch and Feast would
    add about 680 MiB to each stream worker's resident memory (bench/member_cost.py)."""
    probe = (f"import json, sys; import limaml.stream.run; "
             f"print(json.dumps(sorted(name for name in {HEAVY!r} if name in sys.modules)))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    imported = json.loads(result.stdout.splitlines()[-1])
    assert "torch" not in imported and "feast" not in imported
