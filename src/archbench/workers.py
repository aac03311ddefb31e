"""A side-by-side sweep's worker processes, started while the sweep itself is still getting ready.

Hydra's joblib launcher runs a sweep's jobs in loky's worker processes, which it starts when it
launches the first job; each then imports torch, MLflow and archbench before that job trains
(4 s here), while the sweep's own process has nothing left to do. Started from the sweep's first
callback instead, they import meanwhile that process opens the store, composes the jobs and
decides what to reuse. joblib keeps a reusable executor per process and hands it to the next
`Parallel` with the same arguments: the launcher's `Parallel` finds these very workers, warm.
"""

import logging
import threading

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

JOBLIB = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
# archbench's sweeper waits for the warm-up before it launches (tracking/reuse.py); another sweeper
# (Optuna's) would launch beside it, two Parallel calls on one executor at once: left cold
RACE = "hydra_plugins.archbench_race.race_sweeper.RaceSweeper"

_warming: threading.Thread | None = None
warmed: set[int] = set()  # the process ids of the workers warmed so far


def joblib_arguments(launcher: DictConfig) -> dict:
    """The `Parallel(...)` arguments Hydra's joblib launcher makes of its config (its _core.launch)."""
    from hydra_plugins.hydra_joblib_launcher._core import process_joblib_cfg

    arguments = {k: v for k, v in OmegaConf.to_container(launcher, resolve=True).items() if k != "_target_"}
    arguments["backend"] = "loky"
    process_joblib_cfg(arguments)
    return arguments


def warm(uri: str) -> int:
    """In a worker: what every job imports and opens before it trains; its process id."""
    import os

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401  (the confusion matrix's chart)
    import mlflow.pytorch  # noqa: F401  (the logged model)
    import torch._dynamo  # noqa: F401  (torch.optim's first step and torch.export import it)

    import archbench.app  # noqa: F401
    from archbench.tracking import store

    store.client(uri)
    return os.getpid()


def start(arguments: dict, uri: str) -> threading.Thread:
    """Start the workers and warm them, in a thread of this process; `ready()` waits for it."""
    global _warming
    from joblib import Parallel, delayed

    def run():
        try:
            jobs = max(1, int(arguments["n_jobs"]))
            warmed.update(Parallel(**arguments)(delayed(warm)(uri) for _ in range(jobs)))
        except Exception as e:  # noqa: BLE001 (the jobs meet the same cause and report it in their own words)
            log.debug("workers not warmed: %s", e)

    _warming = threading.Thread(target=run, name="archbench-warm-workers", daemon=True)
    _warming.start()
    return _warming


def ready() -> None:
    """Wait for the warm-up, if one runs: the launcher's own `Parallel` then finds the workers idle."""
    global _warming
    if _warming is not None:
        _warming.join()
        _warming = None


class WarmWorkers(Callback):
    """Hydra callback: on a sweep's start with the joblib launcher, start its workers (archbench.workers)."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        launcher = config.hydra.launcher
        if launcher.get("_target_") != JOBLIB or config.hydra.sweeper.get("_target_") != RACE:
            return
        try:
            arguments = joblib_arguments(launcher)
        except Exception as e:  # noqa: BLE001 (the launcher says what is wrong with its config)
            log.debug("workers not warmed: %s", e)
            return
        start(arguments, str(config.tracking.uri))
