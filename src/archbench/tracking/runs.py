"""Everything MLflow: one run per job, its lifecycle, metrics, artifacts and checkpoints. The store
itself (creating, upgrading, reaching it, its failures) is store.py's; what a classifier's run
records beyond its metrics (datasets, confusion matrix, per-class accuracy, the model), records.py's.

Runs go through `MlflowClient` rather than the fluent API, so no process-global "active run" can
leak from a failed job into the next one that the same process runs.
"""

import logging
import os
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from archbench.identity import BOOKKEEPING, dotted
from archbench.tracking.store import client, redact
from archbench.tracking.tables import USED_BY

log = logging.getLogger(__name__)

PARENT_FILE = "mlflow_parent_run_id"  # in a sweep's folder: the parent run its jobs attach to
PROCESS_TAG = "archbench.process"  # host:pid:start time of the process that has the run open
# Unix seconds, refreshed while the run is open (Heartbeat): a sweep on any host can tell that the
# process holding a RUNNING run is gone (reuse.orphaned). MLflow itself has none: a killed process's
# run stays RUNNING for ever.
HEARTBEAT_TAG = "archbench.heartbeat"
# Two slots, taken in turn by odd and even epochs: a process killed while it writes one (SIGKILL, the
# out-of-memory killer, a node losing power) tears that file only, and the other still holds the
# epoch before. last.pt is the one slot of runs logged before.
CHECKPOINTS = ("checkpoint/odd.pt", "checkpoint/even.pt", "checkpoint/last.pt")
SYSTEM_METRICS_S = 1.0  # seconds between system/... samples: a 5-epoch mlp run lasts ~2 s
SLURM_TAG = "slurm_job_id"  # a Slurm job's run: the job as squeue and scancel name it
# submitit's signal to checkpoint and requeue a Slurm job (its JobEnvironment.USR_SIG)
PREEMPT = signal.Signals["SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")]


def process_tag() -> str:
    """This process, as a run records who has it open: a later sweep can tell that it is gone."""
    import psutil

    return f"{socket.gethostname()}:{os.getpid()}:{psutil.Process().create_time():.0f}"


def redact_overrides(overrides: list[str]) -> list[str]:
    """Command-line overrides fit to record: any URI's password replaced by ***."""
    return [re.sub(r"(?<==)(\w[\w+.-]*://\S+)", lambda m: redact(m.group(1)), o) for o in overrides]


# The experiment's kind as MLflow 3's UI reads it: model training, not GenAI. (3.17 still opens in
# its GenAI view by a per-browser default, so the links archbench prints ask for the other view.)
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def experiment_id(mlflow_client, name: str) -> str:
    """The experiment's id, creating it if needed (and tolerating a concurrent creator)."""
    from mlflow.exceptions import MlflowException

    found = mlflow_client.get_experiment_by_name(name)
    if found is not None:
        if "mlflow.experimentKind" not in found.tags:  # made before archbench set the kind
            mlflow_client.set_experiment_tag(found.experiment_id, *next(iter(EXPERIMENT_KIND.items())))
        return found.experiment_id
    uri = mlflow_client.tracking_uri
    artifacts = None
    if uri.startswith("sqlite:///"):  # beside the database, not in whatever folder we run from
        folder = re.sub(r"[^\w.-]", "_", name)
        artifacts = (Path(uri.removeprefix("sqlite:///")).parent / folder).resolve().as_uri()
    try:
        return mlflow_client.create_experiment(name, artifact_location=artifacts, tags=EXPERIMENT_KIND)
    except MlflowException:  # another process created it between our two calls
        return mlflow_client.get_experiment_by_name(name).experiment_id


def flatten(cfg: DictConfig) -> dict[str, str]:
    """The resolved config as dotted keys (`optimizer.lr`), with credentials removed."""
    flat = dotted(cfg)
    if "tracking.uri" in flat:
        flat["tracking.uri"] = redact(flat["tracking.uri"])
    return flat


HYDRA_KEYS = ("_target_", "_partial_")  # which class and how it is called: the group's choice says it


def params(cfg: DictConfig, choices: dict[str, str], device) -> dict[str, str]:
    """A run's params: what changes its results. Each group's choice (`activation=relu`), the
    settings, the seed, and the device as used (the config may say `auto`)."""

    def plumbing(key: str) -> bool:
        hydra = key.rsplit(".", 1)[-1] in HYDRA_KEYS
        return hydra or any(key == b or key.startswith(f"{b}.") for b in BOOKKEEPING)

    return {**choices, **{k: v for k, v in flatten(cfg).items() if not plumbing(k)}, "device": str(device)}


def resolved_yaml(cfg: DictConfig) -> str:
    container = OmegaConf.to_container(cfg, resolve=True)
    container.get("tracking", {})["uri"] = redact(str(cfg.tracking.uri))
    return OmegaConf.to_yaml(container)


class Terminated(KeyboardInterrupt):
    """SIGTERM (scancel, a SLURM timeout, kill), raised like Ctrl-C so every cleanup runs."""


class Run:
    """One job's MLflow run; `with run:` ends it FINISHED, FAILED (error kept) or KILLED."""

    def __init__(self, mlflow_client, run_id: str, name: str = "", system_metrics: bool = False):
        self.client, self.run_id, self.name = mlflow_client, run_id, name
        self.system_metrics = system_metrics  # MLflow's system/... metrics while the run is open
        self._busy = False  # inside a store write that a signal must not cut in half
        self._pending: int | None = None  # a signal held back until the write ends
        self._saved_handlers: dict = {}
        self._monitor = None
        self._last_ms = 0  # the last metric timestamp: each batch's is later (see log_metrics)
        self.held: dict[str, int] = {}  # a resumed run's metrics in the store: key -> its latest step
        self.heartbeat_s: float = HEARTBEAT_S
        self._heartbeat: Heartbeat | None = None

    @classmethod
    def start(cls, mlflow_client, experiment: str, name: str, tags: dict, parent_run_id=None):
        from mlflow.tracking.context.registry import resolve_tags
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

        tags = {**tags, PROCESS_TAG: process_tag(), HEARTBEAT_TAG: beat()}
        if parent_run_id:  # the sweep's own, as its reused runs are (reuse.py): its comparison is these
            tags = {
                **tags,
                MLFLOW_PARENT_RUN_ID: parent_run_id,
                USED_BY + parent_run_id: tags.get("configuration", "(defaults)"),
            }
        run = mlflow_client.create_run(
            experiment_id(mlflow_client, experiment), run_name=name, tags=resolve_tags(tags)
        )
        return cls(mlflow_client, run.info.run_id, name)

    @classmethod
    def reopen(cls, mlflow_client, run_id: str):
        """The same run, RUNNING again; the error that stopped it stays in error.txt."""
        run = mlflow_client.get_run(run_id)
        if "archbench.error" in run.data.tags:
            mlflow_client.delete_tag(run_id, "archbench.error")
        resumed = int(run.data.tags.get("archbench.resumed", 0)) + 1
        mlflow_client.set_tag(run_id, "archbench.resumed", str(resumed))
        mlflow_client.set_tag(run_id, PROCESS_TAG, process_tag())  # this process has it open now
        mlflow_client.set_tag(run_id, HEARTBEAT_TAG, beat())
        mlflow_client.update_run(run_id, status="RUNNING")
        reopened = cls(mlflow_client, run_id, run.info.run_name)
        # what the store holds already: a process killed between two writes is not logged twice
        # (RunData keeps each metric's latest point, step included, in _metric_objs)
        reopened.held = {m.key: m.step for m in getattr(run.data, "_metric_objs", [])}
        return reopened

    def log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow's limit per batch
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_config(self, cfg: DictConfig, params: dict[str, str]) -> None:
        """The run's `params`, and the whole resolved config as config.yaml."""
        self.log_params(params)
        self.log_text(resolved_yaml(cfg), "config.yaml")

    def log_metrics(self, metrics: dict[str, float], step: int = 0, once: bool = False) -> None:
        """All of `metrics` in one store call, with a heartbeat. `once`: leave out the keys that a
        resumed run already holds at `step` or later (its earlier process logged them, then died)."""
        from mlflow.entities import Metric, RunTag

        if once:
            metrics = {k: v for k, v in metrics.items() if self.held.get(k, -1) < step}
        # strictly later than this run's last call: at an equal step, MLflow keeps the later value as
        # the run's summary (early stopping logs its best epoch's figures after the last epoch's)
        now = self._last_ms = max(int(time.time() * 1000), self._last_ms + 1)
        points = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        with self.atomic():  # one transaction: all of these points or none
            self.client.log_batch(self.run_id, points, tags=[RunTag(HEARTBEAT_TAG, beat())])

    def log_text(self, text: str, name: str) -> None:
        self.client.log_text(self.run_id, text, name)

    def log_state(self, state: dict) -> None:
        """torch.save `state` (a checkpoint, with its "epoch") into its epoch's slot."""
        import torch  # here: a sweep's parent reads runs through this module and trains nothing

        name = CHECKPOINTS[state["epoch"] % 2 == 0]
        with tempfile.TemporaryDirectory() as tmp, self.atomic():
            path = Path(tmp) / Path(name).name
            torch.save(state, path)
            self.client.log_artifact(self.run_id, str(path), str(Path(name).parent))

    def load_state(self) -> dict:
        """The latest checkpoint that reads whole; FileNotFoundError if there is none."""
        import torch

        held = {f.path for f in self.client.list_artifacts(self.run_id, "checkpoint")}
        states = []
        with tempfile.TemporaryDirectory() as tmp:
            for name in (n for n in CHECKPOINTS if n in held):
                try:
                    path = self.client.download_artifacts(self.run_id, name, tmp)
                    states.append(torch.load(path, weights_only=False, map_location="cpu"))
                except Exception as e:  # noqa: BLE001 (torn by a kill mid-write: the other slot holds)
                    log.warning(
                        "run %s: %s unreadable (%s); using the other checkpoint", self.run_id, name, e
                    )
        if not states:
            raise FileNotFoundError(f"run {self.run_id} has no readable checkpoint")
        return max(states, key=lambda state: state["epoch"])

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._saved_handlers[sig] = signal.signal(sig, self._on_signal)
            if callable(signal.getsignal(PREEMPT)):  # submitit's, in a Slurm job: held back like these
                self._saved_handlers[PREEMPT] = signal.signal(PREEMPT, self._on_signal)
        self._heartbeat = Heartbeat(self.client, self.run_id, self.heartbeat_s)
        self._heartbeat.start()
        if self.system_metrics:  # MLflow's own monitor, on a thread, for this run id (no fluent run)
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self._monitor = SystemMetricsMonitor(
                self.run_id, SYSTEM_METRICS_S, resume_logging=True, tracking_uri=self.client.tracking_uri
            )
            self._monitor.start()
        return self

    def __exit__(self, kind, error, tb):
        for sig, handler in self._saved_handlers.items():
            signal.signal(sig, handler)
        if self._heartbeat is not None:  # stopped first: no beat lands after the run's end
            self._heartbeat.stop()
        if self._monitor is not None:
            self._monitor.finish()  # its last samples logged while the run is still RUNNING
        status = (
            "FINISHED" if error is None else "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
        )
        try:
            if error is not None:
                text = f"{type(error).__name__}: {error}"
                self.client.set_tag(self.run_id, "archbench.error", text[:4000])
            self.client.set_terminated(self.run_id, status)
        except Exception as e:  # the store is gone: say so, but keep the job's own error
            log.error("could not mark MLflow run %s %s: %s", self.run_id, status, e)
        if error is not None:
            try:  # after the status: a full disk that refuses this file may still have taken that
                self.log_text("".join(traceback.format_exception(kind, error, tb)), "error.txt")
            except Exception as e:
                log.error("could not save error.txt of MLflow run %s: %s", self.run_id, e)
        return False

    def _on_signal(self, signum, frame):
        if self._busy:  # finish the write first, then stop
            self._pending = signum
            return
        self._stop(signum, frame)

    def _stop(self, signum: int, frame=None) -> None:
        name = signal.Signals(signum).name
        if signum != PREEMPT:
            raise (Terminated if signum == signal.SIGTERM else KeyboardInterrupt)(f"stopped by {name}")
        # submitit's handler: it checkpoints, has Slurm requeue the job, and exits. The requeue makes
        # Slurm send SIGTERM at once: held, it cannot cut the handler short (and its log lines with it).
        self._busy = True
        requeued = Terminated(f"requeued by Slurm at {name} (time limit or pre-emption)")
        try:
            self._saved_handlers[signum](signum, frame)
        except SystemExit:
            raise requeued from None
        except subprocess.CalledProcessError as e:
            # the requeue's SIGTERM reaches the job's every process, submitit's `scontrol requeue`
            # among them when it has not exited yet: the job was requeued all the same
            if e.returncode != -signal.SIGTERM or list(e.cmd[:2]) != ["scontrol", "requeue"]:
                raise
            log.warning("Requeued job %s (scontrol ended by the requeue's own SIGTERM)", e.cmd[2])
            raise requeued from None
        finally:
            self._busy, self._pending = False, None

    @contextmanager
    def atomic(self):
        """A store write that Ctrl-C, SIGTERM or a requeue must not cut in half: the signal waits for
        its end (the outermost one's, where they nest)."""
        outer, self._busy = not self._busy, True
        try:
            yield
        finally:
            if outer:
                self._busy = False
        if outer and self._pending:
            signum, self._pending = self._pending, None
            self._stop(signum)


HEARTBEAT_S = 30.0  # tracking.heartbeat_s's default: seconds between beats while a run is open


def beat() -> str:
    return str(int(time.time()))


class Heartbeat(threading.Thread):
    """Sets a run's HEARTBEAT_TAG every `interval` seconds until stopped. Each epoch's metrics carry
    one too (log_metrics): this thread covers epochs longer than the interval."""

    def __init__(self, mlflow_client, run_id: str, interval: float):
        super().__init__(name=f"heartbeat-{run_id}", daemon=True)
        self.client, self.run_id, self.interval = mlflow_client, run_id, interval
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.wait(self.interval):
            try:
                self.client.set_tag(self.run_id, HEARTBEAT_TAG, beat())
            except Exception as e:  # noqa: BLE001 (a store busy for a moment: the next beat tries again)
                log.debug("heartbeat of run %s not written: %s", self.run_id, e)

    def stop(self) -> None:
        self._stopped.set()
        self.join(timeout=60)


opened: list[str] = []  # the ids of the runs this process opened, in order: the Python API returns its own


def open_run(cfg: DictConfig, name: str, tags: dict, sweep_dir: Path | None, resume_id=None) -> Run:
    """A new run (a child of its sweep's parent run, if any), or the resumed one."""
    mlflow_client = client(cfg.tracking.uri)
    if resume_id:
        run = Run.reopen(mlflow_client, resume_id)
    else:
        parent = sweep_dir / PARENT_FILE if sweep_dir else None
        parent_id = parent.read_text().strip() if parent and parent.is_file() else None
        run = Run.start(mlflow_client, cfg.tracking.experiment, name, tags, parent_id)
    run.system_metrics = cfg.tracking.get("system_metrics", False)
    run.heartbeat_s = cfg.tracking.get("heartbeat_s", HEARTBEAT_S)
    opened.append(run.run_id)
    return run


def job_run(cfg: DictConfig, sweep_dir: Path | None, job: str):
    """The latest run of Slurm job `job` in this sweep (an MLflow Run), or None: what a job that Slurm
    requeued and started again continues."""
    mlflow_client = client(cfg.tracking.uri)
    experiment = mlflow_client.get_experiment_by_name(cfg.tracking.experiment)
    parent = sweep_dir / PARENT_FILE if sweep_dir else None
    if experiment is None or parent is None or not parent.is_file():
        return None
    where = f"tags.{SLURM_TAG} = '{job}' and tags.mlflow.parentRunId = '{parent.read_text().strip()}'"
    found = mlflow_client.search_runs(
        [experiment.experiment_id], where, max_results=1, order_by=["attributes.start_time DESC"]
    )
    return found[0] if found else None


def resume_point(cfg: DictConfig, requeued: bool = False) -> tuple[DictConfig, dict | None]:
    """The config a run was started with (tracking from `cfg`) and its last checkpoint; a requeued
    Slurm job's run that had no checkpoint yet starts again from its first epoch (None)."""
    from mlflow.exceptions import MlflowException

    from archbench.config import ConfigError

    mlflow_client = client(cfg.tracking.uri)
    where = f"resume={cfg.resume}"
    try:
        info = mlflow_client.get_run(cfg.resume).info
    except MlflowException as e:
        raise ConfigError(f"{where}: no such run in {redact(cfg.tracking.uri)}") from e
    if info.status == "FINISHED":
        raise ConfigError(f"{where}: that run already finished; nothing to resume")
    run = Run(mlflow_client, cfg.resume)
    missing = ConfigError(
        f"{where}: the run has no checkpoint (it stopped before its first epoch ended, or ran "
        "with train.checkpoint=false); start it anew"
    )
    try:
        with tempfile.TemporaryDirectory() as tmp:
            logged = OmegaConf.load(mlflow_client.download_artifacts(cfg.resume, "config.yaml", tmp))
    except (MlflowException, OSError) as e:
        raise missing from e
    try:
        state = run.load_state()
    except (MlflowException, OSError) as e:  # FileNotFoundError: no checkpoint reads whole
        if not requeued:
            raise missing from e
        state = None  # a requeued Slurm job stopped before its first epoch ended: it starts again
    logged.tracking = cfg.tracking
    logged.resume = cfg.resume
    logged.seeds = 1  # the run was one seed of its sweep (seeds: 5 in a preset); resumed, it is one run
    logged.train.progress = cfg.train.progress
    return logged, state
