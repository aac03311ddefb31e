"""archbench from Python, a notebook above all: `run`, `sweep`, `compare` and `inspect`.

Each call runs Hydra's real machinery in this process, as `run.py` does: the same config, the
same override strings, the configured sweeper and launcher (joblib's by default, or Slurm's), the
callbacks and the sweep's parent run. What differs is only what comes back: a run, a comparison or
an inspection you can show, instead of lines printed to a terminal. Relative paths in the config
(mlruns/, data/, outputs/) are the project's, as for `run.py` typed in its folder, wherever the
notebook is. (Hydra's Compose API has no multirun: hence `Hydra.run`/`Hydra.multirun`, as
hydra-zen's `launch()` calls them.)
"""

import contextlib
import io
import logging
import sys
import threading
import time
from pathlib import Path

from archbench import cpus

cpus.prepare_environment()  # before torch loads OpenMP, as run.py does: it reads its wait policy only then

from archbench import cells, results  # noqa: E402

# ROOT: the project (run.py, conf/), what the config's relative paths are relative to;
# network: a notebook's own nn.Module, made the option model=<name>
from archbench.cells import CONF, ROOT, network  # noqa: E402, F401

cells.importable()  # before any job process starts: they import a cell's network from its folder


class ArchbenchError(Exception):
    """A refused setting or a store that cannot be used: the message is the line the CLI prints."""


def run(*overrides: str) -> results.Run:
    """Train and evaluate one configuration, from override strings as `run.py` takes them:
    `run("model=cnn2", "train.epochs=3")`. Returns the run (id, metrics, `.model` to load it)."""
    from hydra.types import RunMode

    from archbench.tracking import runs

    overrides = list(overrides)
    if "mode=inspect" in overrides:
        raise ArchbenchError("error: mode=inspect trains nothing: use archbench.inspect")
    before = len(runs.opened)
    with _hydra() as hydra:
        mode = _mode(hydra, overrides)
        if mode == RunMode.MULTIRUN:
            raise ArchbenchError("error: these overrides sweep (a preset, or a list): use archbench.sweep")
        if mode is None:  # as Hydra's own command line says what it runs (hydra/_internal/utils.py)
            overrides.append("hydra.mode=RUN")
        job = _call(lambda: hydra.run("config", _task, overrides))
        uri = results.absolute_uri(job.cfg.tracking.uri, ROOT)
    if len(runs.opened) == before:
        raise ArchbenchError("error: the job opened no run")
    return results.Run.get(uri, runs.opened[-1])


def sweep(*overrides: str) -> results.Comparison:
    """Sweep configurations over seeds, as `run.py -m` does: `sweep("activation=relu,tanh", "seeds=3")`,
    or `seeds=auto` to race. Returns the sweep's comparison (`.table`, `.runs`, `.parent_id`)."""
    from hydra.types import RunMode

    from archbench.sweeps.callback import MlflowSweep

    overrides = list(overrides)
    started = len(MlflowSweep.started)
    with _hydra() as hydra:
        if _mode(hydra, overrides) != RunMode.MULTIRUN:  # as `run.py -m` does: the jobs know they sweep
            overrides.append("hydra.mode=MULTIRUN")
        try:
            with _JobsBar(started):
                _call(lambda: hydra.multirun("config", _task, overrides))
        except BaseException as e:  # Hydra skips its end callback: the parent is closed here
            for callback in MlflowSweep.started[started:]:
                callback.close(killed=isinstance(e, KeyboardInterrupt))
            if (
                not isinstance(e, Exception)
                or isinstance(e, ArchbenchError)
                or len(MlflowSweep.started) == started
            ):
                raise
            # a job failed (Hydra raises the first one's error): the others are recorded, as run.py says
            parent = MlflowSweep.started[started].last_parent
            raise ArchbenchError(
                f"a job of the sweep failed: {type(e).__name__}: {e}; the others are recorded: "
                f"archbench.compare(parent={parent!r})"
            ) from None
    mine = MlflowSweep.started[started]
    return compare(parent=mine.last_parent, tracking_uri=str(mine.config.tracking.uri))


def compare(
    parent: str | None = None, experiment: str | None = None, tracking_uri: str | None = None
) -> results.Comparison:
    """The comparison of a sweep recorded before (its parent run's id; the latest sweep by default),
    or of every job run of an experiment, from the store (`MLFLOW_TRACKING_URI` or the project's)."""
    import json
    import os

    from archbench.tracking import DEFAULT_URI, stored

    uri = results.absolute_uri(tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_URI), ROOT)
    # asked again of a store in which nothing changed, the comparison it gave (tracking/stored.py):
    # no MLflow, torch or statistics to import, no runs to read
    request = json.dumps(["archbench.compare", uri, parent, experiment])
    kept = stored.recall_object(request, uri)
    if kept is None:
        from archbench.sweeps import lookup
        from archbench.tracking import store

        try:
            mlflow_client = store.client(uri)
            asked = lookup.question(mlflow_client, parent, experiment)
            comp = asked.compare(mlflow_client)
        except lookup.NothingToCompare as e:
            raise ArchbenchError(f"nothing to compare in {store.redact(uri)}: {e}") from None
        kept = (comp, asked.name, asked.experiment_id)
        before = stored.state(uri)
        if asked.same(lookup.question(mlflow_client, parent, experiment)):  # no write landed meanwhile
            stored.keep_object(request, before, kept)
    comp, name, experiment_id = kept
    return results.Comparison(comp, uri, parent=None if experiment else name, experiment_id=experiment_id)


def inspect(*overrides: str) -> results.Inspection:
    """A network's torchinfo summary and the course's parameter breakdown, as `mode=inspect` prints
    them: no data, no run."""
    overrides = [*list(overrides), "mode=inspect"]
    printed = io.StringIO()
    with _hydra() as hydra, contextlib.redirect_stdout(printed):
        _call(lambda: hydra.run("config", _task, overrides, with_log_configuration=False))
    return results.Inspection(printed.getvalue())


class _JobsBar:
    """A tqdm.auto bar of the sweep's jobs as they end, in the notebook: a parallel sweep's jobs run in
    other processes, whose own bars a notebook does not show. It counts the files a job leaves in
    its folder when it ends (its test predictions, or its failure), looking once a second."""

    def __init__(self, started: int):
        self.started, self.done = started, threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self):
        self.since = time.time()
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()

    def _watch(self) -> None:
        from tqdm.auto import tqdm

        from archbench.sweeps.callback import FAILED_FILE, MlflowSweep
        from archbench.tracking.predictions import PREDICTIONS

        bar = None
        while True:
            last = self.done.wait(1.0)  # then once more, for the jobs that ended since the last look
            if len(MlflowSweep.started) > self.started:
                folder = Path(MlflowSweep.started[self.started].config.hydra.sweep.dir)
                ended = [p for name in (PREDICTIONS, FAILED_FILE) for p in folder.glob(f"*/{name}")]
                try:
                    count = sum(p.stat().st_mtime >= self.since for p in ended)
                except OSError:  # a job's folder moved or removed meanwhile: look again next second
                    continue
                if bar is None:
                    bar = tqdm(desc="jobs ended", unit=" jobs")
                bar.update(count - bar.n)
            if last:
                break
        if bar is not None:
            bar.close()


def _task(cfg):
    import os

    from archbench.app import main

    # in a worker process too (joblib's reuses its workers, which may have started elsewhere): the
    # project's folder, and a cell's networks importable
    if Path.cwd() != ROOT:
        os.chdir(ROOT)
    cells.importable()
    return main(cfg)


@contextlib.contextmanager
def _hydra():
    """Hydra set up on the project's config, in the project's folder, for one call."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.initialize import get_gh_backup, restore_gh_from_backup

    from archbench import slurm  # noqa: F401  (the Slurm preset's ${archbench.gpus:...} resolver)

    # the notebook's own Hydra (a hydra.initialize() of its cells) and logging, as they were after it
    saved, root = get_gh_backup(), logging.getLogger()
    handlers, level = list(root.handlers), root.level
    GlobalHydra.instance().clear()
    try:
        with contextlib.chdir(ROOT), initialize_config_dir(str(CONF), version_base="1.3", job_name="run"):
            yield GlobalHydra.instance().hydra
    finally:
        restore_gh_from_backup(saved)
        for handler in set(root.handlers) - set(handlers):  # Hydra's, to the last job's run.log
            root.removeHandler(handler)
            handler.close()
        for handler in handlers:
            if handler not in root.handlers:
                root.addHandler(handler)
        root.setLevel(level)


def _mode(hydra, overrides: list[str]):
    """The mode the config sets (a preset sweeps), or None."""
    return _call(lambda: hydra.get_mode("config", overrides))


def _call(work):
    """`work()`, with what the CLI prints as an error raised as ArchbenchError: its one line (ours), or
    Hydra's own message (a config group option that does not exist, an override it cannot parse)."""
    from hydra.errors import CompactHydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        return work()
    except SystemExit as e:  # archbench's "error: ..." line, before any run
        if isinstance(e.code, str):
            raise ArchbenchError(e.code) from None
        raise
    except CompactHydraException as e:  # as Hydra's run_and_report prints it, without its banner
        cause = f"\n{e.__cause__}" if isinstance(e.__cause__, OmegaConfBaseException) else ""
        raise ArchbenchError(f"{e}{cause}") from None
    except KeyboardInterrupt as e:
        print(f"interrupted ({e or 'Ctrl-C'}): runs in progress are marked KILLED", file=sys.stderr)
        raise
