"""Shared test helpers: compose the real config, shrink it, run jobs in-process or as subprocesses."""

import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

from archbench import cpus
from waiting import patience, wait_for  # noqa: F401  (the tests import them from here)

cpus.prepare_environment()  # as run.py does, before any test module loads torch
# The suite runs its tests side by side (pytest-xdist), so each test's sweeps run one job at a time,
# as on a 1-core machine (joblib's count, which the default launcher's n_jobs follows); the tests of
# side-by-side sweeps take the limit away: run_py(..., env=ALL_CORES)
os.environ["LOKY_MAX_CPU_COUNT"] = "1"
ALL_CORES = {"LOKY_MAX_CPU_COUNT": None}

import pytest  # noqa: E402
from hydra import compose, initialize  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig, open_dict  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def small(tmp_path: Path) -> list[str]:
    """Overrides that make a job tiny and keep everything it writes under tmp_path."""
    return [
        "dataset=synthetic",
        "train.epochs=1",
        "train.progress=false",
        # 1 thread: the suite's jobs run side by side (pytest-xdist, 2 workers), and a test that
        # compares two runs' numbers needs one thread count in both (it changes float rounding)
        "train.threads=1",
        # no MLflow model: torch.export's first use costs a job ~4 s; the tests about the model ask
        # for it (tracking.log_model=true)
        "tracking.log_model=false",
        f"tracking.uri=sqlite:///{tmp_path}/mlruns/mlflow.db",
        f"data_dir={tmp_path}/data",
        f"hydra.run.dir={tmp_path}/outputs/run",
        f"hydra.sweep.dir={tmp_path}/outputs/sweep",
        f"compare.out={tmp_path}/outputs/comparison",  # a sweep's comparison files
    ]


def shrunk(tmp_path: Path, args) -> list[str]:
    """`args` as given, then the `small` overrides for every key they leave unset (appended, as a
    user would type them: Hydra lets the last value of a key win, so the test's own values stay)."""
    given = {a.split("=", 1)[0].lstrip("+~") for a in args if "=" in a and not a.startswith("-")}
    return [*args, *(o for o in small(tmp_path) if o.split("=", 1)[0] not in given)]


def compose_job(tmp_path: Path, *overrides: str) -> DictConfig:
    """The job config run.py would get, with HydraConfig set as in a real run."""
    with initialize(version_base="1.3", config_path="../conf"):
        cfg = compose("config", overrides=[*small(tmp_path), *overrides], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def run_py(tmp_path: Path, *args: str, small_job: bool = True, timeout: int = 300, env=None):
    """`python run.py ARGS` in the project root, ARGS in the order given; returns the CompletedProcess.
    env: variables to set on top of this process's, or to remove (None)."""
    cmd = [sys.executable, "run.py", *(shrunk(tmp_path, args) if small_job else args)]
    return subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=patience(timeout), env=environment(env),
    )  # fmt: skip


def environment(changes: dict | None) -> dict:
    """This process's environment with `changes`: a value sets a variable, None removes it."""
    env = {**os.environ, **(changes or {})}
    return {k: v for k, v in env.items() if v is not None}


def store(tmp_path: Path):
    """An MlflowClient on the test's store."""
    import mlflow

    return mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")


def all_runs(tmp_path: Path) -> list:
    mlflow_client = store(tmp_path)
    ids = [e.experiment_id for e in mlflow_client.search_experiments()]
    return list(mlflow_client.search_runs(ids, max_results=1000)) if ids else []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_health(url: str, process: subprocess.Popen, timeout: float, log: Path | None = None) -> None:
    """Until `url`/health answers 200 (ceiling: patience(timeout)); fails at once, with the log, if the
    server process exits."""

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                return response.status == 200
        except OSError:  # not listening yet
            return False

    shown = lambda: f"{url} (server exit {process.poll()}):\n" + (log.read_text() if log else "")  # noqa: E731
    wait_for(healthy, f"{url}/health to answer", timeout, process, details=shown)


def stop_group(process: subprocess.Popen, grace: float = 30) -> None:
    """SIGTERM to a server started with start_new_session=True (workers too); SIGKILL after `grace` s."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=grace)
    except ProcessLookupError:  # it had exited already
        process.wait()
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def missing(reason: str):
    """Skip for want of a system tool, or fail where CI installs it (ARCHBENCH_STRICT=1)."""
    if os.environ.get("ARCHBENCH_STRICT"):
        pytest.fail(f"{reason}; ARCHBENCH_STRICT is set, so this is a failure")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A one-node Slurm cluster on loopback (tests/slurmcluster.py), started once for the session:
    its `env` (SLURM_CONF) points sbatch, squeue and the jobs at it."""
    import slurmcluster

    try:
        cluster = slurmcluster.start(tmp_path_factory.mktemp("slurm"))
    except slurmcluster.Unavailable as e:
        missing(str(e))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(autouse=True)
def _quiet_threads(monkeypatch):
    # keep in-process jobs from changing the thread count for the tests that follow
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
