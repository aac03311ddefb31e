"""A team MLflow tracking server: runs in PostgreSQL, artifacts in one folder or bucket, on loopback.

python -m archbench.server --backend-store-uri postgresql://user:pass@127.0.0.1:5432/mlflow
ARCHBENCH_BACKEND_STORE_URI=postgresql://... make server   # the same, from the environment
make server HOST=0.0.0.0 ARGS="--workers 8"                  # share it beyond this machine

Clients then point at it with `tracking.uri=http://HOST:PORT` or MLFLOW_TRACKING_URI.
"""

import argparse
import os
import sys

from archbench.tracking.runs import redact

BACKEND_ENV = "ARCHBENCH_BACKEND_STORE_URI"
ARTIFACTS_ENV = "ARCHBENCH_ARTIFACTS_DESTINATION"


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
    args = parser.parse_args(argv)
    if not args.backend_store_uri:
        parser.exit(2, f"no backend store: set {BACKEND_ENV} or pass --backend-store-uri\n")

    options = ["--artifacts-destination", args.artifacts_destination, "--host", args.host]
    options += ["--port", str(args.port)] + (["--workers", str(args.workers)] if args.workers else [])
    print("starting: mlflow server --backend-store-uri", redact(args.backend_store_uri), *options, flush=True)
    # The URI holds the database password: it travels in the environment, which only this user can
    # read, not in an argv that `ps` shows everyone; and through exec, never a shell. Exec rather
    # than a child, so that Ctrl-C and kill reach the server itself.
    env = {**os.environ, "MLFLOW_BACKEND_STORE_URI": args.backend_store_uri}
    os.execve(sys.executable, [sys.executable, "-m", "mlflow", "server", *options], env)


if __name__ == "__main__":
    main()
