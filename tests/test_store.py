"""A store that no sequence of starts can break: processes started together on a fresh or an old
SQLite store, a server that does not answer or goes away mid-run, and a store that is locked,
read-only or full. Every failure is one line on stderr and exit code 1, never a traceback."""

import os
import secrets
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from subprocess import PIPE

import pytest

from archbench import app
from archbench.tracking import records
from archbench.tracking import store as store_module
from conftest import (
    ROOT,
    all_runs,
    compose_job,
    free_port,
    patience,
    shrunk,
    stop_group,
    wait_for,
    wait_for_health,
)
from test_lifecycle import SLOW, epochs_logged
from test_server import missing

# what a job prints (urllib3's warning, through MLflow's HTTP retries) when a call finds the server gone
REFUSED = "Retrying ("
OLD_REVISION = "0584bdc529eb"  # MLflow 2.x's schema: before 3.0's logged-model tables


def start(tmp_path, *args, program=("run.py",), out=None):
    """`python run.py ARGS` (shrunk as conftest.run_py does) or another program, not waited for; its
    output in pipes, or all of it in the file `out`."""
    cmd = [sys.executable, *program, *(shrunk(tmp_path, args) if program == ("run.py",) else args)]
    streams = {"stdout": out, "stderr": subprocess.STDOUT} if out else {"stdout": PIPE, "stderr": PIPE}
    return subprocess.Popen(cmd, cwd=ROOT, text=True, **streams)


def one_line_error(process: subprocess.Popen, timeout=120) -> str:
    """The single `error: ...` line a failed command printed, after checking that is all it said."""
    out, err = process.communicate(timeout=patience(timeout))
    assert process.returncode == 1, f"exit {process.returncode}\n{out[-2000:]}\n{err[-3000:]}"
    assert "Traceback" not in out + err, err[-3000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-3000:]
    return lines[0]


def old_store(path: Path, revision: str = OLD_REVISION) -> None:
    """A SQLite store as an older MLflow left it: MLflow's own migrations, stopped at `revision`."""
    from alembic import command
    from mlflow.store.db.utils import _get_alembic_config
    from mlflow.store.tracking.dbmodels.initial_models import Base
    from sqlalchemy import create_engine

    path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(f"sqlite:///{path}")
    Base.metadata.create_all(engine)
    config = _get_alembic_config(f"sqlite:///{path}")
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
    engine.dispose()


def schema(db: Path) -> tuple[str, list[str]]:
    with sqlite3.connect(db) as conn:
        (version,) = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        leftovers = [
            r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE name LIKE '_alembic_tmp%'")
        ]
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    return version, leftovers


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["fresh", "old"])
def test_everything_started_at_once_succeeds_and_the_store_stays_readable(tmp_path, kind):
    from mlflow.store.db.utils import _get_latest_schema_revision

    db = tmp_path / "mlruns" / "mlflow.db"
    if kind == "old":
        old_store(db)
    args = ("dataset.train_size=200",)
    processes = [start(tmp_path, *args, f"hydra.run.dir={tmp_path}/run{i}") for i in range(3)]
    # seed 7: not the single runs' seed 0, which the sweep would reuse if one had finished by then
    processes.append(start(tmp_path, "-m", *args, "activation=relu,tanh", "seed=7"))
    report = ("--tracking-uri", f"sqlite:///{db}", "--out", str(tmp_path / "cmp"))
    processes.append(start(tmp_path, *report, program=("-m", "archbench.report")))
    for process in processes[:-1]:
        out, err = process.communicate(timeout=patience(300))
        assert process.returncode == 0, err[-3000:]
    out, err = processes[-1].communicate(timeout=patience(120))
    # the report may start before any sweep exists: then it says so
    assert processes[-1].returncode == 0 or err.splitlines()[-1].startswith("nothing to compare"), err
    assert "Traceback" not in err
    version, leftovers = schema(db)
    assert version == _get_latest_schema_revision() and leftovers == []
    runs = all_runs(tmp_path)
    assert len(runs) == 6 and {r.info.status for r in runs} == {"FINISHED"}  # 3 + 2 jobs + the sweep's
    backups = list(db.parent.glob(f"mlflow.db.{OLD_REVISION}.bak"))
    assert len(backups) == (kind == "old"), "an old store is copied once before it is upgraded"


def test_an_old_store_is_backed_up_then_upgraded(tmp_path):
    from mlflow.store.db.utils import _get_latest_schema_revision

    db = tmp_path / "mlruns" / "mlflow.db"
    old_store(db)
    store_module.client(f"sqlite:///{db}").search_experiments()
    assert schema(db)[0] == _get_latest_schema_revision()
    assert schema(db.with_name(f"mlflow.db.{OLD_REVISION}.bak"))[0] == OLD_REVISION


def timed(process: subprocess.Popen) -> tuple[subprocess.Popen, float]:
    tic = time.monotonic()
    process.wait(timeout=patience(300))
    return process, time.monotonic() - tic


@pytest.mark.slow  # several run.py processes: ~13 s
def test_a_server_that_does_not_answer_fails_fast_before_any_data(tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    # fast against this machine, measured now: the same start-up (config, torch, the network built)
    # that stops before the store; MLflow's own retries (~4 minutes) would be far over the bound
    inspect, start_up = timed(start(tmp_path / "inspect", "mode=inspect"))
    assert inspect.returncode == 0, inspect.communicate()
    refused, took = timed(start(tmp_path, f"tracking.uri={uri}", "dataset=fashion_mnist"))
    line = one_line_error(refused)
    assert line.startswith(f"error: tracking.uri={uri} does not answer (connection refused"), line
    assert f"at /health, {store_module.PROBE_S} s)" in line and "make server" in line
    bound = 2 * start_up + 2 * store_module.PROBE_S
    assert took < bound, f"{took:.1f} s against a bound of {bound:.1f} s ({start_up:.1f} s start-up)"
    assert not (tmp_path / "data").exists(), "no data was read"
    sweep = one_line_error(start(tmp_path, "-m", f"tracking.uri={uri}", "activation=relu,tanh"))
    assert sweep == line
    assert not (tmp_path / "mlruns").exists()


@pytest.mark.slow
def test_a_server_restarted_during_a_run_loses_nothing(tmp_path, monkeypatch):
    port, folder = free_port(), tmp_path / "server"
    folder.mkdir()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "archbench.server", "--backend-store-uri", f"sqlite:///{folder}/mlflow.db"]
    cmd += ["--artifacts-destination", str(folder / "artifacts"), "--port", str(port), "--workers", "1"]
    password = "admin-" + secrets.token_hex(8)
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "ARCHBENCH_ADMIN_PASSWORD": password}
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")  # the job's, and this process's MLflow calls
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)

    def serve() -> subprocess.Popen:
        log = open(folder / "server.log", "a")
        server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for_health(url, server, timeout=90, log=folder / "server.log")
        return server

    server = serve()
    said = tmp_path / "job.log"  # the job's output, read while it runs
    args = [*SLOW, "train.epochs=3", "tracking.log_model=true", f"tracking.uri={url}"]
    with open(said, "w") as log:
        job = start(tmp_path, *args, out=log)
    try:
        wait_for(lambda: epochs_logged(folder / "mlflow.db"), "the first epoch on the server", 120, job)
        stop_group(server)  # after the first epoch: the next ones are logged into the outage
        down = time.monotonic()
        shown = lambda: said.read_text()[-3000:]  # noqa: E731
        wait_for(lambda: REFUSED in said.read_text(), "the job's first call into the outage", 120, job, shown)
        server = serve()
        outage = time.monotonic() - down
        job.wait(timeout=patience(300))
        finished = time.monotonic() - down
        assert job.returncode == 0, said.read_text()[-3000:]
        import mlflow

        mlflow_client = mlflow.MlflowClient(url)
        experiment = mlflow_client.get_experiment_by_name("archbench").experiment_id
        (run,) = mlflow_client.search_runs([experiment])
        assert run.info.status == "FINISHED"
        for key in ("train_loss", "test_accuracy", "epoch_time_s"):
            history = mlflow_client.get_metric_history(run.info.run_id, key)
            assert sorted(m.step for m in history) == [1, 2, 3], key
        assert len(run.outputs.model_outputs) == 1
    finally:
        job.kill()
        stop_group(server)
    print(f"server down {outage:.1f} s; the run finished {finished:.1f} s after the server went down")


@pytest.mark.slow
def test_a_locked_store_is_one_line(tmp_path):
    db = tmp_path / "mlruns" / "mlflow.db"
    store_module.client(f"sqlite:///{db}").search_experiments()
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # what a long write by another program looks like
    try:
        line = one_line_error(start(tmp_path))
    finally:
        holder.rollback()
        holder.close()
    assert line.startswith(f"error: the MLflow store {db} is locked by another process"), line
    assert all_runs(tmp_path) == []


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs: a disk that fills up, or turns read-only, for real (mounting needs root)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode:
        missing(f"cannot mount a tmpfs ({mounted.stderr.decode().strip()}): needs root")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], capture_output=True)


@pytest.mark.slow  # several run.py processes: ~13 s
def test_a_read_only_store_is_one_line(tmp_path, small_disk):
    made = tmp_path / "made" / "mlflow.db"  # made here and copied: files open on the disk block a remount
    store_module.client(f"sqlite:///{made}").search_experiments()
    db = small_disk / "mlruns" / "mlflow.db"
    db.parent.mkdir()
    shutil.copy(made, db)
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    line = one_line_error(start(tmp_path, f"tracking.uri=sqlite:///{db}"))
    assert line.startswith(f"error: the MLflow store {db} is read-only"), line
    assert "attempt to write a readonly database" in line and "make it writable" in line
    # reading needs no lock file (none can be made there): the report reads it
    report = start(tmp_path, "--tracking-uri", f"sqlite:///{db}", program=("-m", "archbench.report"))
    _, err = report.communicate(timeout=patience(120))
    assert err.strip().endswith("no sweep recorded yet") and "Traceback" not in err, err


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_the_run_is_failed_where_the_store_can_say_so(tmp_path, small_disk):
    # the database on the big disk, the run's artifacts on the small one: the checkpoint does not fit
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    mlflow_client = store_module.client(uri)
    mlflow_client.create_experiment("archbench", artifact_location=small_disk.as_uri())
    (small_disk / "filler").write_bytes(b"\0" * (4 * 2**20 - 200 * 2**10))  # 200 KiB left
    line = one_line_error(start(tmp_path, "model.hidden_sizes=[400]"))  # a 1.3 MB checkpoint
    assert line.startswith(f"error: no space left for the MLflow store {tmp_path}/mlruns/mlflow.db"), line
    assert "No space left on device" in line
    (run,) = all_runs(tmp_path)
    assert run.info.status == "FAILED" and "No space left" in run.data.tags["archbench.error"]
    assert "train_loss" in run.data.metrics, "what was logged before stays"

    # the database's own disk full: nothing can be recorded, and it says so
    for child in small_disk.iterdir():
        shutil.rmtree(child) if child.is_dir() else child.unlink()
    db = small_disk / "db" / "mlflow.db"
    store_module.client(f"sqlite:///{db}").search_experiments()
    with open(small_disk / "filler", "wb") as filler:
        try:
            while True:
                filler.write(b"\0" * 2**16)
                filler.flush()
        except OSError:
            pass
    line = one_line_error(start(tmp_path, f"tracking.uri=sqlite:///{db}"))
    assert line.startswith(f"error: no space left for the MLflow store {db}"), line
    assert "database or disk is full" in line


@pytest.mark.parametrize("mode", ["RUN", "MULTIRUN"])
def test_a_store_failure_at_the_end_of_a_run_fails_it_in_one_line(tmp_path, monkeypatch, mode):
    def locked(*args, **kwargs):
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(records, "log_outcome", locked)
    # one line: SystemExit for a single run; in a sweep the job's own error, and the sweep goes on
    expected = SystemExit if mode == "RUN" else store_module.StoreError
    with pytest.raises(expected, match=r"^(error: )?the MLflow store .* is locked by another process"):
        app.main(compose_job(tmp_path, f"hydra.mode={mode}"))
    (run,) = all_runs(tmp_path)
    assert run.info.status == "FAILED" and "database is locked" in run.data.tags["archbench.error"]


def test_failures_that_are_not_the_stores_are_not_dressed_as_such():
    assert store_module.failure(ValueError("a bug"), "sqlite:///x.db") is None
    assert store_module.failure(OSError(28, "No space left on device"), "sqlite:///x.db") is None  # not ours


def test_a_new_store_is_a_copy_of_mlflows_own_empty_one(tmp_path, monkeypatch):
    """The template (built once by MLflow's migrations, cached): the same schema as MLflow builds,
    and MLflow's Default experiment with the new store's own artifact location."""
    from mlflow.store.db.utils import _get_latest_schema_revision

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    made = {}
    for name in ("first", "second"):  # the first builds the template, the second copies it
        db = tmp_path / name / "mlflow.db"
        experiments = store_module.client(f"sqlite:///{db}").search_experiments()
        made[name] = schema(db), [(e.name, e.artifact_location) for e in experiments]
    assert list((tmp_path / "cache" / "archbench").glob("empty-store-mlflow-*.db"))
    assert made["first"] == made["second"] and made["first"][0][0] == _get_latest_schema_revision()
    assert made["second"][1] == [("Default", str(tmp_path / "mlruns" / "0"))]
    ours = tmp_path / "first" / "mlflow.db"
    mlflows = tmp_path / "mlflow-own.db"
    import mlflow

    mlflow.MlflowClient(f"sqlite:///{mlflows}").search_experiments()  # MLflow alone, no template

    def tables(db):  # each table's DDL as a set of lines: MLflow's own builds order constraints freely
        with sqlite3.connect(db) as conn:
            found = conn.execute("SELECT type, name, sql FROM sqlite_master").fetchall()
        lines = lambda sql: sorted((sql or "").replace(",", "").splitlines())  # noqa: E731
        return sorted((kind, name, lines(sql)) for kind, name, sql in found)

    assert tables(mlflows) == tables(ours) and len(tables(ours)) > 50
