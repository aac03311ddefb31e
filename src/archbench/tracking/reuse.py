"""A sweep run again trains only what it is missing: the launcher of every sweep and race round.

Before a batch is launched, each job's composed config gives its two keys (archbench.identity), and
the store is asked for runs that carry them:
- a FINISHED run of the same keys is reused: not launched, its score and test predictions counted
  as they are (the latest, where there are several);
- a KILLED run, or one left RUNNING by a process that is gone, is resumed from its checkpoint
  (`resume=<run id>`, as by hand); without a checkpoint, it is closed KILLED and the job trains;
- anything else trains.
Runs reused or resumed are tagged `archbench.used_by.<parent run id>` with the configuration they
count as; so are a sweep's own new children. The comparison, and the UI view the sweep link opens,
are the runs with that tag. Each sweep writes only its own job folders: the numbering goes on after
any left in the sweep folder.

`sweep.reuse=false` launches everything as it is.
"""

import logging
import socket
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from hydra.core.utils import JobReturn, JobStatus
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from archbench import identity
from archbench.config import configuration
from archbench.tracking.runs import PARENT_FILE, PROCESS_TAG, USED_BY, client

log = logging.getLogger(__name__)

CONTINUES_TAG = "archbench.continues"  # on a parent: the earlier sweeps whose runs it reused or resumed
REUSED_TAG = "archbench.reused"  # on a parent: how many runs it reused (finished, not trained again)


def gone(tag: str | None) -> bool:
    """Whether the process a RUNNING run names has ended (one on another host is taken as alive)."""
    if not tag:
        return True  # a run from before the tag: no process of this version holds it
    host, pid, started = tag.rsplit(":", 2)
    if host != socket.gethostname():
        return False
    try:
        return f"{psutil.Process(int(pid)).create_time():.0f}" != started
    except psutil.NoSuchProcess:
        return True


@dataclass
class Reused(JobReturn):
    """A job not launched: the finished run that already holds its result."""

    run_id: str = ""


@dataclass
class Decision:
    action: str  # "reuse", "resume" or "train"
    run: object = None  # the MLflow run reused or resumed
    why: str = ""  # a train with an earlier run of the same configuration and seed: why it is not used


@dataclass
class ReusingLauncher:
    """Wraps the sweep's configured launcher (basic, joblib, Slurm): launches what is missing."""

    launcher: object
    config: DictConfig  # the sweep's, with its hydra node
    config_loader: object
    enabled: bool = True
    reused: set = field(default_factory=set)
    earlier: set = field(default_factory=set)  # the parents of the runs reused or resumed
    next_job: int | None = None
    _data: dict = field(default_factory=dict)
    _code: dict = field(default_factory=dict)

    def launch(self, job_overrides, initial_job_idx: int) -> list[JobReturn]:
        job_overrides = [list(o) for o in job_overrides]
        sweep_dir = Path(self.config.hydra.sweep.dir)
        if self.next_job is None:  # numbered after the folders of an earlier session in this folder
            taken = (
                [int(p.name) for p in sweep_dir.glob("*") if p.name.isdigit()] if sweep_dir.is_dir() else []
            )
            self.next_job = max(taken, default=-1) + 1
        first = max(initial_job_idx, self.next_job)
        if not self.enabled:
            print(f"sweep.reuse=false: training all {len(job_overrides)} runs", flush=True)
            results = self.launcher.launch(job_overrides, initial_job_idx=first)
            self.next_job = first + len(job_overrides)
            return results
        parent_id = (sweep_dir / PARENT_FILE).read_text().strip()
        mlflow_client = client(self.config.tracking.uri)
        decisions = [self._decide(mlflow_client, overrides) for overrides in job_overrides]
        self._say(decisions)
        for overrides, decision in zip(job_overrides, decisions, strict=True):
            if decision.run is not None:
                run = decision.run
                mlflow_client.set_tag(run.info.run_id, USED_BY + parent_id, configuration(overrides))
                self.earlier.add(run.data.tags.get("mlflow.parentRunId", ""))
                if decision.action == "reuse":
                    self.reused.add(run.info.run_id)
        self.earlier.discard("")
        self.earlier.discard(parent_id)
        if self.earlier:
            mlflow_client.set_tag(parent_id, CONTINUES_TAG, " ".join(sorted(self.earlier)))
        mlflow_client.set_tag(parent_id, REUSED_TAG, str(len(self.reused)))
        launched = [
            [*overrides, f"resume={d.run.info.run_id}"] if d.action == "resume" else overrides
            for overrides, d in zip(job_overrides, decisions, strict=True)
            if d.action != "reuse"
        ]
        results = iter(self.launcher.launch(launched, initial_job_idx=first) if launched else [])
        self.next_job = first + len(launched)
        return [
            next(results) if d.action != "reuse" else _reused(overrides, d.run)
            for overrides, d in zip(job_overrides, decisions, strict=True)
        ]

    def _decide(self, mlflow_client, overrides: list[str]) -> Decision:
        cfg = self.config_loader.load_sweep_config(self.config, overrides)
        data = self._data_digest(cfg)
        if data is None:  # the data cannot be read here: the job says why, in its own words
            return Decision("train")
        key = identity.config_key(identity.settings(cfg), data)
        code = self._code_version(cfg)
        experiment = mlflow_client.get_experiment_by_name(cfg.tracking.experiment)
        if experiment is None:
            return Decision("train")
        found = mlflow_client.search_runs(
            [experiment.experiment_id],
            f"tags.`{identity.CONFIG_TAG}` = '{key}'",
            order_by=["attributes.start_time DESC"],
        )
        same = [r for r in found if r.data.tags.get(identity.CODE_TAG) == code]
        for run in same:
            if run.info.status == "FINISHED":
                return Decision("reuse", run)
        for run in same:
            stopped = run.info.status == "KILLED" or (
                run.info.status == "RUNNING" and gone(run.data.tags.get(PROCESS_TAG))
            )
            if not stopped:
                continue
            if mlflow_client.list_artifacts(run.info.run_id, "checkpoint"):
                return Decision("resume", run)
            if run.info.status == "RUNNING":  # its process is gone before its first epoch ended
                mlflow_client.set_terminated(run.info.run_id, "KILLED")
        if any(r.info.status == "FINISHED" for r in found):
            return Decision("train", why="code changed")
        return Decision("train")

    def _data_digest(self, cfg: DictConfig) -> str | None:
        from archbench import images

        node = OmegaConf.to_container(cfg.dataset, resolve=True)
        where = repr((node, str(Path(cfg.data_dir).resolve())))
        if where not in self._data:
            try:
                dataset = OmegaConf.create(node)
                images.settle(dataset)
                raw = instantiate(dataset).load(Path(cfg.data_dir))
                self._data[where] = identity.data_digest(raw.get("lineage"))
            except Exception as e:  # noqa: BLE001 (a missing folder, a download not allowed)
                log.debug("no data digest for reuse: %s", e)
                self._data[where] = None
        return self._data[where]

    def _code_version(self, cfg: DictConfig) -> str:
        modules = tuple(sorted(identity._own_modules(cfg)))
        if modules not in self._code:
            self._code[modules] = identity.code_version(cfg)
        return self._code[modules]

    @staticmethod
    def _say(decisions: list[Decision]) -> None:
        counts = Counter(d.action for d in decisions)
        print(
            f"reusing {counts['reuse']} finished runs, resuming {counts['resume']}, "
            f"training {counts['train']} (sweep.reuse=false trains all)",
            flush=True,
        )
        why = Counter(d.why for d in decisions if d.why)
        for reason, n in why.items():
            print(f"{n} run{'s'[: n > 1]} not reused: {reason}", flush=True)


def _reused(overrides: list[str], run) -> Reused:
    metrics = run.data.metrics
    score = metrics.get("val_accuracy", metrics.get("test_accuracy"))
    return Reused(
        overrides=overrides, status=JobStatus.COMPLETED, _return_value=score, run_id=run.info.run_id
    )


def predictions(config: DictConfig, run_id: str):
    """A reused run's per-example test predictions (records.PREDICTIONS), from the store; or None."""
    import tempfile

    from archbench.tracking.records import fetch_predictions

    with tempfile.TemporaryDirectory() as tmp:
        return fetch_predictions(client(config.tracking.uri), run_id, tmp)
