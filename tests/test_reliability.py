"""No run lost or counted twice, whatever the moment its process dies: killed at every instant around
an epoch's end and resumed, a run equals one never stopped; a RUNNING run's heartbeat tells a sweep on
any host whether its process is gone; of two sweeps that find the same stopped run, exactly one
resumes it."""

import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import torch

from archbench.sweeps import reuse
from archbench.tracking import runs
from conftest import ROOT, all_runs, patience, run_py, small, store

EPOCHS = 3


def history(mlflow_client, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in mlflow_client.get_metric_history(run_id, key)]


def by_experiment(mlflow_client, name: str):
    (run,) = mlflow_client.search_runs([mlflow_client.get_experiment_by_name(name).experiment_id])
    return run


@pytest.mark.slow
def test_a_job_killed_at_any_instant_of_an_epochs_end_logs_each_epoch_once_and_ends_as_if_never_stopped(
    tmp_path,
):
    overrides = [
        *small(tmp_path),
        f"train.epochs={EPOCHS}",
        "dataset.train_size=2000",
        "dataset.test_size=500",
        "seed=3",
        "tracking.heartbeat_s=3600",
    ]  # fmt: skip  (the thread's beats are not numbered)
    done = subprocess.run(
        [sys.executable, "tests/killpoints.py", str(tmp_path), *overrides],
        cwd=ROOT, capture_output=True, text=True, timeout=patience(900),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    instants = json.loads((tmp_path / "instants.json").read_text())
    assert len(instants) >= 20, instants
    assert {i["how"] for i in instants} == {"kill", "tear"}  # a checkpoint's upload torn by the kill too
    assert all(i["killed"] == -signal.SIGKILL for i in instants), instants
    mlflow_client = store(tmp_path)
    reference = by_experiment(mlflow_client, "reference")
    keys = sorted(reference.data.metrics)
    timings = {"epoch_time_s", "train_time_s"}  # (a resumed run's time is its processes' sum)
    expected = {k: history(mlflow_client, reference.info.run_id, k) for k in keys}
    assert [step for step, _ in expected["train_loss"]] == list(range(1, EPOCHS + 1))
    weights = runs.Run(mlflow_client, reference.info.run_id).load_state()["model"]
    for instant in instants:
        run = by_experiment(mlflow_client, instant["experiment"])
        where = f"killed at event {instant['event']} ({instant['how']}: {instant['label']})"
        assert instant["resumed"] in (0, None), where  # None: killed after its end was recorded
        assert run.info.status == "FINISHED", where
        assert sorted(run.data.metrics) == keys, where
        for key in keys:
            got = history(mlflow_client, run.info.run_id, key)
            if key in timings:
                assert [s for s, _ in got] == [s for s, _ in expected[key]], (where, key, got)
            else:
                assert got == expected[key], (where, key, got)  # each step once, with the same value
        final = runs.Run(mlflow_client, run.info.run_id).load_state()
        assert final["epoch"] == EPOCHS, where
        assert all(torch.equal(final["model"][name], w) for name, w in weights.items()), where


def fresh_store(tmp_path):
    (tmp_path / "mlruns").mkdir(exist_ok=True)
    return store(tmp_path)


def test_a_torn_checkpoint_falls_back_to_the_slot_before(tmp_path):
    mlflow_client = fresh_store(tmp_path)
    run = runs.Run.start(mlflow_client, "x", "r", {})
    run.log_state({"epoch": 1, "model": {"w": torch.ones(3)}})
    run.log_state({"epoch": 2, "model": {"w": torch.zeros(3)}})
    assert run.load_state()["epoch"] == 2
    (slot,) = tmp_path.rglob("even.pt")
    slot.write_bytes(slot.read_bytes()[:100])  # the write of epoch 2's, cut short
    assert run.load_state()["epoch"] == 1
    (slot,) = tmp_path.rglob("odd.pt")
    slot.write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="no readable checkpoint"):
        run.load_state()


def test_a_run_beats_while_open_and_not_after(tmp_path, monkeypatch):
    mlflow_client = fresh_store(tmp_path)
    run = runs.Run.start(mlflow_client, "x", "r", {})
    first = mlflow_client.get_run(run.run_id).data.tags[runs.HEARTBEAT_TAG]
    assert abs(int(first) - time.time()) < patience(60)
    beats = []
    monkeypatch.setattr(runs, "beat", lambda: beats.append(time.time()) or str(int(time.time())))
    run.heartbeat_s = 0.05
    with run:
        deadline = time.monotonic() + patience(60)
        while len(beats) < 3:  # the event waited for: three beats of the thread
            assert time.monotonic() < deadline, "no heartbeat from the open run"
            time.sleep(0.01)
    after = len(beats)
    assert mlflow_client.get_run(run.run_id).info.status == "FINISHED"
    assert not any(t.name.startswith("heartbeat-") for t in threading.enumerate())  # stopped and joined
    assert len(beats) == after


def test_two_hosts_one_alive_one_stale(tmp_path):
    """Two runs tagged by processes on another host (a Slurm node): a fresh heartbeat is alive; one
    older than sweep.stale_after is orphaned; a run without the tag is judged by its last metric."""
    mlflow_client = fresh_store(tmp_path)
    made = {}
    for name, age in (("fresh", 10), ("stale", 1000)):
        run = runs.Run.start(mlflow_client, "x", name, {})
        mlflow_client.set_tag(run.run_id, runs.PROCESS_TAG, f"node-{name}.cluster:4242:1700000000")
        mlflow_client.set_tag(run.run_id, runs.HEARTBEAT_TAG, str(int(time.time()) - age))
        made[name] = mlflow_client.get_run(run.run_id)
    assert not reuse.orphaned(made["fresh"], stale_after=300)
    assert reuse.orphaned(made["stale"], stale_after=300)
    assert not reuse.orphaned(made["stale"], stale_after=3000)
    old = runs.Run.start(mlflow_client, "x", "old", {})
    mlflow_client.delete_tag(old.run_id, runs.HEARTBEAT_TAG)
    mlflow_client.set_tag(old.run_id, runs.PROCESS_TAG, "elsewhere:1:1")
    old.log_metrics({"train_loss": 1.0}, step=1)
    mlflow_client.delete_tag(old.run_id, runs.HEARTBEAT_TAG)  # (log_metrics beats: a run from before)
    logged = mlflow_client.get_run(old.run_id)
    assert reuse.last_sign_of_life(logged) == pytest.approx(time.time(), abs=patience(60))
    assert not reuse.orphaned(logged, stale_after=300)
    here = runs.Run.start(mlflow_client, "x", "here", {})  # this process, on this host: alive
    assert not reuse.orphaned(mlflow_client.get_run(here.run_id), stale_after=0)
    mlflow_client.set_tag(here.run_id, runs.PROCESS_TAG, f"{socket.gethostname()}:999999999:1")
    assert reuse.orphaned(mlflow_client.get_run(here.run_id), stale_after=10**9)  # its pid is gone


def claims_at_once(mlflow_client, run_id: str, claimants: int = 8) -> list:
    """`claimants` threads claim the run at the same moment; what each got."""
    run = mlflow_client.get_run(run_id)
    barrier, got = threading.Barrier(claimants), [None] * claimants

    def one(i):
        barrier.wait()
        got[i] = reuse.claim(mlflow_client, run, stale_after=300)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(claimants)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return got


def test_of_sweeps_claiming_one_run_at_once_exactly_one_wins_on_sqlite(tmp_path):
    mlflow_client = fresh_store(tmp_path)
    for _ in range(5):
        run = runs.Run.start(mlflow_client, "x", "r", {})
        got = claims_at_once(mlflow_client, run.run_id)
        assert [g for g in got if g] == ["archbench.claim.1.0"], got
        assert reuse.claim(mlflow_client, mlflow_client.get_run(run.run_id), stale_after=300) is None
        # a claim whose sweep never reopened the run lapses after stale_after: the next try's key
        assert (
            reuse.claim(mlflow_client, mlflow_client.get_run(run.run_id), stale_after=-1)
            == "archbench.claim.1.1"
        )


def started_sweep(args):
    return subprocess.Popen(
        [sys.executable, "run.py", *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


@pytest.mark.slow
def test_a_stale_run_on_another_host_is_resumed_a_live_one_left_alone_and_two_sweeps_resume_once(tmp_path):
    args = ["-m", "activation=relu,tanh", "seed=0", *small(tmp_path), f"train.epochs={EPOCHS}"]
    first = run_py(tmp_path, *args)
    assert first.returncode == 0, first.stderr[-3000:]
    mlflow_client = store(tmp_path)
    jobs = {r.data.tags["activation"]: r for r in all_runs(tmp_path) if "activation" in r.data.tags}
    # as if a node died mid-run (relu's) and another still trains (tanh's): RUNNING, tagged by processes
    # on other hosts, one heartbeat long stale and one fresh
    for activation, age in (("relu", 10_000), ("tanh", 0)):
        run_id = jobs[activation].info.run_id
        mlflow_client.update_run(run_id, "RUNNING")
        mlflow_client.set_tag(run_id, runs.PROCESS_TAG, f"node-{activation}:4242:1700000000")
        mlflow_client.set_tag(run_id, runs.HEARTBEAT_TAG, str(int(time.time()) - age))
    again = run_py(tmp_path, *args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "reusing 0 finished runs, resuming 1, training 1" in again.stdout, again.stdout
    relu, tanh = (mlflow_client.get_run(jobs[a].info.run_id) for a in ("relu", "tanh"))
    assert relu.info.status == "FINISHED" and relu.data.tags["archbench.resumed"] == "1"
    assert [s for s, _ in history(mlflow_client, relu.info.run_id, "train_loss")] == [1, 2, 3]
    assert tanh.info.status == "RUNNING" and "archbench.resumed" not in tanh.data.tags  # left alone
    assert not any(k.startswith(reuse.CLAIM_PARAM) for k in tanh.data.params)
    # relu's stopped again (KILLED, as Ctrl-C leaves it): two sweeps started together resume it once
    mlflow_client.set_terminated(relu.info.run_id, "KILLED")
    one = ["-m", "activation=relu", "seed=0", *small(tmp_path), f"train.epochs={EPOCHS}"]
    both = [started_sweep([*one, f"hydra.sweep.dir={tmp_path}/outputs/sweep-{i}"]) for i in range(2)]
    outs = [p.communicate(timeout=patience(600)) for p in both]
    assert [p.returncode for p in both] == [0, 0], [e[-3000:] for _, e in outs]
    said = [re.search(r"reusing (\d) finished runs, resuming (\d), training (\d)(, waiting for (\d))?", o)
            for o, _ in outs]  # fmt: skip
    assert sorted(int(m.group(2)) for m in said) == [0, 1], [o for o, _ in outs]  # exactly one resumed
    assert [int(m.group(3)) for m in said] == [0, 0]  # and neither trained a run beside it
    run = mlflow_client.get_run(relu.info.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["archbench.resumed"] == "2"
    claims = [k for k in run.data.params if k.startswith(f"{reuse.CLAIM_PARAM}2.")]
    assert claims == [f"{reuse.CLAIM_PARAM}2.0"]
    assert [s for s, _ in history(mlflow_client, run.info.run_id, "train_loss")] == [1, 2, 3]


def test_submitits_requeue_cut_short_by_the_requeues_own_sigterm_still_counts_as_requeued(caplog):
    # Slurm signals every process of a job it requeues: submitit's `scontrol requeue` child may get the
    # SIGTERM before it exits, and submitit's handler then raises CalledProcessError, not SystemExit
    run = runs.Run(None, "r1")

    def submitit_handler(signum, frame):
        raise subprocess.CalledProcessError(-signal.SIGTERM, ["scontrol", "requeue", "20"])

    run._saved_handlers[runs.PREEMPT] = submitit_handler
    with pytest.raises(runs.Terminated, match=r"requeued by Slurm at SIGUSR2 \(time limit or pre-emption\)"):
        run._stop(runs.PREEMPT)
    assert "Requeued job 20" in caplog.text and not run._busy

    def failed_otherwise(signum, frame):  # a requeue Slurm refused: not a requeue
        raise subprocess.CalledProcessError(1, ["scontrol", "requeue", "20"])

    run._saved_handlers[runs.PREEMPT] = failed_otherwise
    with pytest.raises(subprocess.CalledProcessError):
        run._stop(runs.PREEMPT)
