"""A side-by-side sweep's workers are started and warmed while the sweep gets ready (archbench/workers.py),
and the launcher's jobs then run in those very processes. How much that saves is benchmarks/overhead.py's."""

import os

from hydra import compose, initialize
from joblib import Parallel, delayed

from archbench import workers
from conftest import small


def test_the_launchers_jobs_run_in_the_workers_warmed_for_them(tmp_path):
    with initialize(version_base="1.3", config_path="../conf"):
        cfg = compose(
            "config", overrides=[*small(tmp_path), "hydra.launcher.n_jobs=2"], return_hydra_config=True
        )
    arguments = workers.joblib_arguments(cfg.hydra.launcher)
    assert arguments["n_jobs"] == 2 and arguments["backend"] == "loky"
    workers.start(arguments, f"sqlite:///{tmp_path}/mlflow.db")
    workers.ready()
    assert len(workers.warmed) == 2
    # as Hydra's joblib launcher calls it, with its config's arguments: the same executor, warm
    pids = Parallel(**workers.joblib_arguments(cfg.hydra.launcher))(delayed(os.getpid)() for _ in range(6))
    assert set(pids) <= workers.warmed, (pids, workers.warmed)
    assert (tmp_path / "mlflow.db").is_file()  # each worker opened the store its jobs will write
