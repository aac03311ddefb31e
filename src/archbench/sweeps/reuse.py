"""A sweep run again trains only what it is missing: the launcher of every sweep and race round.

Before a batch is launched, each job's composed config gives its two keys (archbench.identity), and
the store is asked for runs that carry them:
- a FINISHED run of the same keys is reused: not launched, its score and test predictions counted
  as they are (the latest, where there are several);
- a KILLED run, or an orphaned one (left RUNNING by a process that is gone: `orphaned`), is resumed
  from its checkpoint (`resume=<run id>`, as by hand); without a checkpoint, it is closed KILLED and
  the job trains. Two sweeps that find it at once both `claim` it, and exactly one wins: the other
  waits for that one's resume to end and reuses its result, or says why it has none;
- anything else trains.
Runs reused or resumed are tagged `archbench.used_by.<parent run id>` with the configuration they
count as; so are a sweep's own new children. The comparison, and the UI view the sweep link opens,
are the runs with that tag. Each sweep writes only its own job folders: the numbering goes on after
any left in the sweep folder.

`sweep.reuse=false` launches everything as it is.
"""

import copy
import logging
import socket
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from hydra.core.utils import JobReturn, JobStatus
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from archbench import identity, tuning
from archbench.config import SEED_OVERRIDE, configuration
from archbench.tracking.runs import HEARTBEAT_TAG, PARENT_FILE, PROCESS_TAG, client, process_tag
from archbench.tracking.tables import USED_BY

log = logging.getLogger(__name__)

CONTINUES_TAG = "archbench.continues"  # on a parent: the earlier sweeps whose runs it reused or resumed
REUSED_TAG = "archbench.reused"  # on a parent: how many runs it reused (finished, not trained again)
# + "<resume number>.<try>": the sweep that resumes a run. A param, because MLflow's store refuses a
# second value for a run's param (the pair is the table's primary key): of the sweeps that write one
# at once, exactly one succeeds, on SQLite, PostgreSQL, and a tracking server in front of either.
CLAIM_PARAM = "archbench.claim."
CLAIM_TRIES = 5  # writes of a claim that a busy store refused before the sweep gives the run up
WAIT_POLL_S = 2.0  # seconds between looks at a run that another sweep resumes


def orphaned(run, stale_after: float) -> bool:
    """Whether the process of a RUNNING run is gone: on this host, by its process id and start time;
    on another host (a Slurm node), by a heartbeat older than `stale_after` seconds."""
    tag = run.data.tags.get(PROCESS_TAG)
    if not tag:
        return True  # a run from before the tag: no process of this version holds it
    host, pid, started = tag.rsplit(":", 2)
    if host != socket.gethostname():
        return time.time() - last_sign_of_life(run) > stale_after
    try:
        return f"{psutil.Process(int(pid)).create_time():.0f}" != started
    except psutil.NoSuchProcess:
        return True


def last_sign_of_life(run) -> float:
    """Unix seconds of a run's heartbeat; of a run logged before heartbeats, its last metric's
    timestamp (RunData keeps each metric's latest point in _metric_objs), else its start."""
    if HEARTBEAT_TAG in run.data.tags:
        return float(run.data.tags[HEARTBEAT_TAG])
    stamps = [m.timestamp for m in getattr(run.data, "_metric_objs", [])]
    return max(stamps, default=run.info.start_time) / 1000


def claim(mlflow_client, run, stale_after: float) -> str | None:
    """This sweep's claim to resume `run` (the param's key), or None where another sweep holds it.

    Claims are numbered per resume of the run (archbench.resumed + 1), then per try: a claim whose
    sweep never reopened the run within `stale_after` seconds lapses, and the next try's key is free.
    """
    from mlflow.exceptions import MlflowException

    resume = int(run.data.tags.get("archbench.resumed", 0)) + 1
    prefix = f"{CLAIM_PARAM}{resume}."
    tries = sorted(
        (k for k in run.data.params if k.startswith(prefix)), key=lambda k: int(k.rsplit(".", 1)[1])
    )
    if tries and time.time() - float(run.data.params[tries[-1]].rsplit(":", 1)[1]) <= stale_after:
        return None  # another sweep claimed it a moment ago
    key = f"{prefix}{len(tries)}"
    token = f"{process_tag()}:{uuid.uuid4().hex[:8]}:{time.time():.0f}"
    for _ in range(CLAIM_TRIES):
        try:
            mlflow_client.log_param(run.info.run_id, key, token)
        except MlflowException:  # another sweep's value is in ("changing param values is not
            pass  # allowed"), or the store was busy: what it holds says which
        held = mlflow_client.get_run(run.info.run_id).data.params.get(key)
        if held is not None:
            return key if held == token else None
    return None


@dataclass
class Reused(JobReturn):
    """A job not launched: the finished run that already holds its result."""

    run_id: str = ""


@dataclass
class Decision:
    action: str  # "reuse", "resume", "wait" (another sweep resumes it) or "train"
    run: object = None  # the MLflow run reused or resumed
    why: str = ""  # a train with an earlier run of the same configuration and seed: why it is not used


@dataclass
class ReusingLauncher:
    """Wraps the sweep's configured launcher (basic, joblib, Slurm): launches what is missing."""

    launcher: object
    config: DictConfig  # the sweep's, with its hydra node
    config_loader: object
    enabled: bool = True
    stale_after: float = (
        300.0  # sweep.stale_after: a RUNNING run on another host without a newer beat is orphaned
    )
    reused: set = field(default_factory=set)
    earlier: set = field(default_factory=set)  # the parents of the runs reused or resumed
    next_job: int | None = None
    _data: dict = field(default_factory=dict)
    _code: dict = field(default_factory=dict)
    _configs: dict = field(default_factory=dict)  # a job's overrides but its seed -> its composed config

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
            return self._launch(job_overrides, first)
        parent_id = (sweep_dir / PARENT_FILE).read_text().strip()
        mlflow_client = client(self.config.tracking.uri)
        decisions = [self._decide(mlflow_client, overrides) for overrides in job_overrides]
        self._say(decisions)
        for overrides, decision in zip(job_overrides, decisions, strict=True):
            if decision.run is not None:
                run = decision.run
                mlflow_client.set_tag(run.info.run_id, USED_BY + parent_id, self._counted_as(overrides))
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
            if d.action in ("resume", "train")
        ]
        results = iter(self._launch(launched, first))
        return [
            next(results)
            if d.action in ("resume", "train")
            else self._waited(mlflow_client, overrides, d)
            if d.action == "wait"
            else _reused(overrides, d.run)
            for overrides, d in zip(job_overrides, decisions, strict=True)
        ]

    def _launch(self, job_overrides: list[list[str]], first: int) -> list[JobReturn]:
        """Launch these jobs, the seeds of one configuration as one job where they train together
        (together.py); returns each job's own result."""
        from archbench.sweeps import together

        if not job_overrides:
            return []
        planned = together.plan(job_overrides, self.composed)
        grouped = len(job_overrides) - len(planned)
        if grouped:
            print(f"{len(job_overrides)} runs in {len(planned)} jobs: seeds of one configuration train "
                  "together (train.together=false trains each alone)", flush=True)  # fmt: skip
        results = self.launcher.launch([o for o, _ in planned], initial_job_idx=first)
        self.next_job = first + len(planned)
        return together.expand(job_overrides, planned, list(results))

    def _waited(self, mlflow_client, overrides: list[str], decision: Decision) -> JobReturn:
        """The result of a run that another sweep claimed and resumes, once that resume ends."""
        run_id, since = decision.run.info.run_id, time.time()
        resume = int(decision.run.data.tags.get("archbench.resumed", 0)) + 1
        print(f"waiting for run {run_id}: another sweep resumes it", flush=True)
        while True:
            run = mlflow_client.get_run(run_id)
            if run.info.status == "FINISHED":
                self.reused.add(run_id)
                return _reused(overrides, run)
            reopened = int(run.data.tags.get("archbench.resumed", 0)) >= resume
            if run.info.status == "RUNNING" and reopened and orphaned(run, self.stale_after):
                why = "its process died"
            elif run.info.status != "RUNNING" and reopened:
                why = f"it ended {run.info.status}"
            elif not reopened and time.time() - since > self.stale_after:
                why = f"that sweep did not start it within sweep.stale_after={self.stale_after:g} s"
            else:
                time.sleep(WAIT_POLL_S)  # a poll of the store: the resume's end is the event waited for
                continue
            error = RuntimeError(
                f"run {run_id} ({configuration(overrides)}) was resumed by another sweep and {why}; "
                "this sweep trained nothing for it: run the sweep again to resume it"
            )
            return JobReturn(overrides=overrides, status=JobStatus.FAILED, _return_value=error)

    def _counted_as(self, overrides: list[str]) -> str:
        """The configuration a job counts as: a tuned sweep's evaluation leaves out its chosen values."""
        evaluation = "++tune.role=evaluation" in overrides
        return configuration(overrides, tuning.keys(self.config) if evaluation else ())

    def composed(self, overrides: list[str]) -> DictConfig:
        """The job's config as the sweeper composes it. The seeds of one configuration share one
        composition, with the seed set on a copy: Hydra takes 0.2 s a composition here, 3 s of a 15-job
        sweep's start when each job had its own. The sweeper's check of a batch composes here too."""
        seeds = [m for o in overrides if (m := SEED_OVERRIDE.fullmatch(o))]
        if len(seeds) != 1:
            return self.config_loader.load_sweep_config(self.config, overrides)
        rest = tuple(o for o in overrides if not SEED_OVERRIDE.fullmatch(o))
        if rest not in self._configs:
            self._configs[rest] = self.config_loader.load_sweep_config(self.config, list(rest))
        cfg = copy.deepcopy(self._configs[rest])
        with open_dict(cfg):
            cfg.seed = int(seeds[0].group(1))
        return cfg

    def _decide(self, mlflow_client, overrides: list[str]) -> Decision:
        cfg = self.composed(overrides)
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
                run.info.status == "RUNNING" and orphaned(run, self.stale_after)
            )
            if not stopped:
                continue
            if mlflow_client.list_artifacts(run.info.run_id, "checkpoint"):
                if claim(mlflow_client, run, self.stale_after) is None:
                    return Decision("wait", run)
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
                source, folder = instantiate(dataset), Path(cfg.data_dir)
                # the digests beside the data's cache, where a job has decoded it: no torch, no tensors
                known = getattr(source, "split_digests", lambda _: None)(folder)
                if known is None:  # not decoded yet, or an own dataset class: read as a job would
                    self._data[where] = identity.data_digest(source.load(folder).get("lineage"))
                else:
                    self._data[where] = identity.data_digest_of(known)
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
        waiting = f", waiting for {counts['wait']} that another sweep resumes" if counts["wait"] else ""
        print(
            f"reusing {counts['reuse']} finished runs, resuming {counts['resume']}, "
            f"training {counts['train']}{waiting} (sweep.reuse=false trains all)",
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
    """A reused run's per-example test predictions (predictions.PREDICTIONS), from the store; or None."""
    import tempfile

    from archbench.tracking.predictions import fetch_predictions

    with tempfile.TemporaryDirectory() as tmp:
        return fetch_predictions(client(config.tracking.uri), run_id, tmp)
