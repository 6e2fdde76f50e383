#!/usr/bin/env bash
# Usage: bash scripts/setup.sh
#
# All one-time set-up: the Docker engine, compose v2 and debootstrap where missing (Debian; asks for
# root through sudo unless already root), then .venv/ with the project and its dev tools (invoke,
# nox), at the versions in constraints.txt. Safe to run again: each step is skipped when already
# done.
set -o errexit -o nounset -o pipefail
cd "$(dirname "$0")/.."

die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

if ! docker info >/dev/null 2>&1 || ! docker compose version >/dev/null 2>&1 \
    || ! command -v debootstrap >/dev/null; then
    if [ "$(id -u)" -eq 0 ]; then
        bash scripts/provision-host.sh
    else
        sudo bash scripts/provision-host.sh
    fi
fi

python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "Python 3.11 or newer is needed (python3 is $(python3 -V 2>&1))"
[ -x .venv/bin/python ] || python3 -m venv .venv
# constraints.txt: the exact versions the tests pass with (`nox -s lock` refreshes it).
.venv/bin/python -m pip install --quiet --disable-pip-version-check \
    --constraint constraints.txt -e '.[dev]'
printf 'setup: ready: .venv/bin/invoke --list, .venv/bin/nox -l\n'
