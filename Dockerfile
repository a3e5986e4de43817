# syntax=docker/dockerfile:1
# The limaml image: every `limaml` command (train, profiles, stream, adapt, serve, replay)
# and the Feast CLI (`feast serve`), in one virtual environment at /opt/venv.
#
#   docker build -t limaml:latest .                               # CPU-only torch (default)
#   docker build -t limaml:latest-cuda --build-arg TORCH_VARIANT=cuda .   # CUDA torch, for GPUs
#
# docker-compose.yml builds both (the CUDA one only for its `gpu` profile). The CUDA build
# is PyPI's default Linux torch wheel, which carries its own CUDA libraries: the host needs
# only the NVIDIA driver and the NVIDIA Container Toolkit. The CPU build uses the wheels of
# https://download.pytorch.org/whl/cpu, several GB smaller.
#
# Settings come from LIMAML_<SECTION>_<FIELD> environment variables (see
# `limaml <command> --help`), exactly as on the native stack. The image runs as the
# unprivileged user `limaml` (uid 10001) in /var/lib/limaml, where the compose file mounts
# its volumes: artifacts/ (models), feast/ (the rendered Feast repo) and stream/ (RocksDB).
# torch.compile (`LIMAML_ADAPT_COMPILE=true`) needs a C compiler, which this slim runtime
# image does not have.

ARG PYTHON_VERSION=3.11

# ---------------------------------------------------------------------------------------
# build: a virtual environment with torch and limaml installed (not editable)
# ---------------------------------------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim AS build

# "cpu": CPU-only torch wheels; "cuda": PyPI's default torch build (CUDA on Linux x86_64).
ARG TORCH_VARIANT=cpu
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# A compiler for dependencies that might come as source distributions on some platform;
# none of this stage reaches the runtime image (which installs g++ of its own, below).
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install --upgrade pip setuptools wheel

# torch first, in its own layer: the largest dependency and the one the variant chooses.
# `pip install .` below then finds torch satisfied and keeps this build of it.
RUN case "$TORCH_VARIANT" in \
        cpu)  pip install --index-url "$TORCH_CPU_INDEX" "torch>=2.3" ;; \
        cuda) pip install "torch>=2.3" ;; \
        *)    echo "TORCH_VARIANT must be cpu or cuda, got '$TORCH_VARIANT'" >&2; exit 1 ;; \
    esac

WORKDIR /src
COPY pyproject.toml README.md ./
COPY limaml ./limaml
COPY adapters ./adapters
COPY stream ./stream
COPY featurestore ./featurestore
COPY deploy ./deploy
# deploy/kafka.sh and deploy/redis.sh are package data of limaml.deploy: `limaml up` in the
# image finds them in the installed package (the source tree is not copied to the runtime).
RUN pip install . \
    && python -c "import torch, limaml.cli; print('torch', torch.__version__)" \
    && python -c "from limaml.deploy.processes import KAFKA_SH, REDIS_SH; assert KAFKA_SH.is_file() and REDIS_SH.is_file(), KAFKA_SH" \
    && limaml --help >/dev/null

# ---------------------------------------------------------------------------------------
# runtime
# ---------------------------------------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim AS runtime

ARG TORCH_VARIANT=cpu
LABEL org.opencontainers.image.title="limaml" \
      org.opencontainers.image.description="Streaming near-real-time personalization (LiMAML): workers, scoring service, Feast" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.limaml.torch-variant="${TORCH_VARIANT}"

# g++: the adaptation worker compiles its inner loop (torch.compile; on CPU Inductor builds
# C++). Without a compiler it logs why and adapts with the eager loop, about 12x slower.
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 limaml \
    && useradd --system --uid 10001 --gid limaml --home-dir /var/lib/limaml --shell /usr/sbin/nologin limaml \
    && mkdir -p /var/lib/limaml/artifacts /var/lib/limaml/feast /var/lib/limaml/stream /var/lib/limaml/.cache \
    && chown -R limaml:limaml /var/lib/limaml

COPY --from=build /opt/venv /opt/venv

# FEAST_USAGE=False: no usage telemetry calls from Feast (containers may have no egress).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/var/lib/limaml \
    FEAST_USAGE=False

# An empty named volume mounted on one of these directories starts as a copy of it, so it
# is owned by limaml (no VOLUME here: containers that mount none should get none).
WORKDIR /var/lib/limaml
USER limaml:limaml

# stream worker, adaptation worker, scoring service, Feast feature server
EXPOSE 6066 6067 8000 6566

CMD ["limaml", "--help"]
