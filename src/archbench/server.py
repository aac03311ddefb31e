"""A team MLflow tracking server that lets no one in anonymously: MLflow's basic-auth app, runs in
PostgreSQL, artifacts in one folder or bucket, on loopback unless told otherwise.

ARCHBENCH_ADMIN_PASSWORD=... python -m archbench.server --backend-store-uri postgresql://user:pass@127.0.0.1:5432/mlflow
ARCHBENCH_BACKEND_STORE_URI=postgresql://... make server       # the same, from the environment
make server HOST=0.0.0.0 ARGS="--allowed-hosts mlflow-host:5000" # share it, under the name clients use

Clients point at it with `tracking.uri=http://HOST:PORT` or MLFLOW_TRACKING_URI, and sign in with
MLflow's MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD. The admin user (`admin`) is created
on the first start with ARCHBENCH_ADMIN_PASSWORD; users and their permissions per experiment are
MLflow's (its UI, or `mlflow.server.get_app_client("basic-auth", ...)`), kept in the same database.
"""

import argparse
import os
import secrets
import sys
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from archbench.tracking.store import redact

BACKEND_ENV = "ARCHBENCH_BACKEND_STORE_URI"
ARTIFACTS_ENV = "ARCHBENCH_ARTIFACTS_DESTINATION"
ADMIN_ENV = "ARCHBENCH_ADMIN_PASSWORD"
HOSTS_ENV = "ARCHBENCH_ALLOWED_HOSTS"
CSRF_ENV = "MLFLOW_FLASK_SERVER_SECRET_KEY"
ADMIN = "admin"
# the password older MLflow versions shipped in basic_auth.ini (GHSA-gq3w-7jj3-x7gr): public, never used
MLFLOW_OLD_DEFAULT = "password1234"
# authenticated users may read every experiment, and write only to their own and those they are given
DEFAULT_PERMISSION = "READ"
# MLflow's cache of verified sign-ins, per worker. Without it every request hashes the password again
# (PBKDF2): a 1-epoch synthetic run took 20.0 s against this server, 8.4 s with it, 7.8-8.3 s with no
# sign-in at all (2-core Xeon, load ~1). A password changed or a user deleted keeps working this long
# on the workers that did not handle the change.
AUTH_CACHE_S = 60


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m archbench.server", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--backend-store-uri", default=os.environ.get(BACKEND_ENV), help=f"default: ${BACKEND_ENV}"
    )
    parser.add_argument(
        "--artifacts-destination",
        # absolute, so artifacts land in one place whatever folder the server is started from
        default=os.environ.get(ARTIFACTS_ENV) or os.path.abspath("mlartifacts"),
        help=f"a folder or bucket URI (default: ${ARTIFACTS_ENV}, else ./mlartifacts)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 shares it beyond this machine")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--workers", type=int, help="request worker processes (MLflow's default: 4)")
    parser.add_argument(
        "--allowed-hosts",
        default=os.environ.get(HOSTS_ENV),
        help="Host headers to answer, e.g. mlflow-host:5000 (MLflow's guard against DNS rebinding; "
        f"default: ${HOSTS_ENV}, else MLflow's: localhost and private IP addresses)",
    )
    args = parser.parse_args(argv)
    if not args.backend_store_uri:
        parser.exit(2, f"no backend store: set {BACKEND_ENV} or pass --backend-store-uri\n")
    password = os.environ.get(ADMIN_ENV, "")
    if not password or password == MLFLOW_OLD_DEFAULT:
        what = "is unset" if not password else "is MLflow's old public default"
        parser.exit(2, f"{ADMIN_ENV} {what}: export the password of the server's `{ADMIN}` user first\n")
    from mlflow.exceptions import MlflowException
    from mlflow.utils.validation import _validate_password

    try:
        _validate_password(password)  # MLflow's own rule for its users' passwords
    except MlflowException as e:
        parser.exit(2, f"{ADMIN_ENV}: {e.message}\n")
    auth_db, db_password = auth_database(args.backend_store_uri)
    if auth_db is None:
        parser.exit(2, "the users' database: a PostgreSQL or SQLite backend store only (its password, if "
                    "any, travels in PGPASSWORD)\n")  # fmt: skip

    options = ["--app-name", "basic-auth", "--artifacts-destination", args.artifacts_destination]
    options += ["--host", args.host, "--port", str(args.port)]
    options += ["--workers", str(args.workers)] if args.workers else []
    options += ["--allowed-hosts", args.allowed_hosts] if args.allowed_hosts else []
    print("starting: mlflow server --backend-store-uri", redact(args.backend_store_uri), *options, flush=True)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.allowed_hosts:
        print(
            "it answers requests addressed to localhost or a private IP address; clients that use a "
            "name need it in --allowed-hosts (MLflow's guard against DNS rebinding)",
            flush=True,
        )
    # Every secret travels in the environment, which only this user can read, not in an argv that `ps`
    # shows everyone, nor in a file; and through exec, never a shell. Exec rather than a child, so
    # that Ctrl-C and kill reach the server itself.
    env = {
        **os.environ,
        "MLFLOW_BACKEND_STORE_URI": args.backend_store_uri,
        "MLFLOW_AUTH_CONFIG_PATH": str(auth_config(auth_db)),
        "MLFLOW_AUTH_ADMIN_USERNAME": ADMIN,
        "MLFLOW_AUTH_ADMIN_PASSWORD": password,  # used by MLflow once, to create the admin user
        # the key of the sign-in forms' CSRF tokens: one per server start, shared by its workers
        "MLFLOW_FLASK_SERVER_SECRET_KEY": os.environ.get(CSRF_ENV) or secrets.token_hex(32),
        **({"PGPASSWORD": db_password} if db_password else {}),
    }
    os.execve(sys.executable, [sys.executable, "-m", "mlflow", "server", *options], env)


def auth_database(uri: str) -> tuple[str | None, str | None]:
    """Where MLflow keeps users and permissions: the runs' own database (its auth tables stand apart),
    named without its password, which PostgreSQL's libpq takes from PGPASSWORD instead."""
    parts = urlsplit(uri)
    if parts.scheme.startswith("sqlite"):
        return uri, None
    if not parts.scheme.startswith("postgresql"):
        return None, None
    netloc = parts.netloc.rpartition("@")[2]
    if parts.username:
        netloc = f"{parts.username}@{netloc}"
    return urlunsplit(parts._replace(netloc=netloc)), unquote(parts.password) if parts.password else None


def auth_config(database: str) -> Path:
    """MLflow's basic_auth.ini for this server (no secret in it), in a folder of this user's own."""
    folder = Path(tempfile.mkdtemp(prefix="archbench-auth-"))
    path = folder / "basic_auth.ini"
    escaped = database.replace("%", "%%")  # configparser's interpolation
    lines = ["[mlflow]", f"default_permission = {DEFAULT_PERMISSION}", f"database_uri = {escaped}"]
    lines += [f"admin_username = {ADMIN}", f"auth_cache_ttl_seconds = {AUTH_CACHE_S}"]
    path.write_text("\n".join([*lines, ""]))
    return path


if __name__ == "__main__":
    main()
