"""Team tracking: a sweep's runs reach a real PostgreSQL through `archbench.server`, and the report reads
them back. PostgreSQL and the MLflow server are started here, on 127.0.0.1 only, and stopped after."""

import glob
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import ROOT, free_port, run_py, small, stop_group, wait_for_health

pytestmark = pytest.mark.postgres

PASSWORD = "pw-" + secrets.token_hex(8)  # the postgres role's; must never show in any output


def missing(reason: str):
    """Skip for want of a system tool, or fail where CI installs it."""
    if os.environ.get("ARCHBENCH_STRICT"):
        pytest.fail(f"{reason}; ARCHBENCH_STRICT is set, so this is a failure")
    pytest.skip(reason)


def tiny(tmp_path: Path) -> list[str]:
    """conftest.small without its SQLite tracking.uri, so the URI under test is the only one."""
    return [o for o in small(tmp_path) if not o.startswith("tracking.uri=")]


@pytest.fixture(scope="module")
def postgres():
    """A throwaway cluster on 127.0.0.1 at a free port, with a database `mlflow`; yields its URI."""
    initdbs = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not initdbs:
        missing("PostgreSQL not installed (sudo apt-get install postgresql)")
    try:
        import psycopg2
    except ImportError:
        missing("psycopg2 not installed (pip install -e '.[server]')")
    bin_dir = Path(initdbs[-1]).parent  # the newest major version
    base = Path(tempfile.mkdtemp(prefix="archbench-pg-"))  # in /tmp: reachable by postgres, short socket path
    run_as: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        if not shutil.which("runuser"):
            missing("running as root without runuser, so PostgreSQL cannot be started")
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            missing("running as root with no `postgres` user to start PostgreSQL as")
        os.chown(base, owner.pw_uid, owner.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    (base / "pw").write_text(PASSWORD)  # postgres reads it through the folder it owns
    data, port = base / "data", free_port()

    def pg(tool: str, *args: str) -> None:
        done = subprocess.run(
            [*run_as, str(bin_dir / tool), *args], cwd=base, capture_output=True, text=True, timeout=90
        )
        assert done.returncode == 0, f"{tool} failed:\n{done.stdout}{done.stderr}"

    try:
        # a password over TCP, as a team server would have; C locale whatever the environment says
        pg("initdb", "-D", str(data), "-U", "postgres", f"--pwfile={base / 'pw'}", "--auth-local=trust",
           "--auth-host=scram-sha-256", "--locale=C", "-E", "UTF8", "--no-sync")  # fmt: skip
        with open(data / "postgresql.conf", "a") as conf:
            # loopback only; fsync off: a test cluster need not survive a power cut
            conf.write(f"listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{base}'\n")
            conf.write("fsync = off\nsynchronous_commit = off\n")
        pg("pg_ctl", "-D", str(data), "-l", str(base / "log"), "-w", "-t", "60", "start")
        conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", password=PASSWORD)
        conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
        conn.cursor().execute("CREATE DATABASE mlflow")
        conn.close()
        # the URI a user types: SQLAlchemy 2.1 takes it with psycopg 3, which the `server` extra installs
        yield f"postgresql://postgres:{PASSWORD}@127.0.0.1:{port}/mlflow"
    finally:
        if (data / "postmaster.pid").exists():
            stop = [*run_as, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]
            subprocess.run(stop, cwd=base, capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def server(postgres, tmp_path_factory):
    """`python -m archbench.server` on that cluster, at a free loopback port; yields its URL and log."""
    folder, port = tmp_path_factory.mktemp("server"), free_port()
    log = folder / "server.log"
    cmd = [sys.executable, "-m", "archbench.server", "--backend-store-uri", postgres]
    cmd += ["--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--workers", "1"]  # 2 cores here; each worker costs seconds to start
    # MLflow's GenAI job runner: 7 processes that double the start-up time on 2 cores (21 s vs 9 s)
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(log, "w") as out:
        # its own session, so teardown stops MLflow's worker processes too
        proc = subprocess.Popen(
            cmd, cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(url, proc, timeout=90, log=log)  # creating MLflow's tables takes ~10 s
        yield SimpleNamespace(url=url, log=log, artifacts=folder / "artifacts", pid=proc.pid)
    finally:
        stop_group(proc)


@pytest.fixture(scope="module")
def sweep(server, tmp_path_factory):
    """A two-job sweep tracked on the server; returns the folder it ran in."""
    tmp = tmp_path_factory.mktemp("sweep")
    result = run_py(
        tmp, "-m", *tiny(tmp), "activation=relu,tanh", f"tracking.uri={server.url}", small_job=False
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return tmp


def test_sweep_runs_land_in_postgres(postgres, server, sweep, tmp_path):
    import mlflow
    import psycopg2

    conn = psycopg2.connect(postgres)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT run_uuid, status FROM runs WHERE name LIKE 'sweep-%'")
            ((parent_id, parent_status),) = cur.fetchall()
            cur.execute(
                "SELECT r.name, r.status FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
                "WHERE t.key = 'mlflow.parentRunId' AND t.value = %s ORDER BY r.name",
                (parent_id,),
            )
            children = cur.fetchall()
    finally:
        conn.close()
    assert parent_status == "FINISHED"
    assert children == [("mlp-relu-sgd", "FINISHED"), ("mlp-tanh-sgd", "FINISHED")]

    mlflow_client = mlflow.MlflowClient(tracking_uri=server.url)
    runs = mlflow_client.search_runs(
        [mlflow_client.get_experiment_by_name("archbench").experiment_id],
        f"tags.mlflow.parentRunId = '{parent_id}'",
    )
    assert len(runs) == 2
    for run in runs:
        assert 0 <= run.data.metrics["test_accuracy"] <= 1
        assert run.data.params["tracking.uri"] == server.url
        summary = mlflow_client.download_artifacts(run.info.run_id, "model_summary.txt", str(tmp_path))
        assert "Total params" in Path(summary).read_text()
        # uploaded through the server into its --artifacts-destination, not written by the job itself
        stored = server.artifacts.rglob("model_summary.txt")
        assert any(run.info.run_id in path.parts for path in stored)


def test_report_reads_the_sweep_back(server, sweep, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "archbench.compare.report", "--tracking-uri", server.url,
         "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    # rows: | rank | configuration | n | mean | ...; each configuration with its one finished seed
    rows = [line.split(" | ") for line in result.stdout.splitlines() if " | activation=" in line]
    assert sorted(row[1:3] for row in rows) == [["activation=relu", "1"], ["activation=tanh", "1"]]
    assert "1 seed per configuration" in result.stdout


def test_mlflow_tracking_uri_alone_is_honoured(server, tmp_path):
    import mlflow

    env = {"MLFLOW_TRACKING_URI": server.url}
    result = run_py(tmp_path, *tiny(tmp_path), "tracking.experiment=env-only", small_job=False, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    mlflow_client = mlflow.MlflowClient(tracking_uri=server.url)
    (run,) = mlflow_client.search_runs([mlflow_client.get_experiment_by_name("env-only").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "mlp-relu-sgd"
    assert run.data.params["tracking.uri"] == server.url


def test_server_without_a_backend_store_says_how_to_give_one():
    env = {k: v for k, v in os.environ.items() if k != "ARCHBENCH_BACKEND_STORE_URI"}
    result = subprocess.run(
        [sys.executable, "-m", "archbench.server"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1 and "ARCHBENCH_BACKEND_STORE_URI" in result.stderr
    assert "--backend-store-uri" in result.stderr


def test_database_password_stays_out_of_the_server_output(server, sweep):
    output = server.log.read_text()
    assert "--backend-store-uri postgresql://postgres:***@127.0.0.1:" in output
    assert "--host 127.0.0.1" in output
    assert PASSWORD not in output
    # nor in the server's command line, which every local user can read
    assert PASSWORD not in Path(f"/proc/{server.pid}/cmdline").read_text()


def test_tracking_uri_credentials_stay_out_of_runs_files_and_output(server, tmp_path):
    import mlflow

    secret = "pw-" + secrets.token_hex(8)
    uri = server.url.replace("http://", f"http://alice:{secret}@")  # this server ignores them
    overrides = [*tiny(tmp_path), "tracking.experiment=credentials"]
    result = run_py(
        tmp_path, "-m", *overrides, "activation=relu", small_job=False, env={"MLFLOW_TRACKING_URI": uri}
    )
    assert result.returncode == 0, result.stderr[-4000:]
    mlflow_client = mlflow.MlflowClient(tracking_uri=server.url)
    runs = mlflow_client.search_runs([mlflow_client.get_experiment_by_name("credentials").experiment_id])
    assert len(runs) == 2  # the sweep's parent and its job
    for run in runs:
        assert not [k for k, v in {**run.data.tags, **run.data.params}.items() if secret in v], (
            run.info.run_name
        )
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and secret in p.read_text(errors="replace")]
    assert secret not in result.stdout + result.stderr
