"""Waiting in the tests: every wait is for an event (a metric in the store, a line in a log, a file, a
server's answer), polled, with a ceiling scaled to this machine. No test sleeps a fixed time and then
acts: a fast machine would have finished what the sleep waited for, a slow one not yet begun it.

ARCHBENCH_TEST_SLOWNESS=3 gives every ceiling three times its measured length (a machine busy with
more than the suite, an emulator); the ceilings only bound a wait, they never assert a speed.
"""

import functools
import os
import subprocess
import sys
import time
from collections.abc import Callable

# Python with torch, MLflow and Hydra imported, on the 2-core AMD EPYC where the suite's ceilings were
# set (idle; measured, as `startup_s` measures it). The ceilings grow with this machine's own figure.
REFERENCE_STARTUP_S = 4.0
POLL_S = 0.05  # between two looks at an event: a sqlite read or a stat costs ~1 ms


@functools.cache
def startup_s() -> float:
    """How long this machine, as busy as it is now, takes to start Python with torch, MLflow, Hydra."""
    tic = time.monotonic()
    subprocess.run([sys.executable, "-c", "import torch, mlflow, hydra"], check=True, timeout=600)
    return time.monotonic() - tic


def patience(seconds: float) -> float:
    """A ceiling on a wait for an event (a job's epoch, a server's answer), scaled to this machine: a
    slower or busier one than the reference gets proportionally longer. Never an assertion on speed."""
    slowness = float(os.environ.get("ARCHBENCH_TEST_SLOWNESS") or 1)
    return seconds * max(1.0, startup_s() / REFERENCE_STARTUP_S) * slowness


def wait_for(
    event: Callable,
    what: str,
    ceiling_s: float = 120,
    process: subprocess.Popen | None = None,
    details: Callable[[], str] | None = None,
):
    """Poll `event()` until it gives something true, and return that. `what` names the event for the
    failure, which comes at patience(ceiling_s), or at once if `process` ends first (with its output,
    or `details()`)."""
    ceiling = patience(ceiling_s)
    deadline = time.monotonic() + ceiling
    while True:
        ended = process is not None and process.poll() is not None  # before the look: no event missed
        if found := event():
            return found
        if ended or time.monotonic() > deadline:
            why = f"its process ended first (exit {process.returncode})" if ended else "none"
            said = details() if details else _output(process) if ended else ""
            raise AssertionError(f"waited {ceiling:.0f} s at most for {what}: {why}\n{said}".rstrip())
        time.sleep(POLL_S)


def _output(process: subprocess.Popen) -> str:
    """The end of what an ended process wrote to its pipes (nothing, where it had none)."""
    out, err = process.communicate()
    return "\n".join(str(x)[-3000:] for x in (out, err) if x)
