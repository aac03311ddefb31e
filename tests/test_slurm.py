"""Sweeps on a real Slurm cluster (one node on loopback, conftest's `slurm_cluster`): every job a Slurm
job tagged with its id, the comparison, scancel, a requeue and the time-limit signal resumed as the same
run, and a request the cluster refuses said in one line before anything runs."""

import re
import sqlite3
import subprocess
import sys
from subprocess import PIPE, STDOUT

import pytest
from hydra import compose, initialize

from archbench.slurm import SlurmCheck
from conftest import ROOT, all_runs, patience, run_py, shrunk, store, wait_for
from test_lifecycle import final_metrics, steps

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

SLURM = ["-m", "hydra/launcher=slurm"]
SLOW = ["model.hidden_sizes=[1024,1024]", "dataset.train_size=8000"]  # ~1.4 s an epoch on 1 CPU here
# The requeue test stops its job twice, each time an epoch after the store shows one: the job's second
# stop comes two or three epochs in, and the epochs left after it outlast the stop (~0.1 s) many times
REQUEUE_EPOCHS = 10


@pytest.fixture
def start():
    """`python run.py ARGS` with the small overrides, in the background; killed at the end if it runs."""
    started = []

    def run_in_background(tmp_path, env: dict, *args: str) -> subprocess.Popen:
        cmd = [sys.executable, "run.py", *shrunk(tmp_path, args)]
        started.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=PIPE, stderr=STDOUT, text=True))
        return started[-1]

    yield run_in_background
    for process in started:
        if process.poll() is None:
            process.kill()
            process.communicate()


def query(tmp_path, sql: str) -> list:
    """Read-only, with sqlite3, while the jobs write the store."""
    try:
        with sqlite3.connect(f"file:{tmp_path}/mlruns/mlflow.db?mode=ro", uri=True) as conn:
            return conn.execute(sql).fetchall()
    except sqlite3.OperationalError:  # no database or no table yet
        return []


def wait(condition, process: subprocess.Popen, what: str, cluster, timeout: float = 180):
    """wait_for `condition`, failing with Slurm's jobs and the sweep's output."""

    def details() -> str:
        said = process.communicate()[0][-4000:] if process.poll() is not None else "(still running)"
        return f"Slurm's jobs: {cluster.jobs()}; output: {said}"

    return wait_for(condition, what, timeout, process, details)


def job_runs(tmp_path) -> list:
    return [r for r in all_runs(tmp_path) if r.data.tags.get("archbench.sweep") != "parent"]


def test_two_configurations_by_two_seeds_are_four_slurm_jobs_and_a_scancel_kills_one(
    slurm_cluster, start, tmp_path
):
    sweep = start(
        tmp_path, slurm_cluster.env, *SLURM, *SLOW, "train.epochs=3", "activation=relu,tanh", "seeds=2"
    )
    sql = "SELECT t.value FROM metrics m JOIN tags t ON t.run_uuid = m.run_uuid AND t.key = 'slurm_job_id'"
    wait(lambda: query(tmp_path, sql), sweep, "epoch logged", slurm_cluster)
    (cancelled,) = query(tmp_path, sql)[0]
    slurm_cluster.run("scancel", cancelled)  # after its first epoch, while it runs
    out, _ = sweep.communicate(timeout=patience(300))
    assert sweep.returncode == 1, out[-4000:]  # a job of the sweep did not finish

    (parent,) = [r for r in all_runs(tmp_path) if r.data.tags.get("archbench.sweep") == "parent"]
    jobs = job_runs(tmp_path)
    arms = [(f"mlp-{a}-sgd-s{s}", str(s)) for a in ("relu", "tanh") for s in (0, 1)]
    assert sorted((r.info.run_name, r.data.params["seed"]) for r in jobs) == arms
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in jobs)
    # each its own Slurm job, a task of the sweep's job array, tagged with its id, with submitit's log
    runs = {r.data.tags["slurm_job_id"]: r for r in jobs}
    assert len(runs) == 4 and all(re.fullmatch(r"\d+_[0-3]", j) for j in runs)
    assert {j: r.info.status for j, r in runs.items()} == {
        j: "KILLED" if j == cancelled else "FINISHED" for j in runs
    }
    for job in set(runs) - {cancelled}:
        log = tmp_path / "outputs" / "sweep" / ".submitit" / job / f"{job}_0_log.out"
        assert "Job completed successfully" in log.read_text()
    assert runs[cancelled].data.tags["archbench.error"] == "Terminated: stopped by SIGTERM"
    assert f"Slurm job {cancelled} stopped by SIGTERM" in out and "Traceback" not in out
    # accounting is off on this cluster: one line says so, instead of submitit's sacct warnings
    assert "Bypassing sacct" not in out
    assert len([line for line in out.splitlines() if "sacct" in line]) == 1, out[-3000:]
    assert "job states come from squeue" in out

    # the parent's comparison: the three finished runs counted, the killed one listed
    killed = runs[cancelled]
    arm = f"activation={killed.info.run_name.split('-')[1]}"
    assert f"{arm} seed={killed.data.params['seed']}: KILLED" in parent.data.tags["mlflow.note.content"]
    env = {**slurm_cluster.env, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlruns/mlflow.db"}
    shown = subprocess.run(
        ["make", "compare", f"ARGS=--out {tmp_path}/comparison"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=patience(300),
    )
    assert shown.returncode == 0, shown.stderr
    assert parent.info.run_name in shown.stdout and "1-2 seeds per configuration" in shown.stdout
    rows = {
        row[1]: row[2] for row in (line.split(" | ") for line in shown.stdout.splitlines()) if len(row) > 3
    }
    other = "activation=tanh" if arm == "activation=relu" else "activation=relu"
    assert (rows[arm], rows[other]) == ("1 (+1 failed)", "2"), shown.stdout


def test_requeue_and_the_time_limit_signal_resume_the_same_run(slurm_cluster, start, tmp_path):
    """`scontrol requeue` (as pre-emption does), then USR2 (what Slurm sends signal_delay_s before the
    time limit; submitit checkpoints and requeues): one run, each epoch logged once, and the figures of
    an uninterrupted run with the same seed and thread count (the jobs' 1 CPU).

    Each stop follows an epoch seen in the store, with most of the job's epochs still to do
    (REQUEUE_EPOCHS): it cannot finish before a stop, however fast the machine."""
    epochs = [*SLOW, f"train.epochs={REQUEUE_EPOCHS}"]
    reference = start(tmp_path / "reference", slurm_cluster.env, *epochs, "train.threads=1")
    # timeout_min=10: submitit counts a USR2 as its time limit (after 80% of it, or 10 minutes before)
    sweep = start(tmp_path, slurm_cluster.env, *SLURM, *epochs, "hydra.launcher.timeout_min=10")
    logged = lambda: len(query(tmp_path, "SELECT step FROM metrics WHERE key = 'train_loss'"))  # noqa: E731
    status = lambda: query(tmp_path, "SELECT status FROM runs WHERE name NOT LIKE 'sweep-%'")  # noqa: E731
    pending = lambda: slurm_cluster.jobs().get(job) == "PENDING"  # noqa: E731
    first = "SELECT 1 FROM metrics WHERE key = 'train_loss' AND step = 1"
    wait(lambda: query(tmp_path, first), sweep, "the first epoch's train_loss in the store", slurm_cluster)
    (job,) = query(tmp_path, "SELECT value FROM tags WHERE key = 'slurm_job_id'")[0]

    for stop in (["scontrol", "requeue", job], ["scancel", "--signal=USR2", job]):
        slurm_cluster.run(*stop)
        wait(lambda: status() == [("KILLED",)], sweep, f"a KILLED run after {stop}", slurm_cluster)
        done = logged()  # the stopped job's epochs: it logs none once its run is KILLED
        # Slurm holds a requeued job for 2 minutes (BeginTime); it may start at once here
        wait(lambda done=done: logged() > done or pending(), sweep, "the requeued job pending", slurm_cluster)
        if logged() == done:  # check=False: it may start between the two looks
            slurm_cluster.run("scontrol", "update", f"JobId={job}", "StartTime=now", check=False)
        wait(lambda done=done: logged() > done, sweep, f"an epoch after {stop[0]}'s restart", slurm_cluster)

    out, _ = sweep.communicate(timeout=patience(300))
    assert sweep.returncode == 0, out[-4000:]
    assert reference.wait(timeout=patience(300)) == 0, reference.communicate()[0][-4000:]
    (run,) = job_runs(tmp_path)
    assert run.info.status == "FINISHED" and run.data.tags["archbench.resumed"] == "2"
    every = list(range(1, REQUEUE_EPOCHS + 1))
    assert steps(tmp_path, run) == every  # every epoch once: none missing, none twice
    assert [m.step for m in store(tmp_path).get_metric_history(run.info.run_id, "test_accuracy")] == every
    (ref,) = all_runs(tmp_path / "reference")
    assert final_metrics(tmp_path, run.info.run_id) == final_metrics(tmp_path / "reference", ref.info.run_id)
    # the second stop went through submitit's protocol: the launcher's checkpoint(), then its requeue,
    # whose SIGTERM did not cut the handler short (the run's error.txt says how it stopped)
    log = (tmp_path / "outputs" / "sweep" / ".submitit" / job / f"{job}_0_log.out").read_text()
    assert "Calling checkpoint method" in log and f"Requeued job {job}" in log, log[-6000:]
    assert "this job is timed-out" in log
    error = store(tmp_path).download_artifacts(run.info.run_id, "error.txt", str(tmp_path))
    assert "Terminated: requeued by Slurm at SIGUSR2 (time limit or pre-emption)" in open(error).read()


def test_a_request_the_cluster_refuses_is_one_line_naming_the_setting(slurm_cluster, tmp_path):
    before = set(slurm_cluster.jobs())
    result = run_py(tmp_path, *SLURM, "device=cuda", env=slurm_cluster.env)  # this node has no GPU
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line == (
        "error: sbatch refuses the jobs (Invalid generic resource (gres) specification): change "
        "hydra.launcher.gpus_per_node (now 1); device=cpu needs none; `sinfo -o '%P %c %m %G %l'` shows the "
        "GPUs; nothing was run"
    )
    # no new job: the earlier tests' finished jobs may have aged out of squeue meanwhile (MinJobAge)
    assert not (tmp_path / "mlruns").exists() and set(slurm_cluster.jobs()) <= before


@pytest.mark.parametrize(
    "request_, said",
    [
        ("hydra.launcher.partition=gpu", "sbatch refuses the jobs in partition gpu (Invalid partition name "
         "specified): change hydra.launcher.partition (now gpu); `sinfo -s` lists the partitions"),
        ("hydra.launcher.mem_gb=100000", "(Requested node configuration is not available): change "
         "hydra.launcher.mem_gb (now 100000);"),  # Slurm's test says only that no node fits: which request
        ("hydra.launcher.cpus_per_task=1000", "(More processors requested than permitted): change "
         "hydra.launcher.cpus_per_task (now 1000)"),
        ("hydra.launcher.timeout_min=1", "hydra.launcher.signal_delay_s=120 must be less than "
         "hydra.launcher.timeout_min=1 minutes"),
    ],
)  # fmt: skip
def test_each_refusal_names_its_setting(slurm_cluster, monkeypatch, request_, said):
    monkeypatch.setenv("SLURM_CONF", slurm_cluster.env["SLURM_CONF"])
    with initialize(version_base="1.3", config_path="../conf"):
        cfg = compose("config", overrides=["hydra/launcher=slurm", request_], return_hydra_config=True)
    with pytest.raises(SystemExit) as stopped:
        SlurmCheck().on_multirun_start(cfg)
    assert said in str(stopped.value) and str(stopped.value).endswith("; nothing was run")


def test_a_race_runs_its_rounds_as_slurm_jobs(slurm_cluster, tmp_path):
    """seeds=auto through the Slurm launcher: each round one job array, every run tagged with its job,
    and the race's record (rounds, runs, why it stopped) on the parent. A margin of 0.0001 calls nothing
    equivalent, so two learning rates 0.001 apart race to race.max_seeds: two rounds."""
    result = run_py(
        tmp_path, *SLURM, "optimizer.lr=0.05,0.051", "seeds=auto", "race.first_seeds=2", "race.max_seeds=3",
        "compare.margin=0.0001", env=slurm_cluster.env, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (parent,) = [r for r in all_runs(tmp_path) if r.data.tags.get("archbench.sweep") == "parent"]
    jobs = job_runs(tmp_path)
    rounds = store(tmp_path).get_metric_history(parent.info.run_id, "race_runs")
    assert [m.value for m in rounds] == [4, 6] and len(jobs) == 6  # 2 seeds each, then 3
    arrays = {r.data.tags["slurm_job_id"].split("_")[0] for r in jobs}  # `12_0`: task 0 of array 12
    assert len(arrays) == len(rounds), arrays  # one sbatch array a round
    assert parent.data.tags["race.stopped"] == "race.max_seeds=3 reached"
    assert {r.info.status for r in [parent, *jobs]} == {"FINISHED"}
    assert "race stopped:" in result.stderr + result.stdout
