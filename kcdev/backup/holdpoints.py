"""Named points where a fault-injection test can hold a backup or restore, to interrupt it there.

With KC_RESTORE_HOLD_AT=POINT[,POINT...] in the environment, the process (or, for the points
inside the restore's containers, kc-redis-journal) prints "kc-restore: holding at POINT" and
waits until it is signalled or killed. Unset, a hold point costs one dictionary lookup. Tests use
it to send real signals at every step instead of guessing with sleeps.
"""

from __future__ import annotations

import os
import sys
import time

VARIABLE = "KC_RESTORE_HOLD_AT"


def hold(point: str) -> None:
    if point not in os.environ.get(VARIABLE, "").split(","):
        return
    print(f"kc-restore: holding at {point}", file=sys.stderr, flush=True)
    while True:
        time.sleep(1)


def docker_env() -> list[str]:
    """`docker run` options handing the hold point to the restore's container, when one is set."""
    point = os.environ.get(VARIABLE)
    return ["--env", f"{VARIABLE}={point}"] if point else []
