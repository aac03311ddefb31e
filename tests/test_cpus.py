"""The CPU threads of a job: the lease on cores that archbench processes share, released even when
its holder is killed, the user's own thread settings respected, and OpenMP kept from spinning."""

import logging
import os
import signal
import subprocess
import sys
import threading

import pytest

from archbench import cpus
from conftest import ROOT, all_runs, patience, run_py, small, wait_for

HOLD = """
import sys
from archbench import cpus
print(cpus.lease(int(sys.argv[1])), flush=True)
sys.stdin.read()  # until it is killed, or the test's process ends (its stdin closes)
"""


@pytest.fixture
def lease_dir(tmp_path, monkeypatch):
    """A lease folder of the test's own (through TMPDIR, as for every process it starts), so that the
    suite's other jobs neither see these leases nor take these cores."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.delenv("LOKY_MAX_CPU_COUNT")  # the machine's cores, not the suite's limit (conftest)
    monkeypatch.setattr(cpus, "LEASE_DIR", tmp_path / "archbench-cores")
    yield tmp_path
    cpus.release()


def holder(cores: int) -> tuple[subprocess.Popen, int]:
    """Another archbench process that leases `cores` cores and keeps them until it is killed."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(cores)], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    return process, int(process.stdout.readline())


def test_the_lease_shares_the_cores_and_ends_with_its_holder_even_when_it_is_killed(lease_dir):
    cores = len(os.sched_getaffinity(0))
    process, held = holder(cores)
    try:
        assert held == cores
        assert cpus.lease(cores) == 0  # all taken: this process gets none
        assert cpus.threads_for_job(None, cores) == (1, "no free core: other archbench jobs lease them all")
        process.send_signal(signal.SIGKILL)  # no clean-up of its own: the kernel drops its flocks
        process.wait()
        assert cpus.lease(cores) == cores
        assert cpus.threads_for_job(None, cores) == (cores, "leased cores")
    finally:
        process.kill()
        process.wait()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores to split")
def test_a_second_process_gets_the_cores_the_first_left(lease_dir):
    process, held = holder(1)
    try:
        assert held == 1
        assert cpus.lease(len(os.sched_getaffinity(0))) == len(os.sched_getaffinity(0)) - 1
        cpus.release()
        assert cpus.lease(1) == 1 and cpus.lease(0) == 0  # a later job that wants fewer gives some back
    finally:
        process.kill()
        process.wait()


def test_a_sweeps_job_waits_for_a_free_core_rather_than_share_one(lease_dir, caplog):
    """Two sweeps at once: the second one's jobs queue for cores instead of running beside the first's
    (4 one-thread jobs on 2 cores would each train at half speed, and longer with start-ups)."""
    caplog.set_level(logging.INFO, logger=cpus.__name__)
    process, _ = holder(len(os.sched_getaffinity(0)))  # another sweep's jobs hold every core
    got = []
    waiting = threading.Thread(target=lambda: got.append(cpus.threads_for_job(None, 1, "queued")))
    try:
        waiting.start()
        wait_for(lambda: "waiting for a free core" in caplog.text, "the job's 'waiting for a free core'", 30)
        assert waiting.is_alive() and not got  # still waiting: every core is held
    finally:
        process.kill()  # its jobs end: their cores come free
        process.wait()
    waiting.join(timeout=patience(30))
    assert got == [(1, "a core of its own, 1 thread per job of a sweep")]


def test_the_users_own_threads_are_kept_and_still_count_as_busy(lease_dir, monkeypatch):
    assert cpus.threads_for_job(3, 1) == (3, "train.threads")
    assert cpus.lease(1) >= 1  # held from the call above
    cpus.release()
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # as run.py finds it, and keeps it (prepare_environment)
    monkeypatch.setenv(cpus.USER_THREADS, "2")
    assert cpus.threads_for_job(None, 1) == (2, "OMP_NUM_THREADS")
    assert cpus.threads_for_job(4, 1) == (4, "train.threads")  # the explicit key wins


def test_the_usable_cores_follow_affinity_and_the_loky_limit():
    count = "from archbench import cpus; print(cpus.usable_cores())"
    env = {**os.environ, "LOKY_MAX_CPU_COUNT": "1"}
    limited = subprocess.run([sys.executable, "-c", count], env=env, capture_output=True, text=True)
    assert limited.stdout.strip() == "1", limited.stderr
    free = {k: v for k, v in os.environ.items() if k != "LOKY_MAX_CPU_COUNT"}  # the suite's limit
    pinned = subprocess.run(
        ["taskset", "-c", "0", sys.executable, "-c", count], capture_output=True, text=True, env=free
    )
    assert pinned.stdout.strip() == "1", pinned.stderr


def test_openmp_waits_passively_unless_the_user_chose_a_policy():
    read = "import run, os; print(os.environ['OMP_WAIT_POLICY'])"  # run.py sets it as it is imported
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    chosen = subprocess.run([sys.executable, "-c", read], cwd=ROOT, env=env, capture_output=True, text=True)
    assert chosen.stdout.strip() == "PASSIVE", chosen.stderr
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    kept = subprocess.run([sys.executable, "-c", read], cwd=ROOT, env=env, capture_output=True, text=True)
    assert kept.stdout.strip() == "ACTIVE", kept.stderr


def test_a_run_beside_a_process_holding_every_core_takes_one_thread_and_logs_it(lease_dir, tmp_path):
    process, _ = holder(len(os.sched_getaffinity(0)))
    try:
        default = [o for o in small(tmp_path) if not o.startswith("train.threads=")]  # the lease's choice
        result = run_py(tmp_path, *default, small_job=False, env={"TMPDIR": str(lease_dir)})
    finally:
        process.kill()
        process.wait()
    assert result.returncode == 0, result.stderr[-3000:]
    assert "1 CPU thread (no free core: other archbench jobs lease them all)" in result.stdout + result.stderr
    (run,) = all_runs(tmp_path)
    assert run.data.params["train.threads"] == "1"


def test_a_slurm_jobs_own_cpus_are_its_threads_whatever_else_holds_the_lease(lease_dir):
    process, _ = holder(len(os.sched_getaffinity(0)))  # on the node, another job holds the lease
    try:
        assert cpus.threads_for_job(None, 2, hold="allocated") == (2, "the Slurm job's CPUs")
        assert cpus.threads_for_job(1, 2, hold="allocated") == (1, "train.threads")
    finally:
        process.kill()
        process.wait()


@pytest.mark.parametrize("native", [False, True])
def test_bf16_on_a_cpu_without_it_says_so_in_one_line(tmp_path, monkeypatch, caplog, lease_dir, native):
    import torch

    from archbench import app
    from conftest import compose_job

    flags = {"avx512_bf16": native, "amx_bf16": False, "avx2": True}
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: flags)
    with caplog.at_level("WARNING", logger="archbench.app"):
        app.configure(compose_job(tmp_path, "train.amp=true", "device=cpu"))
        app.configure(
            compose_job(tmp_path, "train.amp=auto", "device=cpu")
        )  # bf16 off on a CPU: nothing to say
    said = [r.getMessage() for r in caplog.records if "bf16" in r.getMessage()]
    expected = (
        []
        if native
        else ["train.amp=true: this CPU has no native bf16 (avx512_bf16, AMX), so it runs slower than fp32"]
    )
    assert said == expected


def test_a_run_of_a_small_network_takes_one_thread_and_a_larger_one_every_free_core(lease_dir, tmp_path):
    # waiting threads sleep, and the mlp's short operations each pay for waking them: one thread
    # runs its epoch faster (app.SMALL_BATCH); cnn2's longer ones gain from every core
    cores = len(os.sched_getaffinity(0))
    if cores < 2:
        pytest.skip("one core: every run takes one thread")
    default = [o for o in small(tmp_path) if not o.startswith("train.threads=")]  # archbench's choice
    for model, why in (
        ("mlp", "1 CPU thread (8M mult-adds a batch: a second thread would only wait)"),
        ("cnn2", f"{cores} CPU threads (leased cores)"),
    ):
        result = run_py(tmp_path, f"model={model}", *default, small_job=False)
        assert result.returncode == 0, result.stderr[-3000:]
        assert why in result.stdout + result.stderr
    runs = {r.data.params["model"]: r.data.params["train.threads"] for r in all_runs(tmp_path)}
    assert runs == {"mlp": "1", "cnn2": str(cores)}
    # a count the user asks for wins
    result = run_py(tmp_path, "model=mlp", "train.threads=2", "seed=1", *default, small_job=False)
    assert "2 CPU threads (train.threads)" in result.stdout + result.stderr
