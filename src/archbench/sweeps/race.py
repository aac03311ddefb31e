"""`seeds=auto`: a race that adds seeds until the comparison is answered (the sweeper's work).

Each round gives every configuration still in the race the seeds up to the plan's next look
(3, 5, 8, 13, 20 by default), launched as one batch through whatever launcher is configured, and
reads each job's returned score. After each round, verdicts.compare() judges the race so far;
configurations settled (worse, or equivalent to the best within compare.margin) get no more seeds,
the best always stays in, and a configuration whose job failed leaves the race. This is F-Race's
and successive halving's idea (spend the budget on contenders), with the looks planned before the
first round so that their error budget is fixed (verdicts.Plan).

The race ends when every configuration is settled, or at a budget: race.max_seeds (the last look),
race.max_runs, race.max_minutes (checked between rounds). Its record, race.json in the sweep
folder, is rewritten after every round; the sweep callback puts it on the parent run.
"""

import json
import logging
import math
import os
import time
from pathlib import Path

import numpy as np
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig, OmegaConf

from archbench.comparing.verdicts import FAILED, FLOOR, FUTILE, OPEN, Plan, compare

log = logging.getLogger(__name__)

RECORD = "race.json"  # in the sweep folder


def plan_of(config: DictConfig) -> Plan:
    """The race's plan from the config: race.first_seeds growing to race.max_seeds, compare.margin,
    race.spending, race.futility."""
    race = config.race
    spending, futility = race.get("spending", Plan.spending), race.get("futility", Plan.futility)
    return Plan.race(
        race.first_seeds, race.max_seeds, margin=config.compare.margin, spending=spending, futility=futility
    )


class Race:
    """Runs the rounds; `configurations` are the sweep's override lists, without the seed."""

    def __init__(self, config: DictConfig, launcher, configurations: list[list[str]]):
        self.config, self.launcher, self.configurations = config, launcher, configurations
        self.plan = plan_of(config)
        self.folder = Path(config.hydra.sweep.dir)
        self.values = np.full((1, len(configurations), self.plan.looks[-1]), np.nan)  # score per seed
        self.ran = np.zeros(self.values.shape[1:], bool)  # configuration x seed: launched, finished or not
        self.correct: dict[tuple[int, int], np.ndarray] = {}  # (configuration, seed): per test example
        self.returns: list[JobReturn] = []
        self.rounds: list[dict] = []
        self.stopped = ""
        self.warned = False  # about a margin asked for below the test set's floor: once a race

    def run(self) -> list[JobReturn]:
        started = time.monotonic()
        budget = self.config.race
        try:
            outcome = None
            for look, seeds in enumerate(self.plan.looks):
                playing = self._playing(outcome)
                batch = [(c, s) for c in playing for s in range(int(self.ran[c].sum()), seeds)]
                if budget.max_runs is not None and len(self.returns) + len(batch) > budget.max_runs:
                    self.stopped = f"race.max_runs={budget.max_runs} reached after {len(self.returns)} runs"
                    break
                minutes = (time.monotonic() - started) / 60
                if budget.max_minutes is not None and minutes >= budget.max_minutes:
                    self.stopped = f"race.max_minutes={budget.max_minutes} reached after {minutes:.1f} min"
                    break
                log.info("race round %d: %d configurations to %d seeds", look + 1, len(playing), seeds)
                self._launch(batch)
                outcome = compare(self.values[:, :, :seeds], self.plan, looks=look + 1, test=self._test())
                self._below_floor(outcome)
                self.rounds.append(  # configurations: those still in the race, which this round ran
                    {
                        "round": look + 1,
                        "seeds": seeds,
                        "configurations": len(playing),
                        "runs": len(self.returns),
                    }
                )
                self._save()
                if outcome.done[0] or not (outcome.state[0] != FAILED).any():
                    out_of_reach = int(np.isin(outcome.state[0], (FLOOR, FUTILE)).sum())
                    self.stopped = (
                        "all resolved"
                        if not out_of_reach
                        else (f"all resolved but {out_of_reach}, which more seeds would likely not settle")
                    )
                    break
            else:
                self.stopped = f"race.max_seeds={self.plan.looks[-1]} reached"
        except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: the record says so, the callback does the rest
            self.stopped = f"interrupted ({e or 'Ctrl-C'})"
            raise
        except Exception as e:  # the launcher itself failed (a refused submission, say)
            self.stopped = f"stopped by an error: {type(e).__name__}: {e}"[:500]
            raise
        finally:
            self._save()
        log.info("race stopped: %s", self.stopped)
        return self.returns

    def _below_floor(self, outcome) -> None:
        """One line, at the first look that shows it, where compare.margin was asked for on the command
        line and the test sample's own noise alone puts it out of reach for a configuration: the
        race cannot know that before the first round's predictions, and stops those at their floor."""
        floors = outcome.floor[0]
        if self.warned or not np.isfinite(floors).any() or np.nanmax(floors) <= self.plan.margin:
            return
        task = OmegaConf.select(self.config, "hydra.overrides.task", default=None) or []
        if not any(o.split("=", 1)[0].lstrip("+~") == "compare.margin" for o in task):
            return  # the default margin: the verdicts say it, without a warning
        self.warned = True
        worst = int(np.nanargmax(floors))
        log.warning(
            "compare.margin=%g is below this test set's floor: its own noise alone is ±%.4f for %s; "
            "ask for more, or dataset.resample=true, or a larger test set",
            self.plan.margin, floors[worst], " ".join(self.configurations[worst]) or "(defaults)",
        )  # fmt: skip

    def _playing(self, outcome) -> list[int]:
        if outcome is None:
            return list(range(len(self.configurations)))
        return [c for c in range(len(self.configurations)) if outcome.state[0, c] == OPEN]

    def _launch(self, batch: list[tuple[int, int]]) -> None:
        overrides = [[*self.configurations[c], f"seed={s}"] for c, s in batch]
        results = self.launcher.launch(overrides, initial_job_idx=len(self.returns))
        for (c, s), result in zip(batch, results, strict=True):
            self.ran[c, s] = True
            if result.status == JobStatus.COMPLETED and _score(result) is not None:
                self.values[0, c, s] = _score(result)
                found = _predictions(result, self.config)
                if found is not None:
                    self.correct[(c, s)] = found
        self.returns += results

    def _test(self):
        """The test sample's part of each pair's variance, from the jobs' predictions (stats.test_parts)."""
        import pandas as pd

        from archbench.comparing.stats import test_parts

        table = pd.DataFrame(self.values[0])
        return test_parts(table, self.correct)

    def _save(self) -> None:
        """race.json, replaced atomically: what the callback logs, even after a kill."""
        record = {
            "looks": list(self.plan.looks),
            "margin": self.plan.margin,
            "alpha": self.plan.alpha,
            "spending": self.plan.spending,
            "futility": self.plan.futility,
            "rounds": self.rounds,
            "stopped": self.stopped,
        }
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f"{RECORD}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(record, indent=1))
        os.replace(tmp, self.folder / RECORD)


def _predictions(result: JobReturn, config: DictConfig) -> np.ndarray | None:
    """A finished job's per-example test predictions, which it left in its own Hydra folder (app.py);
    a reused run's, from the store."""
    from archbench.sweeps import reuse
    from archbench.tracking.predictions import PREDICTIONS, read_predictions

    if isinstance(result, reuse.Reused):
        return reuse.predictions(config, result.run_id)
    try:
        path = Path(result.hydra_cfg.hydra.runtime.output_dir) / PREDICTIONS
    except Exception:  # a launcher that returns no Hydra config
        return None
    return read_predictions(path) if path.is_file() else None


def _score(result: JobReturn) -> float | None:
    value = result.return_value
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def configurations(params: list[str], arguments: list[str], parser: OverridesParser) -> list[list[str]]:
    """The cartesian product of the sweep's overrides, as Hydra's basic sweeper makes it, without the
    seed (the race picks the seeds)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    keep = [o for o in [*params, *arguments] if o.split("=", 1)[0].lstrip("+~") != "seed"]
    (batch,) = BasicSweeper.split_arguments(parser.parse_overrides(keep), None)
    return batch
