"""A report's output, kept beside its files and shown again while the store has not changed.

A report opens the store through MLflow (about 1.5 s of imports before its first query), then
computes: the statistics and three charts, 2-3 s more. Asked again of a store in which nothing has
changed, it would print the same. So `recall` prints the kept output without importing MLflow, and
`keep` keeps it only where that is sound:
- "nothing has changed" is the SQLite file's state (inode, size, modification time, and its write-ahead
  log's): SQLite rewrites the file on every commit. A server's store (http, postgresql) has no file
  here, and is always read.
- the state is taken before a second read of the question (lookup.Question.same) that found it
  unchanged, so that a write landing while a report computes is never taken for part of it.
- archbench's own code is part of the key: another version may compare differently.
The output is kept in the user's cache folder (as the store's template is, store.py), a file per
request, so that the report's own folder holds only its comparisons. The notebook's
`archbench.compare()` keeps its comparison object the same way (`keep_object`, pickled).
"""

import hashlib
import json
import os
import pickle
from pathlib import Path


def state(uri: str) -> list | None:
    """The SQLite store's file state, or None: not a file, or a write in progress (a journal)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = Path(uri.removeprefix("sqlite:///"))
    if Path(f"{path}-journal").exists():
        return None
    found = []
    for file in (path, Path(f"{path}-wal")):
        try:
            st = file.stat()
        except FileNotFoundError:
            found.append(None)
            continue
        found.append([st.st_ino, st.st_size, st.st_mtime_ns])
    return found if found[0] else None


REPORT_DIR = Path("outputs/comparison")  # a report's folder, as `make compare` writes it


def request(
    uri: str,
    parent: str | None,
    experiment: str | None,
    margin: float | None,
    out: Path,
    cwd: Path | None = None,
) -> str:
    """The key of a report's output: its store (a SQLite file by its absolute path, wherever the
    report is asked from), what it compares, its margin, and its folder `out` both as given (the
    output names it so) and resolved from `cwd` (default: this process's)."""
    where = uri
    if where.startswith("sqlite:///"):
        where = f"sqlite:///{Path(where.removeprefix('sqlite:///')).resolve()}"
    folder = (Path(cwd) / out if cwd is not None else Path(out)).resolve()
    return json.dumps([where, parent, experiment, margin, str(out), str(folder)])


def _code() -> str:
    """archbench's sources, as one digest."""
    digest = hashlib.sha256()
    for source in sorted(Path(__file__).resolve().parents[1].rglob("*.py")):
        digest.update(source.read_bytes())
    return digest.hexdigest()[:16]


def _kept(request: str, suffix: str = ".json") -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "archbench" / "reports"
    return cache / f"{hashlib.sha256(request.encode()).hexdigest()[:24]}{suffix}"


def recall(request: str, uri: str) -> str | None:
    """The output kept for `request`, where the store and archbench are as they were, and its files
    are all still there; else None."""
    try:
        kept = json.loads(_kept(request).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not _current(kept, request, uri) or any(_file(f) != [f, *rest] for f, *rest in kept["files"]):
        return None
    return kept["text"]


def _file(path: str) -> list | None:
    """A file the output names, as it is now: its path and its content's digest; None where it is
    gone. Another report into the same folder (another margin) rewrites the files without writing
    the store; the same report again writes the same bytes (a few milliseconds to read back)."""
    try:
        return [path, hashlib.sha256(Path(path).read_bytes()).hexdigest()]
    except OSError:
        return None


def recall_object(request: str, uri: str):
    """The object kept for `request` (the notebook's comparison, pickled), where the store and
    archbench are as they were; else None. The cache folder is the user's own, as the store is."""
    try:
        kept = pickle.loads(_kept(request, ".pickle").read_bytes())
    except Exception:  # noqa: BLE001 (none kept, a partial file, a class that moved: compute again)
        return None
    return kept["object"] if _current(kept, request, uri) else None


def _current(kept: dict, request: str, uri: str) -> bool:
    """Whether what was kept answers `request` with the store and archbench as they are now."""
    now = state(uri)
    same_store = now is not None and kept["state"] == now
    return kept.get("request") == request and same_store and kept["code"] == _code()


def keep_object(request: str, before: list | None, obj) -> None:
    """Keep `obj`, computed from the store as it was in state `before` (as `keep` does)."""
    if before is None:
        return
    _write(_kept(request, ".pickle"), pickle.dumps({"request": request, "state": before, "code": _code(),
                                                   "object": obj}))  # fmt: skip


def _write(path: Path, data: bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}")
        partial.write_bytes(data)
        partial.replace(path)  # whole or not at all: a process killed meanwhile leaves the old one
    except OSError:
        pass


def keep(request: str, before: list | None, text: str, files: list[Path]) -> None:
    """Keep a report's output (`text`), computed from the store as it was in state `before`; where
    the cache folder takes no writes, nothing is kept."""
    if before is None:
        return
    record = {"request": request, "state": before, "code": _code(), "text": text}
    record["files"] = [_file(str(Path(f).resolve())) for f in files]
    if None in record["files"]:
        return
    _write(_kept(request), json.dumps(record).encode())
