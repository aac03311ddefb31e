"""Team tracking: a sweep's runs reach a real PostgreSQL through `archbench.server`, and the report reads
them back; the server is MLflow's basic-auth app, which lets in only its users, each where permitted.
PostgreSQL and the MLflow server are started here, on 127.0.0.1 only, and stopped after."""

import glob
import json
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import ROOT, free_port, missing, patience, run_py, small, stop_group, wait_for_health

pytestmark = pytest.mark.postgres

PASSWORD = "pw-" + secrets.token_hex(8)  # the postgres role's; must never show in any output
ADMIN_PASSWORD = "admin-" + secrets.token_hex(8)  # the MLflow server's admin user's; nor this
USERS = {"alice": "alice-" + secrets.token_hex(8), "bob": "bob-" + secrets.token_hex(8)}  # nor these


def signed_in(user: str) -> dict[str, str]:
    """A client's environment as MLflow reads it: who it is."""
    return {"MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": USERS.get(user, ADMIN_PASSWORD)}


@contextmanager
def as_user(user: str):
    """This process's MLflow calls as `user` (MLflow reads the variables at every request)."""
    saved = {k: os.environ.get(k) for k in signed_in(user)}
    os.environ.update(signed_in(user))
    try:
        yield
    finally:
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)


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
        command = [*run_as, str(bin_dir / tool), *args]
        done = subprocess.run(command, cwd=base, capture_output=True, text=True, timeout=patience(90))
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
            subprocess.run(stop, cwd=base, capture_output=True, timeout=patience(60))
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
    env = {
        **os.environ,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "ARCHBENCH_ADMIN_PASSWORD": ADMIN_PASSWORD,
    }
    with open(log, "w") as out:
        # its own session, so teardown stops MLflow's worker processes too
        proc = subprocess.Popen(
            cmd, cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(url, proc, timeout=90, log=log)  # creating MLflow's tables takes ~10 s
        with as_user("admin"):  # the admin adds the team's users, with MLflow's client of its auth app
            from mlflow.server import get_app_client

            users = get_app_client("basic-auth", tracking_uri=url)
            for user, password in USERS.items():
                users.create_user(user, password)
        yield SimpleNamespace(url=url, log=log, artifacts=folder / "artifacts", pid=proc.pid, users=users)
    finally:
        stop_group(proc)


@pytest.fixture(scope="module")
def sweep(server, tmp_path_factory):
    """A two-job sweep tracked on the server; returns the folder it ran in."""
    tmp = tmp_path_factory.mktemp("sweep")
    result = run_py(
        tmp, "-m", *tiny(tmp), "activation=relu,tanh", f"tracking.uri={server.url}", small_job=False,
        env=signed_in("alice"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    tmp.joinpath("output.txt").write_text(result.stdout + result.stderr)
    return tmp


def request(url: str, path: str, user: str | None = None) -> int:
    """The HTTP status of a REST call to the server, anonymous or as `user`."""
    call = urllib.request.Request(f"{url}{path}", data=json.dumps({"max_results": 1}).encode(), method="POST")
    call.add_header("Content-Type", "application/json")
    if user:
        creds = signed_in(user)
        token = f"{creds['MLFLOW_TRACKING_USERNAME']}:{creds['MLFLOW_TRACKING_PASSWORD']}"
        call.add_header("Authorization", "Basic " + __import__("base64").b64encode(token.encode()).decode())
    try:
        with urllib.request.urlopen(call, timeout=patience(30)) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


def test_anonymous_requests_get_401(server):
    assert request(server.url, "/api/2.0/mlflow/experiments/search") == 401
    assert request(server.url, "/api/2.0/mlflow/runs/search") == 401
    assert request(server.url, "/api/2.0/mlflow/experiments/search", "alice") == 200
    health = urllib.request.urlopen(f"{server.url}/health", timeout=patience(30))
    assert health.status == 200  # open: probes, balancers


def test_sweep_runs_land_in_postgres(postgres, server, sweep, tmp_path, monkeypatch):
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
    assert children == [("mlp-relu-sgd-s0", "FINISHED"), ("mlp-tanh-sgd-s0", "FINISHED")]

    mlflow_client = mlflow.MlflowClient(tracking_uri=server.url)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", USERS["alice"])
    runs = mlflow_client.search_runs(
        [mlflow_client.get_experiment_by_name("archbench").experiment_id],
        f"tags.mlflow.parentRunId = '{parent_id}'",
    )
    assert len(runs) == 2
    for run in runs:
        assert 0 <= run.data.metrics["test_accuracy"] <= 1
        assert "tracking.uri" not in run.data.params  # where it went is bookkeeping, not configuration
        summary = mlflow_client.download_artifacts(run.info.run_id, "model_summary.txt", str(tmp_path))
        assert "Total params" in Path(summary).read_text()
        # uploaded through the server into its --artifacts-destination, not written by the job itself
        stored = server.artifacts.rglob("model_summary.txt")
        assert any(run.info.run_id in path.parts for path in stored)


def test_report_reads_the_sweep_back(server, sweep, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "archbench.report", "--tracking-uri", server.url,
         "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=patience(120),
        env={**os.environ, **signed_in("alice")},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    # rows: | rank | configuration | n | mean | ...; each configuration with its one finished seed
    rows = [line.split(" | ") for line in result.stdout.splitlines() if " | activation=" in line]
    assert sorted(row[1:3] for row in rows) == [["activation=relu", "1"], ["activation=tanh", "1"]]
    assert "1 seed per configuration" in result.stdout


def test_mlflow_tracking_uri_alone_is_honoured(server, tmp_path, monkeypatch):
    import mlflow

    env = {"MLFLOW_TRACKING_URI": server.url, **signed_in("alice")}
    result = run_py(tmp_path, *tiny(tmp_path), "tracking.experiment=env-only", small_job=False, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", USERS["alice"])
    mlflow_client = mlflow.MlflowClient(tracking_uri=server.url)
    (run,) = mlflow_client.search_runs([mlflow_client.get_experiment_by_name("env-only").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "mlp-relu-sgd-s0"


def test_server_without_a_backend_store_says_how_to_give_one():
    env = {k: v for k, v in os.environ.items() if k != "ARCHBENCH_BACKEND_STORE_URI"}
    command = [sys.executable, "-m", "archbench.server"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=patience(60))
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1 and "ARCHBENCH_BACKEND_STORE_URI" in result.stderr
    assert "--backend-store-uri" in result.stderr


@pytest.mark.parametrize(
    "admin_password, said",
    [
        (None, "ARCHBENCH_ADMIN_PASSWORD is unset: export the password of the server's `admin` user first"),
        ("password1234", "ARCHBENCH_ADMIN_PASSWORD is MLflow's old public default"),
        ("short", "ARCHBENCH_ADMIN_PASSWORD: Password must be at least 12 characters."),  # MLflow's rule
    ],
)
def test_server_without_a_good_admin_password_refuses_in_one_line(admin_password, said, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "ARCHBENCH_ADMIN_PASSWORD"}
    env |= {"ARCHBENCH_ADMIN_PASSWORD": admin_password} if admin_password else {}
    result = subprocess.run(
        [sys.executable, "-m", "archbench.server", "--backend-store-uri", f"sqlite:///{tmp_path}/m.db"],
        env=env, capture_output=True, text=True, timeout=patience(60),
    )  # fmt: skip
    lines = result.stderr.splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith(said), result.stderr
    assert not (tmp_path / "m.db").exists()


UNKNOWN = "lets in only its users (HTTP 401): set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
WRONG = "refuses user 'mallory' (HTTP 401: no such user, or a wrong password): check MLFLOW_TRACKING_"


@pytest.mark.parametrize(
    "command, user, said", [("run", None, UNKNOWN), ("sweep", "mallory", WRONG), ("compare", None, UNKNOWN)]
)
def test_a_client_without_credentials_is_told_in_one_line(server, sweep, tmp_path, command, user, said):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
    env |= {"MLFLOW_TRACKING_URI": server.url}
    env |= (
        {"MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": "wrong-" + secrets.token_hex(8)}
        if user
        else {}
    )
    if command == "compare":
        cmd = ["make", "compare", f"ARGS=--out {tmp_path}/comparison"]
    else:
        cmd = [sys.executable, "run.py", *(["-m"] if command == "sweep" else []), *tiny(tmp_path)]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=patience(300))
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if not line.startswith("make")]  # make's own
    assert len(lines) == 1 and lines[0].startswith(f"error: tracking.uri={server.url} {said}"), result.stderr
    assert lines[0].endswith("; nothing was run")


def test_a_user_without_permission_on_the_experiment_cannot_write_to_it(server, sweep, tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", USERS["alice"])
    mlflow_client = mlflow.MlflowClient(tracking_uri=server.url)
    experiment = mlflow_client.get_experiment_by_name("archbench").experiment_id  # alice's: her sweep made it
    before = len(mlflow_client.search_runs([experiment]))
    env = {"MLFLOW_TRACKING_URI": server.url, **signed_in("bob")}  # bob: READ, as every user has
    result = run_py(tmp_path, *tiny(tmp_path), small_job=False, env=env)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"error: tracking.uri={server.url} does not let user 'bob' write there (HTTP 403 at "
        "/api/2.0/mlflow/runs/create): ask the experiment's owner or the server's admin for EDIT "
        "permission on it, or set tracking.experiment to one of your own"
    ]
    assert len(mlflow_client.search_runs([experiment])) == before
    # what the admin grants, MLflow enforces: with EDIT, the same command is recorded
    with as_user("admin"):
        server.users.grant_user_permission("bob", "experiment", experiment, "EDIT")
    result = run_py(tmp_path / "again", *tiny(tmp_path / "again"), small_job=False, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(mlflow_client.search_runs([experiment])) == before + 1


def test_no_password_in_the_store_the_files_the_logs_or_ps(postgres, server, sweep):
    import psycopg2

    secrets_ = [PASSWORD, ADMIN_PASSWORD, *USERS.values()]
    output = server.log.read_text()
    assert "--backend-store-uri postgresql://postgres:***@127.0.0.1:" in output
    assert "--app-name basic-auth" in output and "--host 127.0.0.1" in output
    # the logs: the server's, and the sweep's (its output, Hydra's job logs, submitit's)
    logs = [output, (sweep / "output.txt").read_text()]
    logs += [p.read_text(errors="replace") for p in sweep.rglob("*") if p.is_file() and p.suffix != ".db"]
    # every file the server keeps: artifacts (the config, summaries, models), its auth configuration
    files = [p.read_bytes().decode(errors="replace") for p in server.artifacts.rglob("*") if p.is_file()]
    assert files and logs
    # the store itself: every row of every table, params, tags and users included
    conn = psycopg2.connect(postgres)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            tables = [t for (t,) in cur.fetchall()]
            rows = []
            for table in tables:
                cur.execute(f'SELECT t::text FROM "{table}" t')
                rows += [r for (r,) in cur.fetchall()]
    finally:
        conn.close()
    assert {"users", "runs", "params", "tags"} <= set(tables) and rows
    # what `ps` shows every local user: each process's command line, the server's workers included
    commands = []
    for path in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            commands.append(Path(path).read_bytes().decode(errors="replace"))
        except OSError:  # the process ended meanwhile
            pass
    for secret in secrets_:
        for where, texts in (("logs", logs), ("files", files), ("store", rows), ("ps", commands)):
            assert not [t for t in texts if secret in t], where


def test_tracking_uri_credentials_stay_out_of_runs_files_and_output(server, tmp_path, monkeypatch):
    import mlflow

    secret = "pw-" + secrets.token_hex(8)
    with as_user("admin"):
        server.users.create_user("carol", secret)
    uri = server.url.replace(
        "http://", f"http://carol:{secret}@"
    )  # credentials in the URI, as some type them
    overrides = [*tiny(tmp_path), "tracking.experiment=credentials"]
    result = run_py(
        tmp_path, "-m", *overrides, "activation=relu", small_job=False, env={"MLFLOW_TRACKING_URI": uri}
    )
    assert result.returncode == 0, result.stderr[-4000:]
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "carol")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", secret)
    mlflow_client = mlflow.MlflowClient(tracking_uri=server.url)
    runs = mlflow_client.search_runs([mlflow_client.get_experiment_by_name("credentials").experiment_id])
    assert len(runs) == 2  # the sweep's parent and its job
    for run in runs:
        assert not [k for k, v in {**run.data.tags, **run.data.params}.items() if secret in v], (
            run.info.run_name
        )
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and secret in p.read_text(errors="replace")]
    assert secret not in result.stdout + result.stderr


@pytest.mark.slurm
def test_slurm_jobs_sign_in_as_the_user_who_submitted_them(server, slurm_cluster, tmp_path, monkeypatch):
    import mlflow

    env = {**slurm_cluster.env, **signed_in("alice")}  # sbatch hands the jobs the submitter's environment
    overrides = [*tiny(tmp_path), f"tracking.uri={server.url}", "tracking.experiment=on-slurm"]
    result = run_py(tmp_path, "-m", "hydra/launcher=slurm", *overrides, small_job=False, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", USERS["alice"])
    mlflow_client = mlflow.MlflowClient(tracking_uri=server.url)
    runs = mlflow_client.search_runs([mlflow_client.get_experiment_by_name("on-slurm").experiment_id])
    (job,) = [r for r in runs if "slurm_job_id" in r.data.tags]
    assert job.info.status == "FINISHED" and job.info.user_id == "alice"
    # nor in the sweep's folder, the jobs' pickles and logs included
    files = [p.read_bytes() for p in (tmp_path / "outputs" / "sweep").rglob("*") if p.is_file()]
    assert len(files) > 3 and not [f for f in files if USERS["alice"].encode() in f]


def test_of_sweeps_claiming_one_stopped_run_at_once_exactly_one_wins(postgres, server, sweep, monkeypatch):
    """The claim (sweeps/reuse.py) through the team server and on its PostgreSQL directly: a param
    is write-once in the store, so of eight claims written at the same moment one succeeds."""
    import threading

    import mlflow

    from archbench.sweeps import reuse

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", USERS["alice"])
    for uri in (server.url, postgres):
        mlflow_client = mlflow.MlflowClient(tracking_uri=uri)
        experiment = mlflow_client.get_experiment_by_name("archbench").experiment_id
        for _ in range(3):
            run = mlflow_client.get_run(mlflow_client.create_run(experiment, run_name="stopped").info.run_id)
            barrier, got = threading.Barrier(8), [None] * 8

            def one(i, run=run, barrier=barrier, got=got, mlflow_client=mlflow_client):
                barrier.wait()
                got[i] = reuse.claim(mlflow_client, run, stale_after=300)

            threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert [g for g in got if g] == ["archbench.claim.1.0"], (uri.split(":")[0], got)
            mlflow_client.set_terminated(run.info.run_id, "KILLED")
