"""Sweep-level tracking as a Hydra callback: one MLflow parent run per multirun, jobs as children.

The launching process creates the store, the experiment and the parent run before any job starts
(parallel jobs racing to create a fresh SQLite store lose runs), and leaves the parent's id in the
sweep folder, where every job finds it, in this process, a joblib worker or a SLURM node.
"""

import atexit
import json
import logging
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from archbench.config import GROUPS, ConfigError, seed_jobs, validate_sweep
from archbench.tracking import store, stored, views
from archbench.tracking.runs import PARENT_FILE, Terminated, client, experiment_id, redact_overrides

if TYPE_CHECKING:
    from archbench.comparing.comparison import Comparison

log = logging.getLogger(__name__)

FAILED_FILE = "job_failed.json"  # in a failed job's folder: its overrides and error
PRESET_GROUPS = ("experiment", "search")
# not what was swept: where things are kept, and what changes no result
SETUP = ("tracking.uri", "tracking.experiment", "tracking.log_model", "data_dir", "train.progress", "resume",
         "compare.out")  # fmt: skip


class MlflowSweep(Callback):
    # every sweep this process started, in order: the Python API (archbench/api.py) finds its own
    # here, and closes it when Hydra skips on_multirun_end (an interrupt, a failed job), as atexit
    # does for run.py: a notebook's process does not exit
    started: list["MlflowSweep"] = []

    def __init__(self) -> None:
        self.parent_id: str | None = None
        self.last_parent: str | None = None  # kept once the parent is closed
        self.parent_name = ""
        self.signalled = False
        self.config: DictConfig | None = None
        self._saved_sigterm = None

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        task = OmegaConf.to_container(config.hydra.overrides.task)
        try:  # before the parent run exists: a bad setting leaves nothing behind
            validate_sweep(config, seed_swept=any(o.split("=", 1)[0].lstrip("+~") == "seed" for o in task))
            if config.seeds == "auto" and not config.hydra.sweeper._target_.endswith(".RaceSweeper"):
                raise ConfigError("seeds=auto races with archbench's own sweeper; this preset picks another")
        except ConfigError as e:
            raise SystemExit(f"error: {e}") from None
        picked = config.hydra.runtime.choices
        preset = next((picked[g] for g in PRESET_GROUPS if picked.get(g)), None)
        redacted = redact_overrides(task)
        overrides = " ".join(redacted)
        # the parameter shows what was swept: not where its store or data live (as a job's configuration)
        swept = " ".join(o for o in redacted if o.split("=", 1)[0].lstrip("+~") not in SETUP)
        try:
            mlflow_client = client(config.tracking.uri)
            run = mlflow_client.create_run(
                experiment_id(mlflow_client, config.tracking.experiment),
                run_name=f"sweep-{preset or sweep_dir.parent.name + '-' + sweep_dir.name}",
                tags={
                    "archbench.sweep": "parent",
                    "archbench.sweep_dir": str(sweep_dir.resolve()),
                    "archbench.overrides": overrides,
                },
            )
        except Exception as e:  # no job can be tracked (no store, no permission): one line, as for a run
            line = store.failure(e, config.tracking.uri)
            if line is None:
                raise
            raise SystemExit(f"error: {line}") from None
        self.parent_id, self.parent_name = run.info.run_id, run.info.run_name
        self.last_parent, self.config = self.parent_id, config
        MlflowSweep.started.append(self)
        mlflow_client.log_param(self.parent_id, "sweep.overrides", swept or "(none)")
        mlflow_client.log_param(self.parent_id, "compare.margin", config.compare.margin)
        if config.seeds == "auto":
            from archbench.sweeps import race  # here: a single run (this callback too) needs no scipy

            plan = race.plan_of(config)
            mlflow_client.log_param(self.parent_id, "race.looks", " ".join(map(str, plan.looks)))
            for key in ("max_runs", "max_minutes"):
                mlflow_client.log_param(self.parent_id, f"race.{key}", config.race[key])
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / PARENT_FILE).write_text(self.parent_id)
        # Hydra skips on_multirun_end when a job raised or a signal came; the parent must still
        # be closed. SIGTERM (scancel) would otherwise end the process without running atexit.
        atexit.register(self._finish, config, interrupted=True)
        if threading.current_thread() is threading.main_thread():
            self._saved_sigterm = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame):
        self.signalled = True
        raise Terminated("stopped by SIGTERM")

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs) -> None:
        if job_return.status != JobStatus.FAILED or config.hydra.mode.name != "MULTIRUN":
            return
        if OmegaConf.select(config, "tune.role") == "tuning":  # a failed trial of its study (tuning.json)
            return
        error = job_return._return_value  # the exception; the public getter re-raises it
        choices = {g: str(config.hydra.runtime.choices.get(g)) for g in GROUPS}
        said = f"{type(error).__name__}: {error}"
        records = [  # a job of seeds together: a record per seed, as its own job's would be
            {"overrides": redact_overrides(o), "choices": choices, "error": said}
            for o in seed_jobs(list(job_return.overrides))
        ]
        Path(config.hydra.runtime.output_dir, FAILED_FILE).write_text(json.dumps(records))

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        atexit.unregister(self._finish)
        self._finish(config, interrupted=False)

    def close(self, killed: bool = False) -> None:
        """Close the parent, as interrupted, if the sweep ended without on_multirun_end; `killed`:
        by Ctrl-C (a kernel interrupt), which makes it KILLED even before any job had a run."""
        atexit.unregister(self._finish)
        self.signalled = self.signalled or (killed and self.parent_id is not None)
        self._finish(self.config, interrupted=True)

    def _finish(self, config: DictConfig, interrupted: bool) -> None:
        """Attach the comparison (and a race's record) to the parent run and close it; runs once."""
        if self.parent_id is None:
            return
        # imported here, not at the top: every single run instantiates this callback, and the
        # comparison's scipy, statsmodels and pandas cost it 2 s of start-up
        from archbench import tuning
        from archbench.sweeps import lookup, race
        from archbench.tracking import tables

        parent_id, self.parent_id = self.parent_id, None
        if self._saved_sigterm is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._saved_sigterm)  # the process goes on (a notebook's)
        sweep_dir = Path(config.hydra.sweep.dir)
        # where `make compare` is asked from: its folders are relative to it
        cwd = Path(OmegaConf.select(config, "hydra.runtime.cwd", default=None) or Path.cwd())
        mlflow_client = client(config.tracking.uri)
        # this session's: an earlier one run in the same folder (reuse.py) left its own there
        parent = mlflow_client.get_run(parent_id)
        started = parent.info.start_time / 1000
        failures = [
            record
            for p in sorted(sweep_dir.glob(f"*/{FAILED_FILE}"))
            if p.stat().st_mtime >= started
            for record in _records(json.loads(p.read_text()))
        ]
        record = sweep_dir / race.RECORD
        raced = json.loads(record.read_text()) if record.is_file() else None
        tuned = sweep_dir / tuning.RECORD
        study = (
            json.loads(tuned.read_text()) if tuned.is_file() and tuned.stat().st_mtime >= started else None
        )
        statuses: set[str] = set()
        shown = None  # what `make compare` would print next: (the question, the comparison, files, link)
        try:
            runs = tables.sweep_runs(mlflow_client, parent_id, failures)
            if interrupted:  # jobs a dead launcher left RUNNING: closed before the table is written
                for run_id in runs.run_id[runs.status == "RUNNING"]:
                    mlflow_client.set_terminated(run_id, "KILLED")
                runs.loc[runs.status == "RUNNING", "status"] = "KILLED"
            statuses = set(runs.status)
            if failures:
                mlflow_client.log_text(parent_id, json.dumps(failures, indent=1), lookup.FAILURES)
            if raced:
                _log_race(mlflow_client, parent_id, raced)
            if study:
                mlflow_client.log_text(parent_id, json.dumps(study, indent=1), tuning.RECORD)
                mlflow_client.log_param(parent_id, "tune.keys", " ".join(study["keys"]))
            if not runs.empty:
                # the question `make compare` asks of this sweep (its runs and reused runs read back
                # from the store, its records as just logged), so that both print the same comparison
                logged = {lookup.FAILURES: failures, race.RECORD: raced, tuning.RECORD: study}
                asked = lookup.question(mlflow_client, parent_id, None, records=logged)
                comp = asked.compare(mlflow_client)
                out = Path(config.compare.get("out") or stored.REPORT_DIR)
                shown = (asked, comp, out, *self._attach(mlflow_client, parent_id, comp, cwd / out))
            _log_best(mlflow_client, parent_id, sweep_dir)
        finally:
            mlflow_client.set_terminated(parent_id, self._status(statuses, failures, interrupted))
        for failure in failures:  # all of them: Hydra's own message names only the first
            print(f"job failed: {' '.join(failure['overrides'])}: {failure['error']}", file=sys.stderr)
        if failures:
            print(
                f"{len(failures)} job(s) of sweep {sweep_dir} failed; the others are recorded",
                file=sys.stderr,
            )
        # at exit MLflow downloads nothing (no predictions): a later report would compare otherwise
        if shown is not None and not interrupted:
            try:
                _keep_for_report(mlflow_client, config.tracking.uri, cwd, logged, *shown)
            except Exception as e:  # noqa: BLE001 (a shortcut for the next report: it computes instead)
                log.debug("the sweep's comparison is not kept for the next report: %s", e)

    @staticmethod
    def _attach(
        mlflow_client, parent_id: str, comp: "Comparison", out: Path
    ) -> tuple[list[Path] | None, str]:
        """The comparison where the MLflow UI shows it: the run's description (its note), headline
        metrics, and the table, CSV and charts as artifacts, written to `out`/<parent id> (compare.out),
        as `make compare` writes them; returns those files (None where that folder takes no files: they
        go to a temporary one) and the UI's link."""
        from mlflow.entities import Metric

        from archbench.comparing import table
        from archbench.comparing.comparison import write_all
        from archbench.tracking import tables

        curves = tables.histories(mlflow_client, comp.runs, comp.metric)
        with tempfile.TemporaryDirectory() as tmp:
            try:
                paths = write_all(comp, out / parent_id, curves)
            except OSError:  # a read-only folder: the artifacts still go to the parent run
                paths = None
            for path in paths or write_all(comp, Path(tmp), curves):
                mlflow_client.log_artifact(parent_id, str(path))
        mlflow_client.set_tag(parent_id, "mlflow.note.content", table.description(comp))  # the Overview's
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, 0) for k, v in table.headline(comp).items()]
        mlflow_client.log_batch(parent_id, metrics=metrics)
        experiment = mlflow_client.get_run(parent_id).info.experiment_id
        link = views.for_sweep(mlflow_client, comp, parent_id, experiment)
        print(table.markdown(comp))
        print(f"in the MLflow UI (make ui): {link}")
        print(f"the comparison: {views.run_link(experiment, parent_id)}")
        return paths, link

    def _status(self, statuses: set[str], failures: list, interrupted: bool) -> str:
        """The parent's end state, from how its jobs ended and how the sweep did."""
        if self.signalled or "KILLED" in statuses:
            return "KILLED"
        if interrupted or failures or statuses - {"FINISHED"}:
            return "FAILED"
        return "FINISHED"


def _records(found) -> list[dict]:
    """A job_failed.json's records: a list, or one record (as archbench wrote it before seeds together)."""
    return found if isinstance(found, list) else [found]


def _keep_for_report(
    mlflow_client,
    uri: str,
    cwd: Path,
    logged: dict,
    asked,
    comp,
    out: Path,
    paths: list[Path] | None,
    link: str,
) -> None:
    """Keep what a report asked next in `cwd` with `--out out` (`make compare`: outputs/comparison)
    would print, of the latest sweep and of `--parent` this one, as the report keeps its own output
    (tracking/stored.py): asked while the store is as the sweep left it, it prints at once, without
    MLflow. Kept only where a second read of the question finds it unchanged after the store's state
    was taken, and as the latest sweep only where it still is."""
    from archbench.sweeps import lookup
    from archbench.tracking import tables

    if not paths:
        return
    parent_id = asked.name
    before = stored.state(uri)
    if before is None or not asked.same(lookup.question(mlflow_client, parent_id, None, records=logged)):
        return
    text = lookup.shown(comp, out / parent_id, paths, link, views.run_link(asked.experiment_id, parent_id))
    latest = tables.latest_sweep(mlflow_client) == parent_id
    for parent in [parent_id, *([None] if latest else [])]:
        stored.keep(stored.request(uri, parent, None, None, out, cwd), before, text, paths)


def _log_best(mlflow_client, parent_id: str, sweep_dir: Path) -> None:
    """Optuna's verdict (optimization_results.yaml, written by its sweeper) on the parent run."""
    results = sweep_dir / "optimization_results.yaml"
    if not results.is_file():
        return
    best = OmegaConf.load(results)
    for key, value in best.get("best_params", {}).items():
        mlflow_client.log_param(parent_id, f"best.{key}", value)
    if "best_value" in best:
        mlflow_client.log_metric(parent_id, "best_value", float(best.best_value))


def _log_race(mlflow_client, parent_id: str, record: dict) -> None:
    """A race on its parent run: a step per round (configurations still in it, seeds so far, runs),
    why it stopped, and the record itself (race.json, which `make compare` reads back)."""
    from mlflow.entities import Metric

    from archbench.sweeps import race

    now = int(time.time() * 1000)
    metrics = [
        Metric(f"race_{key}", float(r[key]), now, r["round"])  # no "/": a section of its own in the UI
        for r in record["rounds"]
        for key in ("configurations", "seeds", "runs")
    ]
    if metrics:
        mlflow_client.log_batch(parent_id, metrics=metrics)
    mlflow_client.log_param(parent_id, "race.rounds", len(record["rounds"]))
    mlflow_client.set_tag(parent_id, "race.stopped", record["stopped"] or "running")
    mlflow_client.log_text(parent_id, json.dumps(record, indent=1), race.RECORD)
