"""Fair comparisons: each configuration of a sweep at its own tuned nuisance hyperparameters (`tune=lr`).

Google's Deep Learning Tuning Playbook's rule: the scientific hyperparameter (the swept axis: the
activation, the model) is compared with its nuisance hyperparameters (the learning rate above all)
tuned separately for each of its values, at an equal budget. So a tuned sweep has two stages:

1. **Tuning.** Each configuration gets a study of its own: the same K settings (a log-spaced grid
   per nuisance key, which may depend on a group's choice: SGD's lr is not Adam's) x T tuning seeds,
   trained on the training set minus a validation split and scored on it, never on the test set.
   The chosen setting is the one with the best mean validation score; a setting with a diverged
   (failed) trial is out. A best value at the grid's edge extends that key's grid one step that way,
   up to `tune.extend` times a configuration, each extension recorded and counted in its budget.
2. **Evaluation.** The chosen values are frozen and the comparison runs as without tuning (fixed
   seeds or a race, on the test set), on seeds disjoint from the tuning seeds: reused, they would
   carry the winner's curse (a setting chosen partly for its seeds' luck) into the verdicts.

Both stages go through the sweep's launcher, reuse included. `Study` is the sweeper's stage, as
hydra-optuna-sweeper's is: it builds batches, launches them and reads the scores they return; the
rest here is plain functions that the simulations (tests/test_tuning.py) call too.
"""

import itertools
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from hydra.core.utils import JobStatus
from omegaconf import DictConfig

from archbench.config import ConfigError, configuration, keys, specs

log = logging.getLogger(__name__)

RECORD = "tuning.json"  # in the sweep folder; the sweep callback puts it on the parent run
ROLE_TAG, STUDY_TAG, TUNED_TAG = "archbench.role", "archbench.study", "archbench.tuned"


@dataclass
class Axis:
    """A tuned key's log-spaced values: `start` x `step`**i for i in [low, high), integers if asked."""

    start: float
    step: float
    integer: bool
    low: int
    high: int

    @classmethod
    def of(cls, key: str, spec: DictConfig, choices: dict[str, str], settings: int) -> "Axis":
        """From its `from` (a number, or one per choice of the group named by `by`) and `step`."""
        start = spec["from"]
        if spec.get("by"):
            if choices.get(spec.by) not in start:
                raise ConfigError(
                    f"tune.params.{key}.from has no value for {spec.by}={choices.get(spec.by)}: add one"
                )
            start = start[choices[spec.by]]
        return cls(float(start), float(spec.step), bool(spec.get("integer", False)), 0, settings)

    def values(self) -> list[float]:
        return [_value(self.start * self.step**i, self.integer) for i in range(self.low, self.high)]


def _value(x: float, integer: bool) -> float:
    return int(round(x)) if integer else float(f"{x:.4g}")


def choose(scores: np.ndarray) -> int:
    """The setting with the best mean score over its seeds: `scores` is (settings, seeds), NaN for a
    failed (diverged) trial, which rules its setting out. -1 if every setting failed."""
    means = np.where(np.isnan(scores).any(axis=1), -np.inf, np.nan_to_num(scores).mean(axis=1))
    return int(np.argmax(means)) if np.isfinite(means).any() else -1


def overrides(setting: dict[str, float]) -> list[str]:
    return [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in setting.items()]


@dataclass
class Plan:
    """One configuration's study: its grid per key, the settings tried, their scores per seed."""

    configuration: list[str]
    axes: dict[str, Axis]
    extended: list[str] = field(default_factory=list)  # "optimizer.lr up to 10" per extension
    scores: dict[tuple, list[float]] = field(default_factory=dict)  # setting (values) -> per tuning seed

    @property
    def grids(self) -> dict[str, list[float]]:
        return {key: axis.values() for key, axis in self.axes.items()}

    def settings(self) -> list[tuple]:
        return list(itertools.product(*self.grids.values()))

    @property
    def failed(self) -> int:
        """Trials that failed (diverged): their scores are NaN."""
        return sum(math.isnan(v) for scores in self.scores.values() for v in scores)

    def untried(self) -> list[tuple]:
        return [s for s in self.settings() if s not in self.scores]

    def best(self) -> tuple | None:
        tried = self.settings()
        index = choose(np.array([self.scores[s] for s in tried], float))
        return tried[index] if index >= 0 else None

    def extend(self, limit: int) -> bool:
        """Where the best value of a key lies at its grid's edge, one more value past it; whether any."""
        best = self.best()
        if best is None or len(self.extended) >= limit:
            return False
        for (key, axis), value in zip(self.axes.items(), best, strict=True):
            values = axis.values()
            if len(values) < 2 or value not in (values[0], values[-1]):
                continue
            low = value == values[0]
            if low and axis.integer and _value(axis.start * axis.step ** (axis.low - 1), True) < 1:
                continue  # (a batch size cannot go below 1)
            axis.low, axis.high = (axis.low - 1, axis.high) if low else (axis.low, axis.high + 1)
            new = axis.values()[0 if low else -1]
            self.extended.append(f"{key} {'down' if low else 'up'} to {new:g}")
            return True
        return False


class Study:
    """The tuning stage of a sweep: a study per configuration, launched in batches; returns the
    configurations with their chosen values and the evaluation role."""

    def __init__(self, config: DictConfig, launcher, configurations: list[list[str]], choices: list[dict]):
        self.config, self.launcher, self.tune = config, launcher, config.tune
        self.seeds = list(self.tune.seeds)
        settings = self.tune.settings
        self.plans = [
            Plan(c, {k: Axis.of(k, spec, picked, settings) for k, spec in specs(config).items()})
            for c, picked in zip(configurations, choices, strict=True)
        ]
        self.trials = 0
        self.folder = Path(config.hydra.sweep.dir)

    def run(self, first_job: int = 0) -> list[list[str]]:
        started = time.monotonic()
        pending = [(i, s) for i, plan in enumerate(self.plans) for s in plan.untried()]
        while pending:
            log.info("tuning: %d settings x %d seeds", len(pending), len(self.seeds))
            self._launch(pending, first_job + self.trials)
            pending = []
            for i, plan in enumerate(self.plans):
                if plan.extend(self.tune.extend):
                    pending += [(i, s) for s in plan.untried()]
        self.wall_s = time.monotonic() - started
        self._save()
        chosen = []
        for plan in self.plans:
            best = plan.best()
            if best is None:
                raise ConfigError(
                    f"tuning {configuration(plan.configuration)}: every setting failed (diverged); "
                    f"change tune's grid ({', '.join(plan.grids)})"
                )
            chosen.append([*plan.configuration, *overrides(dict(zip(plan.grids, best, strict=True))),
                           "++tune.role=evaluation"])  # fmt: skip
        return chosen

    def _launch(self, pending: list[tuple[int, tuple]], first_job: int) -> None:
        jobs = [(i, s, seed) for seed in self.seeds for i, s in pending]  # seeds outer, as a sweep's
        batch = [
            [*self.plans[i].configuration, *overrides(dict(zip(self.plans[i].grids, s, strict=True))),
             f"seed={seed}", f"train.val_fraction={self.tune.val_fraction}", "++tune.role=tuning"]
            for i, s, seed in jobs
        ]  # fmt: skip
        returns = self.launcher.launch(batch, initial_job_idx=first_job)
        self.trials += len(batch)
        for (i, s, seed), result in zip(jobs, returns, strict=True):
            score = result._return_value if result.status == JobStatus.COMPLETED else None
            finite = isinstance(score, int | float) and math.isfinite(score)
            scores = self.plans[i].scores.setdefault(s, [math.nan] * len(self.seeds))
            scores[self.seeds.index(seed)] = float(score) if finite else math.nan

    def _save(self) -> None:
        """tuning.json: per configuration, the grid, every setting's scores, the choice, extensions."""
        record = {
            "keys": keys(self.config),
            "settings": self.tune.settings,
            "seeds": self.seeds,
            "val_fraction": self.tune.val_fraction,
            "trials": self.trials,
            "wall_s": round(self.wall_s, 1),
            "studies": [
                {
                    "configuration": configuration(plan.configuration),  # as the comparison names it
                    "grids": plan.grids,
                    "tried": [{"setting": list(s), "scores": v} for s, v in plan.scores.items()],
                    "chosen": dict(zip(plan.grids, plan.best() or (), strict=False)),
                    "extended": plan.extended,
                    "failed": plan.failed,
                }
                for plan in self.plans
            ],
        }
        path = self.folder / RECORD
        path.parent.mkdir(parents=True, exist_ok=True)
        path.with_suffix(".tmp").write_text(json.dumps(record, indent=1))
        path.with_suffix(".tmp").replace(path)
