"""Sweeps run their jobs side by side by default, one thread each; stopped, every job ends KILLED; and
they give the same numbers as the basic launcher. That 15 jobs four at a time into a
fresh store lose nothing is the "Parallel sweeps" command of docs/speed.md (tests/test_readme.py)."""

import os
import signal
import subprocess
import sys

import pytest

from conftest import ALL_CORES, ROOT, all_runs, environment, patience, run_py, shrunk, small, wait_for
from test_lifecycle import ENDLESS, epochs_logged

pytestmark = pytest.mark.slow


def numbers(tmp_path):
    jobs = [r for r in all_runs(tmp_path) if r.data.tags.get("archbench.sweep") != "parent"]
    return {r.info.run_name: (r.data.metrics["test_loss"], r.data.metrics["train_loss"]) for r in jobs}


def test_basic_and_joblib_launchers_agree_to_the_bit(tmp_path):
    args = ["-m", "activation=relu,tanh", "model=cnn3", "dataset.train_size=400", "train.threads=1"]
    basic = run_py(tmp_path / "basic", *args)
    joblib = run_py(tmp_path / "joblib", *args, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    assert basic.returncode == 0 and joblib.returncode == 0, basic.stderr + joblib.stderr
    assert numbers(tmp_path / "basic") == numbers(tmp_path / "joblib")
    assert len(numbers(tmp_path / "basic")) == 2


def usable_cores(figure: str = "usable_cores()") -> int:
    """cpus' figure (the usable cores, or a sweep's jobs) without the suite's limit (conftest)."""
    count = f"from archbench import cpus; print(cpus.{figure})"
    done = subprocess.run(
        [sys.executable, "-c", count], env=environment(ALL_CORES), capture_output=True, text=True
    )
    return int(done.stdout)


def test_a_sweep_runs_its_jobs_side_by_side_by_default_one_thread_each(tmp_path):
    default = [o for o in small(tmp_path) if not o.startswith("train.threads=")]  # archbench's choice
    result = run_py(tmp_path, "-m", "activation=relu,tanh,sigmoid", *default, small_job=False, env=ALL_CORES)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = usable_cores("sweep_jobs(None, 'auto')")  # one per core, unless the memory holds fewer
    assert 1 <= jobs <= usable_cores()  # fewer where the memory holds fewer, 1 beside a GPU
    assert f"Joblib.Parallel(n_jobs={jobs}," in result.stdout + result.stderr
    runs = [r for r in all_runs(tmp_path) if r.data.tags.get("archbench.sweep") != "parent"]
    assert sorted(r.data.params["activation"] for r in runs) == ["relu", "sigmoid", "tanh"]
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert {r.data.params["train.threads"] for r in runs} == {str(max(1, usable_cores() // jobs))}


@pytest.mark.parametrize("how", ["SIGTERM to the sweep", "Ctrl-C to the terminal's process group"])
def test_a_parallel_sweep_stopped_ends_every_job_killed(tmp_path, how):
    if usable_cores() < 2:
        pytest.skip("one core: the jobs run one at a time")
    # ENDLESS: the job that starts first must still run when the other logs its first epoch
    cmd = [sys.executable, "run.py", *shrunk(tmp_path, ["-m", *ENDLESS, "activation=relu,tanh"])]
    process = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=environment(ALL_CORES), start_new_session=True,
    )  # fmt: skip
    try:
        runs = lambda: epochs_logged(tmp_path / "mlruns" / "mlflow.db", "DISTINCT run_uuid")  # noqa: E731
        # both jobs at work: both must end KILLED
        wait_for(lambda: runs() >= 2, "both jobs' first epochs in the store", 180, process)
        if how.startswith("SIGTERM"):
            process.send_signal(signal.SIGTERM)
        else:
            os.killpg(process.pid, signal.SIGINT)
        _, err = process.communicate(timeout=patience(120))
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == (143 if how.startswith("SIGTERM") else 130), err[-3000:]
    statuses = sorted((r.info.run_name.split("-")[0], r.info.status) for r in all_runs(tmp_path))
    assert statuses == [("mlp", "KILLED"), ("mlp", "KILLED"), ("sweep", "KILLED")], err[-3000:]
