"""The MLflow store, reached once per process: created and migrated under one inter-process lock, a
server that does not answer or does not let us in refused in seconds, and every failure to reach or
write it one line.

MLflow creates and migrates a SQLite store on first use without a lock of its own (3.17 locks only
its job and workspace tables): processes started together on a fresh file raced, and one that lost
left `_alembic_tmp_experiments` behind, unreadable for good. An old store MLflow migrates on its own
when one of its tables is missing (without a copy), and refuses when none is ("Detected out-of-date
database schema"): archbench copies it to mlflow.db.<revision>.bak and upgrades it, under the lock.
"""

import errno
import logging
import os
import re
import shutil
import sqlite3
import time
import traceback
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from hydra.errors import CompactHydraException

log = logging.getLogger(__name__)

PROBE_S = 2  # seconds a server gets to answer /health before a run refuses to start
LOCK_S = 600  # how long a process waits for another's store creation or migration (seconds)
# MLflow's own HTTP retries (7, backoff factor 2: ~4 minutes) stay as they are: they ride out a
# server restarted during a run. Only the first contact is ours, with a short timeout.
_checked: set[str] = set()  # URIs this process has checked already


class StoreError(CompactHydraException):
    """The tracking store cannot be reached or written: one line naming it and what to do."""


def redact(uri: str) -> str:
    """The URI without its password, fit for params, tags and logs."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def client(uri: str):
    """An MlflowClient on `uri`; the store is checked (created, upgraded, probed) once per process.

    A server's user and password move from the URI to MLflow's own variables, so that MLflow's
    messages (it prints "View run ... at: <uri>") never show them.
    """
    import mlflow

    parts = urlsplit(uri)
    if parts.scheme in ("http", "https") and parts.password is not None:
        os.environ["MLFLOW_TRACKING_USERNAME"] = parts.username or ""
        os.environ["MLFLOW_TRACKING_PASSWORD"] = parts.password
        uri = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    if uri not in _checked:
        logging.getLogger("alembic").setLevel(logging.WARNING)
        database = logging.getLogger("mlflow.store.db.utils")
        if _without_traceback not in database.filters:
            database.addFilter(_without_traceback)
        try:
            if uri.startswith("sqlite:///"):
                _prepare_sqlite(uri)
            elif parts.scheme in ("http", "https"):
                _probe(uri)
        except StoreError:
            raise
        except Exception as e:
            raise StoreError(failure(e, uri) or f"the MLflow store {_where(uri)}: {_detail([e])}") from e
        _checked.add(uri)
    return mlflow.MlflowClient(tracking_uri=uri)


def _without_traceback(record: logging.LogRecord) -> bool:
    """MLflow logs a database error with its traceback before raising it: the error is ours to say."""
    return not record.exc_info


def _prepare_sqlite(uri: str) -> None:
    """Create or upgrade the store with every other archbench process kept out meanwhile."""
    from filelock import FileLock

    path = Path(uri.removeprefix("sqlite:///"))
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        lock = FileLock(f"{path}.lock", timeout=LOCK_S)
        lock.acquire()
    except OSError as e:
        if e.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise
        lock = None  # a read-only place: nobody can migrate it, so reading needs no lock
    try:
        _open(uri, path)
    finally:
        if lock is not None:
            lock.release()


def _open(uri: str, path: Path) -> None:
    """MLflow's store for `uri`, built now (MLflow caches it per URI): a fresh file gets MLflow's
    tables, an old schema a backup and an upgrade first (0.05 s to check when there is none)."""
    import mlflow
    from mlflow.store.db import utils
    from sqlalchemy import create_engine

    if not (path.is_file() and path.stat().st_size):
        _from_template(path)
    if path.is_file() and path.stat().st_size:
        engine = create_engine(uri)
        try:
            found, head = utils._get_schema_version(engine), utils._get_latest_schema_revision()
            if found not in (None, head):
                backup = path.with_name(f"{path.name}.{found}.bak")
                shutil.copy2(path, backup)
                log.warning("upgrading the MLflow store %s to schema %s (backup: %s)", path, head, backup)
                utils._upgrade_db(engine)
        finally:
            engine.dispose()
    mlflow.MlflowClient(uri).search_experiments(max_results=1)


def _from_template(path: Path) -> None:
    """A new store as a copy of an empty one that MLflow's own migrations built once for this MLflow
    version (kept in the user's cache folder). Running the ~70 migrations took 4.0 s of each new
    store's 7.1 s on a 2-core EPYC; the copy takes milliseconds. The template has no experiment:
    MLflow adds its Default one when it opens the copy, with this store's own artifact location.
    Where the template cannot be made or copied (no cache folder, a full or read-only disk), MLflow
    builds the store itself, as before, and says what it says."""
    import mlflow
    from mlflow.store.db import utils
    from sqlalchemy import create_engine

    try:
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "archbench"
        template = cache / f"empty-store-mlflow-{mlflow.__version__}.db"
        if not template.is_file():
            cache.mkdir(parents=True, exist_ok=True)
            building = template.with_name(f"{template.name}.{os.getpid()}.tmp")
            engine = create_engine(f"sqlite:///{building}")
            try:
                utils._initialize_tables(engine)
                with engine.begin() as connection:  # MLflow's Default experiment: the copy's own
                    connection.exec_driver_sql("DELETE FROM experiments")
            finally:
                engine.dispose()
            os.replace(building, template)  # whole or not at all, whoever else builds one meanwhile
        copying = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        shutil.copyfile(template, copying)
        os.replace(copying, path)
    except Exception as e:  # MLflow builds it instead (and names any real problem)
        log.debug("no store template (%s): MLflow builds %s", e, path)
        for leftover in path.parent.glob(f"{path.name}.*.tmp"):
            leftover.unlink(missing_ok=True)


def _probe(uri: str) -> None:
    """Refuse, within PROBE_S seconds, a server that does not answer its /health page; then, in one
    request, a server that does not let us in (HTTP 401: MLflow's basic-auth app, no or wrong user)."""
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    deadline, reason = time.monotonic() + PROBE_S, ""
    while True:
        try:  # MLflow's own request: its TLS and authentication settings apply; no retries of its own
            response = http_request(
                get_default_host_creds(uri), "/health", "GET", max_retries=0,
                timeout=max(0.5, deadline - time.monotonic()), raise_on_status=False,
            )  # fmt: skip
            if response.status_code not in (502, 503, 504):  # a proxy whose server is down
                break
            reason = f"HTTP {response.status_code}"
        except Exception as e:
            reason = _reason(e)
        if time.monotonic() + 0.5 >= deadline:
            raise StoreError(
                f"tracking.uri={redact(uri)} does not answer ({reason} at /health, {PROBE_S} s): start the "
                "server (make server) or check the address; nothing was run"
            )
        time.sleep(0.5)  # a server still binding its port refuses for a moment
    # /health is open to all: one search, as the runs will ask, says whether the server lets us in
    response = http_request(
        get_default_host_creds(uri), "/api/2.0/mlflow/experiments/search", "POST", max_retries=0,
        timeout=PROBE_S * 5, json={"max_results": 1}, raise_on_status=False,
    )  # fmt: skip
    if response.status_code == 401:
        raise StoreError(signed_out(uri) + "; nothing was run")


def signed_out(uri: str) -> str:
    """The server asks who we are (HTTP 401): which of MLflow's variables to set, never their values."""
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    if not user or not os.environ.get("MLFLOW_TRACKING_PASSWORD"):
        return (
            f"tracking.uri={redact(uri)} lets in only its users (HTTP 401): set MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD to yours (the server's admin adds users)"
        )
    return (
        f"tracking.uri={redact(uri)} refuses user {user!r} (HTTP 401: no such user, or a wrong password): "
        "check MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
    )


def _reason(error: BaseException) -> str:
    text = " ".join(str(error).split())
    for known in ("Connection refused", "timed out", "Name or service not known", "No route to host"):
        if known.lower() in text.lower():
            return known.lower()
    return text[:120]


def _chain(error: BaseException) -> list[BaseException]:
    found = []
    while error is not None and error not in found:
        found.append(error)
        error = error.__cause__ or error.__context__
    return found


def failure(error: BaseException, uri: str) -> str | None:
    """One line saying what went wrong with the store and what to do; None if `error` is not the store's."""
    from filelock import Timeout
    from mlflow.exceptions import MlflowException

    chain = _chain(error)
    if isinstance(error, StoreError):
        return str(error)
    text = " ".join(" ".join(str(e).split()) for e in chain).lower()
    codes = {getattr(e, "errno", None) for e in chain}
    ours = any(isinstance(e, (MlflowException, sqlite3.Error, Timeout)) for e in chain)
    if not (ours or _raised_in_tracking(error)):
        return None
    where = _where(uri)
    at = next((f" at {e.filename}" for e in chain if isinstance(e, OSError) and e.filename), "")
    if "database is locked" in text:
        return (
            f"the MLflow store {where} is locked by another process (SQLite: database is locked): let it "
            f"finish or stop it (`fuser {where}` names it), then run again"
        )
    if any(isinstance(e, Timeout) for e in chain):
        return (
            f"another process has held {where}.lock for {LOCK_S} s, creating or upgrading the MLflow "
            "store: let it finish, then run again"
        )
    if "readonly database" in text or codes & {errno.EROFS, errno.EACCES, errno.EPERM}:
        return (
            f"the MLflow store {where} is read-only{at} ({_detail(chain)}): make it writable, or set "
            "tracking.uri to a store you can write"
        )
    if "disk is full" in text or codes & {errno.ENOSPC, errno.EDQUOT}:
        return (
            f"no space left for the MLflow store {where}{at} ({_detail(chain)}): free space there, or set "
            "tracking.uri to a store on another disk; resume=<run_id> continues a run this stopped"
        )
    status = next((e.get_http_status_code() for e in chain if isinstance(e, MlflowException)), None)
    if status == 401:
        return signed_out(uri)
    if status == 403:
        user = os.environ.get("MLFLOW_TRACKING_USERNAME")
        endpoint = next(iter(re.findall(r"endpoint (\S+)", text)), "the request")
        return (
            f"tracking.uri={redact(uri)} does not let user {user!r} write there (HTTP 403 at {endpoint}): "
            "ask the experiment's owner or the server's admin for EDIT permission on it, or set "
            "tracking.experiment to one of your own"
        )
    if uri.startswith(("http://", "https://")) and "api request" in text:
        return (
            f"tracking.uri={redact(uri)} stopped answering and MLflow's retries (about 4 minutes) gave up "
            f"({_reason(error)}): restart the server; resume=<run_id> continues a run this stopped"
        )
    return f"the MLflow store {where} failed: {_detail(chain)}"


def _where(uri: str) -> str:
    return uri.removeprefix("sqlite:///") if uri.startswith("sqlite:///") else redact(uri)


def _detail(chain: list[BaseException]) -> str:
    """The innermost cause, on one line."""
    inner = chain[-1]
    text = " ".join(str(inner).split())
    if isinstance(inner, OSError) and inner.strerror:
        text = inner.strerror
    return f"{type(inner).__name__}: {text}"[:300]


def _raised_in_tracking(error: BaseException) -> bool:
    """Whether an OSError came from writing the record (MLflow, or archbench's tracking), not elsewhere."""
    if not isinstance(error, OSError):
        return False
    files = [frame.filename for frame in traceback.extract_tb(error.__traceback__)]
    return any(f"{os.sep}mlflow{os.sep}" in f or f.endswith(("tracking.py", "store.py")) for f in files)
