"""A non-editable install (what the Dockerfile's `pip install .` makes) runs the local broker:
deploy/kafka.sh and the helpers it sources ship as package data of limaml.deploy, and `limaml up`
finds them in the installed package, not in a source tree."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest
from conftest import REPO_ROOT
from limaml.deploy.processes import BOOTSTRAP_VARIABLE

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

SOURCES = ("pyproject.toml", "README.md", "limaml", "adapters", "stream", "featurestore", "deploy")
"""What the Dockerfile copies into its build stage."""


def build_wheel(tmp_path: Path) -> Path:
    """A wheel of a copy of the sources (so no build output lands in the source tree)."""
    source = tmp_path / "src"
    source.mkdir()
    for name in SOURCES:
        if (REPO_ROOT / name).is_dir():
            shutil.copytree(REPO_ROOT / name, source / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(REPO_ROOT / name, source / name)
    try:  # the venv's setuptools: no download of a build environment
        import setuptools  # noqa: F401
        isolation = ["--no-build-isolation"]
    except ImportError:
        isolation = []
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", *isolation,
                    "--wheel-dir", str(wheels), str(source)], check=True, timeout=300)
    return next(wheels.glob("limaml-*.whl"))


def installed_python(tmp_path: Path, wheel: Path) -> Path:
    """A fresh venv with the wheel installed (not editable); its dependencies are the test
    venv's, on sys.path through a plain .pth line, which does not run the test venv's
    editable-install hook (that would map limaml back to the source tree)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                    "--no-index", str(wheel)], check=True, timeout=300)
    return python


def test_an_installed_limaml_runs_kafka_sh_from_its_package(tmp_path: Path) -> None:
    python = installed_python(tmp_path, build_wheel(tmp_path))
    outside = tmp_path / "elsewhere"  # no source tree here or above
    outside.mkdir()
    # What `limaml up` does with its private broker: supervisor.Broker starts and stops it
    # through limaml.deploy.processes.KAFKA_SH.
    script = textwrap.dedent(f"""
        from pathlib import Path
        import limaml
        from limaml.deploy.processes import KAFKA_SH
        from limaml.deploy.supervisor import Broker
        print("package", Path(limaml.__file__).resolve().parent)
        print("script", KAFKA_SH)
        broker = Broker(Path({str(tmp_path / 'kafka')!r}))
        print("bootstrap", broker.start())
        print("stop", broker.stop(30.0))
    """)
    env = {name: value for name, value in os.environ.items() if name not in ("PYTHONPATH", BOOTSTRAP_VARIABLE)}
    result = subprocess.run([str(python), "-c", script], cwd=outside, capture_output=True, text=True,
                            timeout=400, env=env, check=False)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    site = tmp_path / "venv"
    assert Path(lines["package"]).is_relative_to(site), lines  # the wheel's copy, not the source tree
    assert Path(lines["script"]).is_relative_to(site) and Path(lines["script"]).name == "kafka.sh", lines
    assert lines["bootstrap"].startswith("127.0.0.1:"), lines
    assert lines["stop"].startswith("SIGTERM"), lines
    for name in ("kafka.sh", "redis.sh", "common.sh"):
        assert (Path(lines["script"]).parent / name).is_file(), name
    # The installed console script starts, from outside the source tree too.
    limaml = subprocess.run([str(site / "bin" / "limaml"), "up", "--help"], cwd=outside, capture_output=True,
                            text=True, timeout=120, env=env, check=False)
    assert limaml.returncode == 0 and "--work-dir" in limaml.stdout, limaml.stderr[-2000:]
