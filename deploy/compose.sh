#!/usr/bin/env bash
# Makes `docker compose` (the Compose v2 CLI plugin) available, so that the tests can check
# docker-compose.yml with the real parser (`docker compose config` needs no Docker engine).
#
#   deploy/compose.sh install   build the plugin from the Go module proxy if `docker compose`
#                               is missing (2-5 minutes on 2 cores, once), and put it where
#                               the docker CLI finds plugins: ${DOCKER_CONFIG:-~/.docker}/cli-plugins
#
# Without a docker CLI or a Go toolchain it says what is missing and exits 0: the compose
# tests then skip, or fail under CI=true, where every real component must run.
set -euo pipefail

VERSION="${LIMAML_COMPOSE_VERSION:-v2.32.4}"
PLUGIN_DIR="${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins"

install() {
  if docker compose version >/dev/null 2>&1; then
    return 0
  fi
  if ! command -v docker >/dev/null; then
    echo "compose.sh: no docker CLI on PATH, so no \`docker compose\`; install Docker's CLI to run the compose tests" >&2
    return 0
  fi
  if ! command -v go >/dev/null; then
    echo "compose.sh: no Go toolchain to build Compose $VERSION; install Go, or Docker's compose plugin, to run the compose tests" >&2
    return 0
  fi
  echo "compose.sh: building docker compose $VERSION from the Go module proxy (once; a few minutes)" >&2
  local build
  build="$(mktemp -d)"
  trap 'rm -rf "$build"' RETURN
  GOBIN="$build" GOFLAGS=-trimpath go install "github.com/docker/compose/v2/cmd@$VERSION"
  mkdir -p "$PLUGIN_DIR"
  mv "$build/cmd" "$PLUGIN_DIR/docker-compose"
  docker compose version >&2
}

case "${1:-}" in
  install) install ;;
  *) echo "usage: deploy/compose.sh install" >&2; exit 2 ;;
esac
