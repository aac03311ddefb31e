"""A sweep's seeds of one configuration launched as one job that trains them together (batched.py),
where `train.together` chooses it; each seed's result handed back as its own job's.

The launcher (reuse.py) plans each batch it launches: the jobs that differ only in their seed= and
are to train (not resume) form a group, launched as one job with `++train.group=[seeds]` (app.py
trains it), whose result lists each seed's run id, score or error. Each seed then gets a JobReturn of
its own, as if it had run alone: the sweep, a race and a tuning study count it as they count any job.

train.together=auto groups only where a sweep measured faster so (`FASTER`); true groups
wherever batched.why_not allows, and refuses before any job where it does not; false never groups.
"""

from dataclasses import dataclass

from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig, OmegaConf

from archbench.config import GROUP_KEY, SEED_OVERRIDE, ConfigError, pick_device
from archbench.sweeps.reuse import Reused

GROUP_MAX = 20  # seeds in one job at most: the race's max_seeds; more would hold one worker longest


@dataclass
class TrainedTogether(Reused):
    """A seed trained in its configuration's group job: its own run holds its result (run_id)."""


# (network kind, device type) where a sweep measured faster with its seeds together, which
# train.together=auto then chooses. None yet (docs/speed.md, "Seeds together"): on a 2-core Xeon the
# mlp's epoch trained 1.18x-1.26x faster per seed together (benchmarks/batched_seeds.py), but the
# 5-epoch activations preset took 46.2 s together against 47.1 s alone, and 48.6 s in groups of 3;
# cnn1 trained slower together. CUDA is not measured: no GPU was lent. train.together=true asks for it.
FASTER: set[tuple[str, str]] = set()


def pays(cfg: DictConfig) -> bool:
    """Whether this configuration's network kind (MLP, CNN) on its device is in FASTER."""
    kind = str(cfg.model.get("_target_", "")).rsplit(".", 1)[-1]
    # the device the jobs will train on, which the launcher's machine (a Slurm login node) may lack
    device = str(cfg.device).split(":")[0]
    return (kind, pick_device("auto").type if device == "auto" else device) in FASTER


def chosen(cfg: DictConfig) -> bool:
    """Whether the seeds of `cfg`'s configuration train together; train.together=true on a config
    that cannot is a one-line error."""
    mode = cfg.train.get("together", "auto")
    # a tuning study's trials draw a validation split per seed: they train alone, whatever mode says
    if mode is False or (mode == "auto" and not FASTER) or OmegaConf.select(cfg, "tune.role") == "tuning":
        return False
    from archbench import batched  # torch: the sweep's parent imports it only where seeds may group

    why = batched.why_not(cfg)
    if mode is True and why:
        raise ConfigError(f"train.together=true: these seeds cannot train together: {why}; use auto or false")
    return why is None and (mode is True or pays(cfg))


def plan(job_overrides: list[list[str]], compose) -> list[tuple[list[str], list[int]]]:
    """The jobs to launch, each with the indices of the `job_overrides` it stands for; `compose`
    gives a job's config from its overrides."""
    singles, groups = [], {}
    for i, overrides in enumerate(job_overrides):
        seeds = [int(m.group(1)) for o in overrides if (m := SEED_OVERRIDE.fullmatch(o))]
        if len(seeds) != 1 or any(o.startswith(("resume=", GROUP_KEY)) for o in overrides):
            singles.append(([*overrides], [i]))
            continue
        rest = tuple(o for o in overrides if not SEED_OVERRIDE.fullmatch(o))
        groups.setdefault(rest, []).append((seeds[0], i))
    jobs = singles
    for rest, members in groups.items():
        if len(members) < 2 or not chosen(compose([*rest, f"seed={members[0][0]}"])):
            jobs += [(job_overrides[i], [i]) for _, i in members]
            continue
        for at in range(0, len(members), GROUP_MAX):
            part = members[at : at + GROUP_MAX]
            if len(part) == 1:  # the rest of a split group: alone
                jobs.append((job_overrides[part[0][1]], [part[0][1]]))
                continue
            seeds = ",".join(str(s) for s, _ in part)
            # the first seed's own job, seed= where the sweeper put it, plus the group
            jobs.append(([*job_overrides[part[0][1]], f"{GROUP_KEY}=[{seeds}]"], [i for _, i in part]))
    return sorted(jobs, key=lambda job: job[1][0])  # in the order the sweeper asked for them


def expand(job_overrides: list[list[str]], planned, results: list[JobReturn]) -> list[JobReturn]:
    """Each of `job_overrides`' own JobReturn, from the results of the `planned` jobs."""
    out: list[JobReturn | None] = [None] * len(job_overrides)
    for (overrides, members), result in zip(planned, results, strict=True):
        if not any(o.startswith(GROUP_KEY) for o in overrides):
            out[members[0]] = result
            continue
        value = result._return_value  # (the public getter raises a failed job's error)
        done = result.status == JobStatus.COMPLETED and isinstance(value, dict) and "together" in value
        seeds = {r["seed"]: r for r in value["together"]} if done else {}
        if result.status == JobStatus.COMPLETED and not done:
            value = RuntimeError(f"the job of seeds together gave no result per seed: {value!r}")
        for i in members:
            mine = job_overrides[i]
            seed = next(int(m.group(1)) for o in mine if (m := SEED_OVERRIDE.fullmatch(o)))
            found = seeds.get(seed)
            if found is None or "error" in found:  # the whole job failed, or this seed diverged
                error = value if found is None else found["error"]
                out[i] = JobReturn(overrides=mine, status=JobStatus.FAILED, _return_value=error)
            else:
                out[i] = TrainedTogether(
                    overrides=mine,
                    status=JobStatus.COMPLETED,
                    _return_value=found["score"],
                    run_id=found["run_id"],
                )
    return out
