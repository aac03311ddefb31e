"""How run.py's process ends once its work is done: without the interpreter's teardown.

Python's normal exit frees every module's objects one by one: 1.2-1.6 s here for a process that imported
torch, MLflow and torch._dynamo, more than a 1-epoch mlp takes to train. A side-by-side sweep's exit
then also waits for each joblib worker to do the same. When run.py's main returns, every
run is closed in the store and every file is written. What is left is done here: a sweep's idle
workers are stopped, the exit handlers run (logging's flush, temporary folders, MLflow's own),
standard output is flushed, and the process ends.
"""

import atexit
import multiprocessing
import os
import sys


def now(code: int = 0) -> None:
    """End the process with `code` after the exit handlers, skipping the interpreter's teardown; under
    a profiler or a tracer (cProfile, coverage), which writes its results as Python exits, return."""
    if sys.getprofile() is not None or sys.gettrace() is not None:
        return
    # No thread is waited for: archbench's own (a run's heartbeat) are joined when their run ends, and
    # MLflow's calls return once done; what is left are idle pools (MLflow's artifact uploads, loky's
    # manager), which Python's exit would only wake up to stop.
    # A sweep's idle joblib workers: Python's exit shuts their executor down first, so that the exit
    # handler below (multiprocessing's, which joins every child) finds them gone. Every job has
    # returned by now: nothing of theirs is lost.
    for child in multiprocessing.active_children():
        child.terminate()
        child.join()
    atexit._run_exitfuncs()  # the registered handlers, in the order Python's exit runs them
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can reach it anyway
            pass
    os._exit(code)
