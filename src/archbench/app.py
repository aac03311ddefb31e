"""One Hydra job: validate, build, train and track. `run.py` calls `main`."""

import contextlib
import copy
import logging
import os
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from archbench import cpus, fits, identity, images, slurm, splits, tuning
from archbench.augment import augmentation
from archbench.config import GROUPS, ConfigError, configuration, seed_jobs, validate
from archbench.debug import CannotOverfit, debug_tag, epoch_batches
from archbench.stopping import EarlyStopping
from archbench.summary import breakdown, model_summary, mult_adds, parameter_counts
from archbench.tracking import records, runs, store
from archbench.train import Trainer, keep_freed_memory, place

log = logging.getLogger(__name__)

# Keys newer than some checkpoints: a run logged without them is resumed as it ran, with all of them off.
ADDED_KEYS = {
    "scheduler": {"schedule": None, "interval": "epoch"},
    "train.early_stopping": {"patience": None, "min_delta": 0.0},
    "train.limit_batches": None,
    "train.overfit_batches": None,
    "seeds": 1,
    "tune": {"params": None, "role": None},
    "train.together": False,
    "train.group": None,
}


def main(cfg: DictConfig) -> float | None:
    """Train and evaluate one configuration; returns the accuracy a sweeper should maximise."""
    try:
        return run_job(cfg)
    except runs.Terminated as e:  # SIGTERM, or submitit's requeue; the run is KILLED
        if HydraConfig.get().mode != RunMode.MULTIRUN or not slurm.job_id():
            raise
        if slurm.requeued():  # no result for the sweep: the job starts again and resumes its run
            raise SystemExit(
                f"Slurm requeued job {slurm.job_id()} ({e}): it resumes when it starts again"
            ) from None
        # for good (scancel, its time limit): a failed job's result, so that the sweep goes on
        raise slurm.Cancelled(f"Slurm job {slurm.job_id()} {e}: scancel, or its time limit") from None
    except CompactHydraException as e:  # our own errors: config, data, divergence, the store
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # the job fails, the sweep goes on, and the sweep callback reports it
        raise SystemExit(f"error: {e}") from None  # one line, without Hydra's traceback banner
    except Exception as e:  # a store that is locked, read-only, full or gone: one line too
        line = store.failure(e, str(cfg.tracking.uri))
        if line is None:
            raise
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise store.StoreError(line) from e
        raise SystemExit(f"error: {line}") from None
    finally:
        cpus.release()  # the next job of this process (or another sweep's) leases the cores afresh


def run_job(cfg: DictConfig) -> float | None:
    # what makes this run the same as another, from the config as composed (identity.py): a later
    # sweep of the same configuration and seed reuses it rather than training it again. Only a new
    # run is tagged with it: a resumed one has its tags, and mode=inspect makes no run
    same = (
        None if cfg.resume or cfg.mode == "inspect" else (identity.settings(cfg), identity.code_version(cfg))
    )
    # Slurm started this job again (pre-emption, time limit): continue its run, if it had one. A job
    # of seeds together starts its group again: its runs share the job's id, and each resumes alone
    requeued = slurm.restarted() and not cfg.resume and not cfg.train.get("group")
    if requeued:
        earlier = runs.job_run(cfg, sweep_dir(), slurm.job_id())
        if earlier is not None and earlier.info.status == "FINISHED":  # requeued as it ended: it is done
            return earlier.data.metrics.get("val_accuracy", earlier.data.metrics.get("test_accuracy"))
        OmegaConf.update(cfg, "resume", earlier.info.run_id if earlier is not None else None)
    cfg, state = runs.resume_point(cfg, requeued) if cfg.resume else (cfg, None)
    for key, off in ADDED_KEYS.items():
        if OmegaConf.select(cfg, key, default=KeyError) is KeyError:
            OmegaConf.update(cfg, key, off, force_add=True)
    images.settle(cfg.dataset)  # an image folder's classes and image size, where its config leaves them null
    device = configure(cfg)
    if cfg.train.get("group"):  # several seeds of this configuration, as one batched model
        return train_together(cfg, device, same)
    model = fits.build(cfg, model_name(cfg))
    if cfg.mode == "inspect":
        print(model_summary(model, fits.input_shape(cfg)))  # one sample, as the course shows it
        print(breakdown(model))
        return None
    set_threads(cfg, model, device)
    runs.client(cfg.tracking.uri)  # a store that cannot be reached or written fails here, before any data
    source = instantiate(cfg.dataset)
    data = splits.for_job(source, Path(cfg.data_dir), device, cfg.train.val_fraction, cfg.seed)
    model = place(model, data, cfg.train.channels_last)
    optimizer = instantiate(cfg.optimizer)(model.parameters())
    steps = epoch_batches(
        len(data.x_train), cfg.train.batch_size, cfg.train.limit_batches, cfg.train.overfit_batches
    )
    stopping = cfg.train.early_stopping
    trainer = Trainer(
        model=torch.compile(model) if cfg.train.compile else model,
        optimizer=optimizer,
        criterion=instantiate(cfg.loss.criterion),
        batch_size=cfg.train.batch_size,
        generator=torch.Generator(device).manual_seed(cfg.seed),
        amp=cfg.train.amp,
        progress=cfg.train.progress,
        bar=parallel_bar(),
        scheduler=scheduler(cfg.scheduler, optimizer, steps_per_epoch=steps),
        interval=cfg.scheduler.interval,
        monitor=cfg.scheduler.get("monitor"),
        stopper=EarlyStopping(**stopping) if stopping.patience else None,
        augment=augmentation(source.augmentation, fill=-data.mean / data.std, seed=cfg.seed),
        limit_batches=cfg.train.limit_batches,
        overfit_batches=cfg.train.overfit_batches,
    )
    return train_tracked(cfg, trainer, data, device, state, same)


def scheduler(node: DictConfig, optimizer: torch.optim.Optimizer, **runtime):
    """The config's lr scheduler on `optimizer`, or None; `runtime` values (steps_per_epoch) fill
    only the keys its YAML declares and leaves null."""
    if node.schedule is None:
        return None
    filled = {k: v for k, v in runtime.items() if k in node.schedule and node.schedule[k] is None}
    return instantiate(node.schedule, **filled)(optimizer)


def configure(cfg: DictConfig) -> torch.device:
    """Validate, then set what is process-wide: determinism, the seed. (The threads follow the
    network: set_threads.)"""
    device = validate(cfg)
    # (a resumed run's config is the one it ran with, resolved: its choices were checked then)
    refused = None if cfg.resume else fits.ignored(cfg.model, cfg.loss, job_overrides(), choices())
    if refused:
        raise ConfigError(refused)
    if cfg.train.amp is True and device.type == "cpu" and not cpus.native_bf16():
        log.warning(
            "train.amp=true: this CPU has no native bf16 (avx512_bf16, AMX), so it runs slower than fp32"
        )
    keep_freed_memory()
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # also off again for the next job. torch.use_deterministic_algorithms sets torch.compile's flag
    # as well, and importing the compiler for it costs a job 2.7 s of start-up: only where it compiles
    if cfg.train.compile:
        torch.use_deterministic_algorithms(cfg.deterministic)
    else:
        torch.set_deterministic_debug_mode("error" if cfg.deterministic else "default")
    torch.backends.cudnn.benchmark = cfg.train.cudnn_benchmark and not cfg.deterministic
    torch.manual_seed(cfg.seed)
    return device


# Mult-adds of a training batch's forward pass below which a run on the CPU takes one thread. Waiting
# OpenMP threads sleep (cpus.prepare_environment: no collapse beside other work), and a small
# network's many short operations each pay for waking them. Measured with benchmarks/epoch_speed.py
# under OMP_WAIT_POLICY=PASSIVE on a 2-core Xeon: the mlp (8M a batch) took 0.49 s an epoch on 1
# thread and 0.85 s on 2; cnn1 (72M) 6.7 s on 2 and 10.5 s on 1; cnn2 (286M) 7.1 s on 2 and 10.5 s
# on 1 (docs/speed.md, Threads).
SMALL_BATCH = 50_000_000


def set_threads(cfg: DictConfig, model: torch.nn.Module, device: torch.device) -> None:
    """The job's CPU threads (cpus.threads_for_job), set and logged; where nothing chose them, a
    network too small for a second thread (SMALL_BATCH) takes one."""
    share, hold = default_threads()
    work = None
    chosen = cfg.train.threads or cpus.users_threads()
    if share > 1 and hold == "shared" and device.type == "cpu" and not chosen:
        with torch.random.fork_rng(devices=[]):  # torchinfo's random input leaves the seed's stream
            work = mult_adds(model, fits.input_shape(cfg)) * cfg.train.batch_size
    small = work is not None and work < SMALL_BATCH
    threads, why = cpus.threads_for_job(cfg.train.threads, 1 if small else share, hold)
    if small and why == cpus.LEASED:
        why = f"{work / 1e6:.0f}M mult-adds a batch: a second thread would only wait"
    log.info("%d CPU thread%s (%s)", threads, "s"[: threads > 1], why)
    with open_dict(cfg):
        cfg.train.threads = threads  # logged as used: the thread count changes float results
    torch.set_num_threads(threads)


def train_tracked(cfg: DictConfig, trainer: Trainer, data, device, state: dict | None, same=None) -> float:
    """Train inside one MLflow run: metrics and a checkpoint per epoch, the final figures at the end.
    `same`: the config's identity.settings and code_version, tagged for reuse."""
    counts = parameter_counts(trainer.module)
    picked = picked_choices(cfg)
    tags = run_tags(cfg, picked, device, data, same, job_overrides())
    logged = runs.params(cfg, picked, device)
    run = runs.open_run(cfg, run_name(picked, cfg.seed), tags, sweep_dir(), resume_id=cfg.resume)
    with run:
        start, spent = 1, 0.0
        if state is not None:
            start, spent = trainer.restore(state) + 1, state["train_time_s"]
            log.info("resuming %s after epoch %d", run.run_id, start - 1)
            if "metrics" in state:  # killed after the checkpoint, before its metrics reached the store
                run.log_metrics(state["metrics"], step=start - 1, once=True)
        elif not cfg.resume:  # (a requeued job's run without a checkpoint has its record already)
            run.log_config(cfg, logged)
            summary = model_summary(trainer.module, fits.input_shape(cfg), cfg.train.batch_size, device)
            run.log_text(summary, "model_summary.txt")
            if data.lineage:
                records.log_datasets(run, data.lineage)  # the UI's Datasets column

        def on_epoch_end(epoch: int, metrics: dict[str, float]) -> None:
            nonlocal spent
            spent += metrics["epoch_time_s"]
            metrics["epoch_time_s"] = round(metrics["epoch_time_s"], 3)  # ms: timings vary more than that
            # Every epoch logged once, whenever the process dies (SIGKILL too, which nothing can hold
            # back): the checkpoint first, carrying the epoch's metrics, then the metrics. Resumed
            # from it, the run logs those metrics unless the store has them (once=True), and the
            # epochs after it. Resumed from the slot before (this write torn), it trains this epoch
            # again, to the same numbers, and logs nothing the store holds.
            try:
                if cfg.train.checkpoint:
                    run.log_state({**trainer.checkpoint(epoch), "train_time_s": spent, "metrics": metrics})
            except BaseException:  # a full artifact disk, Ctrl-C: the epoch's figures stay if they can
                with contextlib.suppress(Exception):
                    run.log_metrics(metrics, step=epoch, once=True)
                raise
            run.log_metrics(metrics, step=epoch, once=True)

        try:
            final = trainer.fit(data, cfg.train.epochs, start_epoch=start, on_epoch_end=on_epoch_end)
        except CannotOverfit as e:  # the failed check's figure goes on the record too
            run.log_metrics({"overfit_accuracy": e.accuracy}, step=cfg.train.epochs)
            raise
        last = int(final.get("stopped_epoch", cfg.train.epochs))  # the step MLflow links the model to
        if "best_epoch" in final:  # early stopping: the best epoch's figures are the run's final ones
            run.log_metrics(final, step=last)
        totals = {
            "params_total": counts["total"],
            "params_trainable": counts["trainable"],
            "mult_adds": mult_adds(trainer.module, fits.input_shape(cfg), device),  # per sample
            "train_time_s": round(spent, 3),
            **{k: final[k] for k in ("overfit_accuracy",) if k in final},
        }
        run.log_metrics(totals, step=last, once=True)
        # the model (runs:/<id>/model), confusion matrix and accuracy per class
        predicted = trainer.predict(data.x_test)
        records.log_outcome(run, cfg, trainer.module, data, predicted, last, logged)
    if sweep_dir() is not None:  # for a race, which reads them from the job's folder (sweeps/race.py)
        folder = Path(HydraConfig.get().runtime.output_dir)
        records.write_predictions(folder / records.PREDICTIONS, data.y_test, predicted, data.test_index)
    final.update(totals)
    log.info("%s: %s", run.name, ", ".join(f"{k}={v:.4g}" for k, v in final.items()))
    return final.get("val_accuracy", final["test_accuracy"])


TOGETHER_TAG = "archbench.together"  # on a run trained with others of its configuration: "k of K seeds"


def train_together(cfg: DictConfig, device: torch.device, same) -> dict:
    """The seeds of train.group (sweeps/together.py sets it), trained as one batched model
    (batched.py), each seed its own MLflow run with what train_tracked gives an alone run: params,
    config, summary, datasets, each epoch's metrics and checkpoint (an alone run resumes from it),
    totals, the model, confusion matrix and predictions. Returns each seed's run id, score and error,
    which the sweep's launcher hands out as the seeds' own job results."""
    from archbench import batched

    seeds = [int(s) for s in cfg.train.group]
    why = batched.why_not(cfg)
    if why:
        raise ConfigError(f"train.group={seeds}: these seeds cannot train together: {why}")
    members = [member_config(cfg, s) for s in seeds]
    models, rngs = [], []
    for member in members:  # each network as its run alone builds it, from its own seed
        torch.manual_seed(member.seed)
        models.append(fits.build(member, model_name(member)))
        rngs.append(torch.get_rng_state())
    set_threads(cfg, models[0], device)
    for member in members:  # logged as used, as an alone run logs it
        member.train.threads = cfg.train.threads
    runs.client(cfg.tracking.uri)
    source = instantiate(cfg.dataset)
    data = splits.for_job(source, Path(cfg.data_dir), device, cfg.train.val_fraction, cfg.seed)
    models = [place(m, data, cfg.train.channels_last) for m in models]
    try:
        stack = batched.Stack(models)
    except ValueError as e:  # what why_not cannot see in a config: a buffer or dropout in the network
        raise ConfigError(f"train.group={seeds}: {e}") from None
    optimizer = instantiate(cfg.optimizer)(stack.parameters())
    steps = epoch_batches(len(data.x_train), cfg.train.batch_size, None, None)
    generators = [torch.Generator(device).manual_seed(s) for s in seeds]
    trainer = Trainer(
        model=stack,
        optimizer=optimizer,
        criterion=instantiate(cfg.loss.criterion),
        batch_size=cfg.train.batch_size,
        generator=generators[0],
        amp=cfg.train.amp,
        progress=cfg.train.progress,
        bar=parallel_bar(),
        scheduler=scheduler(cfg.scheduler, optimizer, steps_per_epoch=steps),
        interval=cfg.scheduler.interval,
    )
    together = batched.TogetherTrainer(trainer, stack, generators)
    picked, shape = picked_choices(cfg), fits.input_shape(cfg)
    summary = model_summary(models[0], shape, cfg.train.batch_size, device)  # one shape: one summary
    counts, work = parameter_counts(models[0]), mult_adds(models[0], shape, device)
    opened, logged = [], []
    own_jobs = seed_jobs(job_overrides())  # each seed's overrides, as its own job's would be
    try:
        for k, member in enumerate(members):
            overrides = own_jobs[k]
            # its own seed's identity, from the settings as composed (before images.settle filled any)
            keys = same and ({**same[0], "seed": str(member.seed)}, same[1])
            tags = run_tags(member, picked, device, data, keys, overrides)
            tags[TOGETHER_TAG] = f"{k + 1} of {len(seeds)} seeds"
            run = runs.open_run(member, run_name(picked, member.seed), tags, sweep_dir())
            opened.append(run.__enter__())
            logged.append(runs.params(member, picked, device))
            run.log_config(member, logged[-1])
            run.log_text(summary, "model_summary.txt")
            if data.lineage:
                records.log_datasets(run, data.lineage)
        spent = [0.0] * len(seeds)

        def on_epoch_end(k: int, epoch: int, metrics: dict[str, float]) -> None:
            spent[k] += metrics["epoch_time_s"]
            metrics["epoch_time_s"] = round(metrics["epoch_time_s"], 3)
            run = opened[k]
            # the last run opened holds the signal handlers: a signal waits for these writes to end
            with opened[-1].atomic():
                try:
                    if cfg.train.checkpoint:
                        state = together.checkpoint(k, epoch, rngs[k])
                        run.log_state({**state, "train_time_s": spent[k], "metrics": metrics})
                except BaseException:  # as train_tracked: the epoch's figures stay if they can
                    with contextlib.suppress(Exception):
                        run.log_metrics(metrics, step=epoch, once=True)
                    raise
                run.log_metrics(metrics, step=epoch, once=True)

        finals = together.fit(data, cfg.train.epochs, on_epoch_end=on_epoch_end)
        predicted = together.predict(data.x_test)
        results = []
        for k, (member, run, final) in enumerate(zip(members, opened, finals, strict=True)):
            if k in together.failed:
                results.append({"seed": member.seed, "run_id": run.run_id, "error": together.failed[k]})
                continue
            totals = {
                "params_total": counts["total"],
                "params_trainable": counts["trainable"],
                "mult_adds": work,
                "train_time_s": round(spent[k], 3),
            }
            models[k].load_state_dict(stack.member(k))
            with opened[-1].atomic():  # the last run opened holds the signal handlers
                run.log_metrics(totals, step=cfg.train.epochs, once=True)
                records.log_outcome(run, member, models[k], data, predicted[k], cfg.train.epochs, logged[k])
            score = final.get("val_accuracy", final["test_accuracy"])
            results.append({"seed": member.seed, "run_id": run.run_id, "score": score})
            figures = {**final, **totals}
            log.info("%s: %s", run.name, ", ".join(f"{key}={v:.4g}" for key, v in figures.items()))
    except BaseException as e:
        for run in reversed(opened):  # the reverse of their opening: each hands back the signal handlers
            run.__exit__(type(e), e, e.__traceback__)
        raise
    for k, run in reversed(list(enumerate(opened))):
        error = together.failed.get(k)
        run.__exit__(type(error) if error else None, error, None)
    return {"together": results}


def member_config(cfg: DictConfig, seed: int) -> DictConfig:
    """A group's config as the job of one of its seeds has it: that seed, no group."""
    member = copy.deepcopy(cfg)
    with open_dict(member):
        member.seed = seed
        member.train.group = None
    return member


def picked_choices(cfg: DictConfig) -> dict[str, str]:
    """The groups' choices that name this run: a network that takes no activation is not named by one."""
    unused = fits.unused_groups(cfg.model)
    return {group: choice for group, choice in choices().items() if group not in unused}


def run_name(picked: dict[str, str], seed: int) -> str:
    return "-".join(picked[g] for g in ("model", "activation", "optimizer") if g in picked) + f"-s{seed}"


def run_tags(cfg: DictConfig, picked: dict, device, data, same, overrides: list[str]) -> dict[str, str]:
    """A new run's tags: its choices, where it ran, its overrides and configuration, its role in a
    tuned sweep, and `same` (identity.settings, code_version) as the keys reuse looks for."""
    tuned = tuning.keys(cfg)  # tune=lr: the key chosen per configuration is not what sets it apart
    return {
        **picked,
        "device": str(device),
        "torch_version": torch.__version__,
        "cuda_version": str(torch.version.cuda),
        "archbench.overrides": " ".join(overrides),
        "configuration": configuration(overrides, tuned if cfg.tune.role == "evaluation" else ()),
        **roles(cfg, tuned, overrides),
        **debug_tag(cfg),
        **({runs.SLURM_TAG: slurm.job_id()} if slurm.job_id() else {}),
        **(
            {
                identity.CONFIG_TAG: identity.config_key(same[0], data.source_digest),
                identity.CODE_TAG: same[1],
            }
            if same and data.source_digest
            else {}
        ),
    }


def roles(cfg: DictConfig, tuned: list[str], overrides: list[str]) -> dict[str, str]:
    """A tuned sweep's job: its stage, the scientific configuration it serves, and what was tuned."""
    role = cfg.tune.get("role")
    if not role:
        return {}
    # the study is named as the configuration it tunes: without the split the tuning held out
    study = configuration(overrides, [*tuned, *(("train.val_fraction",) if role == "tuning" else ())])
    found = {tuning.ROLE_TAG: role, tuning.STUDY_TAG: study}
    return found | ({tuning.TUNED_TAG: " ".join(tuned)} if role == "evaluation" else {})


def choices() -> dict[str, str]:
    """The option chosen in every config group, as Hydra recorded it."""
    picked = HydraConfig.get().runtime.choices
    return {group: str(picked.get(group)) for group in GROUPS}


def model_name(cfg: DictConfig) -> str:
    """The model as the command line chose it (`lenet`); a resumed run's, by its constructor's name."""
    return cfg.model._target_.rsplit(".", 1)[-1] if cfg.resume else choices()["model"]


def default_threads() -> tuple[int, str]:
    """The cores this process may use, shared among the jobs a parallel launcher runs at once, and
    how the job holds them (cpus.threads_for_job): "allocated" by a scheduler to this job alone
    (submitit's cpus_per_task), "queued" (a job of archbench's side-by-side sweep: one thread, and it
    waits for a core that no other archbench job holds), or "shared"."""
    hydra = HydraConfig.get() if HydraConfig.initialized() else None
    launcher = hydra.launcher if hydra else {}
    if launcher.get("cpus_per_task"):  # submitit: the CPUs the scheduler gave this job, within its
        # affinity (a local process-pool limit such as LOKY_MAX_CPU_COUNT is not the scheduler's)
        return max(1, min(len(os.sched_getaffinity(0)), launcher.cpus_per_task)), "allocated"
    cores = cpus.usable_cores()  # affinity (a Slurm allocation, taskset), a container's CPU quota
    if hydra is None or hydra.mode != RunMode.MULTIRUN:
        return cores, "shared"  # a single run: the launcher (joblib's, by default) runs no others
    # conf/hydra/launcher/parallel.yaml's own n_jobs (an interpolation), not one the user set
    if "n_jobs" in launcher and OmegaConf.is_interpolation(launcher, "n_jobs"):
        return 1, "queued"
    return max(1, cores // jobs_at_once(launcher)), "shared"  # the user's n_jobs, or the basic launcher


def jobs_at_once(launcher) -> int:
    """How many jobs a sweep's launcher runs at once: its n_jobs (joblib's -1: one per core), or 1
    (the basic launcher)."""
    jobs = launcher.get("n_jobs") or 1
    return cpus.usable_cores() if jobs < 0 else jobs


def parallel_bar() -> tuple[int, str] | None:
    """A job of a sweep whose launcher runs several at once: its own terminal line (its slot among
    them) and label (`#3`, as Hydra's launch lines number the jobs); None otherwise."""
    hydra = HydraConfig.get() if HydraConfig.initialized() else None
    if hydra is None or hydra.mode != RunMode.MULTIRUN:
        return None
    jobs = jobs_at_once(hydra.launcher)
    num = OmegaConf.select(hydra, "job.num", default=None)  # None: composed, not launched (the tests)
    return (num % jobs, f"#{num}") if jobs > 1 and num is not None else None


def job_overrides() -> list[str]:
    return runs.redact_overrides(OmegaConf.to_container(HydraConfig.get().overrides.task))


def sweep_dir() -> Path | None:
    """The multirun's folder, where the sweep callback left its parent run's id; None for a single run."""
    hydra = HydraConfig.get()
    return Path(hydra.sweep.dir) if hydra.mode == RunMode.MULTIRUN else None
