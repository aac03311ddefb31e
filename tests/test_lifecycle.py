"""Run lifecycle: failures, Ctrl-C, SIGTERM and divergence end runs truthfully; runs resume exactly."""

import signal
import sqlite3
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from archbench import app
from archbench.train import Trainer
from conftest import ROOT, all_runs, compose_job, patience, shrunk, store, wait_for


def only_run(tmp_path):
    (run,) = all_runs(tmp_path)
    return run


def steps(tmp_path, run, key="train_loss"):
    return [m.step for m in store(tmp_path).get_metric_history(run.info.run_id, key)]


def stop_at_epoch(monkeypatch, epoch, error):
    real = Trainer.train_one_epoch

    def train_one_epoch(self, x, y, e):
        if e == epoch:
            raise error
        return real(self, x, y, e)

    monkeypatch.setattr(Trainer, "train_one_epoch", train_one_epoch)


def test_exception_marks_the_run_failed_and_keeps_its_metrics(tmp_path, monkeypatch):
    stop_at_epoch(monkeypatch, 2, RuntimeError("disk on fire"))
    with pytest.raises(RuntimeError, match="disk on fire"):
        app.main(compose_job(tmp_path, "train.epochs=3"))
    run = only_run(tmp_path)
    assert run.info.status == "FAILED"
    assert run.data.tags["archbench.error"] == "RuntimeError: disk on fire"
    assert steps(tmp_path, run) == [1]
    path = store(tmp_path).download_artifacts(run.info.run_id, "error.txt", str(tmp_path))
    assert "Traceback" in open(path).read()


def test_ctrl_c_marks_the_run_killed(tmp_path, monkeypatch):
    stop_at_epoch(monkeypatch, 2, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        app.main(compose_job(tmp_path, "train.epochs=3"))
    run = only_run(tmp_path)
    assert run.info.status == "KILLED" and steps(tmp_path, run) == [1]


def test_nan_loss_fails_the_run_at_once(tmp_path):
    with pytest.raises(SystemExit, match=r"error: training loss became nan at epoch 1, batch \d+"):
        app.main(compose_job(tmp_path, "optimizer.lr=1e5", "train.epochs=3"))
    run = only_run(tmp_path)
    assert run.info.status == "FAILED" and "optimizer.lr (now 100000.0)" in run.data.tags["archbench.error"]
    assert steps(tmp_path, run) == []


def test_a_failed_job_leaves_nothing_open_for_the_next(tmp_path, monkeypatch):
    stop_at_epoch(monkeypatch, 1, RuntimeError("first job dies"))
    with pytest.raises(RuntimeError):
        app.main(compose_job(tmp_path))
    monkeypatch.undo()
    app.main(compose_job(tmp_path, "activation=tanh"))
    assert sorted(r.info.status for r in all_runs(tmp_path)) == ["FAILED", "FINISHED"]


def final_metrics(tmp_path, run_id):
    run = store(tmp_path).get_run(run_id)
    history = [m.value for m in store(tmp_path).get_metric_history(run_id, "train_loss")]
    keep = ("test_accuracy", "test_loss", "train_accuracy", "train_loss")
    return {k: run.data.metrics[k] for k in keep}, sorted(history)


def test_resume_after_ctrl_c_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    args = ("train.epochs=3", "optimizer=adam", "model=cnn3", "dataset.train_size=400")
    app.main(compose_job(tmp_path / "a", *args))
    reference = only_run(tmp_path / "a")

    stop_at_epoch(monkeypatch, 3, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        app.main(compose_job(tmp_path / "b", *args))
    monkeypatch.undo()
    killed = only_run(tmp_path / "b")
    assert killed.info.status == "KILLED" and steps(tmp_path / "b", killed) == [1, 2]
    app.main(compose_job(tmp_path / "b", f"resume={killed.info.run_id}"))
    resumed = only_run(tmp_path / "b")
    assert resumed.info.run_id == killed.info.run_id and resumed.info.status == "FINISHED"
    assert "archbench.error" not in resumed.data.tags and resumed.data.tags["archbench.resumed"] == "1"
    assert steps(tmp_path / "b", resumed) == [1, 2, 3]
    assert final_metrics(tmp_path / "b", resumed.info.run_id) == final_metrics(
        tmp_path / "a", reference.info.run_id
    )


@pytest.mark.parametrize("logged_by", ["older archbench", "a 5-seed preset's sweep"])
def test_resume_of_a_run_whose_config_differs_from_todays(tmp_path, monkeypatch, logged_by):
    stop_at_epoch(monkeypatch, 2, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        app.main(compose_job(tmp_path, "train.epochs=2"))
    monkeypatch.undo()
    killed = only_run(tmp_path).info.run_id
    (logged,) = (tmp_path / "mlruns").rglob(f"{killed}/artifacts/config.yaml")
    old = OmegaConf.load(logged)
    if logged_by == "older archbench":  # before the training options and seeds existed
        del old["scheduler"], old["seeds"]
        for key in ("early_stopping", "limit_batches", "overfit_batches"):
            del old.train[key]
    else:  # one job of `+experiment=activations`: resumed alone, it is one run, not a sweep
        old.seeds = 5
    OmegaConf.save(old, logged)
    app.main(compose_job(tmp_path, f"resume={killed}"))
    assert only_run(tmp_path).info.status == "FINISHED" and steps(tmp_path, only_run(tmp_path)) == [1, 2]


def test_resume_refuses_what_it_cannot_resume(tmp_path):
    app.main(compose_job(tmp_path))
    done = only_run(tmp_path).info.run_id
    with pytest.raises(SystemExit, match=f"error: resume={done}: that run already finished"):
        app.main(compose_job(tmp_path, f"resume={done}"))
    with pytest.raises(SystemExit, match="error: resume=0123abc: no such run"):
        app.main(compose_job(tmp_path, "resume=0123abc"))


def test_same_seed_same_numbers(tmp_path):
    args = ("train.epochs=2", "model=cnn3", "dataset.train_size=400")
    app.main(compose_job(tmp_path / "a", *args))
    app.main(compose_job(tmp_path / "b", *args))
    first, second = only_run(tmp_path / "a"), only_run(tmp_path / "b")
    assert final_metrics(tmp_path / "a", first.info.run_id) == final_metrics(
        tmp_path / "b", second.info.run_id
    )
    app.main(compose_job(tmp_path / "c", *args, "seed=1"))
    third = only_run(tmp_path / "c")
    assert final_metrics(tmp_path / "c", third.info.run_id) != final_metrics(
        tmp_path / "a", first.info.run_id
    )


# --- real signals to a real process ----------------------------------------------------------

NETWORK = ["model.hidden_sizes=[1024,1024]", "dataset.train_size=8000"]  # ~1.4 s an epoch on 1 CPU
# A job signalled once its first epoch is in the store: 3 epochs from its end, many times the ~0.1 s
# from that look to the signal, so it cannot finish first however fast the machine
SLOW = [*NETWORK, "train.epochs=4"]
# A job that is stopped and never resumed: as long as we like, at no cost
ENDLESS = [*NETWORK, "train.epochs=1000"]


STARTED: list[subprocess.Popen] = []


def start(tmp_path, *args):
    cmd = [sys.executable, "run.py", *shrunk(tmp_path, args)]
    STARTED.append(subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return STARTED[-1]


@pytest.fixture(autouse=True)
def _end_what_was_started():
    """A job a test left running (it failed before its signal) is killed at the test's end."""
    yield
    while STARTED:
        process = STARTED.pop()
        if process.poll() is None:
            process.kill()
            process.communicate()


def epochs_logged(db, count: str = "*") -> int:
    """Epochs logged (or, count="DISTINCT run_uuid", the runs that have logged one). Read-only, with
    sqlite3: an MlflowClient here would race the job's own schema migration."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            query = f"SELECT COUNT({count}) FROM metrics WHERE key = 'train_loss'"
            return conn.execute(query).fetchone()[0]
    except sqlite3.OperationalError:  # no database or no table yet
        return 0


def wait_for_epoch(tmp_path, process, timeout=120):
    """The first run with an epoch in the store, once one has logged it."""
    db = tmp_path / "mlruns" / "mlflow.db"
    wait_for(lambda: epochs_logged(db), "an epoch in the store", timeout, process)
    return [r for r in all_runs(tmp_path) if steps(tmp_path, r)][0]


@pytest.mark.slow
def test_sigterm_marks_killed_and_resume_finishes_it_exactly(tmp_path):
    process = start(tmp_path / "a", *SLOW)
    run = wait_for_epoch(tmp_path / "a", process)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=patience(60))
    assert process.returncode == 143, err
    assert "interrupted (stopped by SIGTERM)" in err
    killed = store(tmp_path / "a").get_run(run.info.run_id)
    assert killed.info.status == "KILLED" and steps(tmp_path / "a", killed)[0] == 1
    assert killed.data.tags["archbench.error"] == "Terminated: stopped by SIGTERM"

    resume = start(tmp_path / "a", f"resume={run.info.run_id}")
    reference = start(tmp_path / "b", *SLOW)  # side by side: both are mostly start-up
    assert resume.wait(timeout=patience(180)) == 0, resume.communicate()
    assert reference.wait(timeout=patience(180)) == 0, reference.communicate()
    (ref,) = all_runs(tmp_path / "b")
    assert store(tmp_path / "a").get_run(run.info.run_id).info.status == "FINISHED"
    assert steps(tmp_path / "a", run) == [1, 2, 3, 4]
    assert final_metrics(tmp_path / "a", run.info.run_id) == final_metrics(tmp_path / "b", ref.info.run_id)


@pytest.mark.slow
def test_sigterm_during_a_sweep_closes_parent_and_job(tmp_path):
    process = start(tmp_path, "-m", *ENDLESS, "activation=relu,tanh")
    wait_for_epoch(tmp_path, process)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=patience(60))
    assert process.returncode == 143, err
    statuses = {r.info.run_name.split("-")[0]: r.info.status for r in all_runs(tmp_path)}
    assert statuses == {"sweep": "KILLED", "mlp": "KILLED"}
