"""`python -m worker [--concurrency N] [--loglevel L] [CELERY OPTIONS...]`: the worker image's
entry point, starting Celery with the same command line as `invoke worker` (worker/cli.py)."""

from __future__ import annotations

import argparse
import os
import sys

from kcdev.errors import UserError
from kcdev.settings import load_settings
from worker.cli import worker_argv


def main(args: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__)
    parser.add_argument("--concurrency", default=None)
    parser.add_argument("--loglevel", default="info")
    known, extra = parser.parse_known_args(args)
    try:
        argv = worker_argv(load_settings(), known.concurrency, known.loglevel)
    except UserError as exc:
        sys.exit(f"error: {exc}")
    # Replace this process, as `invoke worker` does: SIGTERM reaches Celery for a warm shutdown.
    os.execv(argv[0], [*argv, *extra])


if __name__ == "__main__":
    main(sys.argv[1:])
