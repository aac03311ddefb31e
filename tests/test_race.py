"""seeds=auto: the race's rounds, budgets and failures with a scripted launcher, then the whole path
as users type it: `python run.py -m … seeds=auto`, its parent run, Ctrl-C, `make compare`."""

import json
import signal
import sqlite3
import subprocess
import sys

import numpy as np
import pytest
import torch
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from archbench.sweeps import race
from archbench.sweeps.race import Race
from conftest import ROOT, all_runs, patience, run_py, shrunk, store, wait_for


class ScriptedLauncher:
    """Returns each job's score from `scores(config, seed)` (None: the job fails), as Hydra's
    launchers return JobReturns; records the batches it was given."""

    def __init__(self, scores):
        self.scores, self.batches = scores, []

    def launch(self, batch, initial_job_idx):
        self.batches.append([list(o) for o in batch])
        results = []
        for overrides in batch:
            config = " ".join(o for o in overrides if not o.startswith("seed="))
            seed = int(next(o for o in overrides if o.startswith("seed=")).split("=")[1])
            score = self.scores(config, seed)
            result = JobReturn(overrides=list(overrides))
            if score is None:
                result.status, result.return_value = JobStatus.FAILED, RuntimeError("diverged")
            else:
                result.status, result.return_value = JobStatus.COMPLETED, score
            results.append(result)
        return results


def config(tmp_path, **race_settings):
    settings = {"first_seeds": 3, "max_seeds": 20, "max_runs": None, "max_minutes": None} | race_settings
    return OmegaConf.create(
        {"race": settings, "compare": {"margin": 0.005}, "hydra": {"sweep": {"dir": str(tmp_path)}}}
    )


def noisy(means: dict[str, float], sd=0.002):
    """Scores: a shared effect per seed plus each run's own noise, repeatable per (config, seed)."""

    def score(config, seed):
        if means[config] is None:
            return None
        shared = np.random.default_rng(seed).normal(0, 0.0015)
        own = np.random.default_rng([seed, sorted(means).index(config)]).normal(0, sd)
        return 0.87 + means[config] + shared + own

    return score


def test_rounds_drop_the_settled_and_keep_the_best(tmp_path):
    # a is best, b trails by 0.02 (settled early), c ties a (settled as equivalent, later)
    launcher = ScriptedLauncher(noisy({"x=a": 0.0, "x=b": -0.02, "x=c": 0.0}))
    returns = Race(config(tmp_path), launcher, [["x=a"], ["x=b"], ["x=c"]]).run()
    record = json.loads((tmp_path / race.RECORD).read_text())
    assert record["looks"] == [3, 5, 8, 13, 20] and record["stopped"] == "all resolved"
    rounds = record["rounds"]
    assert [r["seeds"] for r in rounds] == [3, 5, 8, 13, 20][: len(rounds)] and len(rounds) >= 2
    first = launcher.batches[0]
    assert sorted(" ".join(o) for o in first) == sorted(f"x={c} seed={s}" for c in "abc" for s in range(3))
    # b left after round 1 or 2; later rounds ran only the others, each seed once
    later = {o[0] for batch in launcher.batches[2:] for o in batch}
    assert "x=b" not in later
    seeds = [(o[0], o[1]) for batch in launcher.batches for o in batch]
    assert len(seeds) == len(set(seeds)) == len(returns) == rounds[-1]["runs"]
    in_race = [r["configurations"] for r in rounds]
    assert in_race[0] == 3 and in_race == sorted(in_race, reverse=True) and in_race[-1] < 3


def test_a_failing_configuration_leaves_the_race(tmp_path):
    launcher = ScriptedLauncher(noisy({"x=a": 0.0, "x=b": None, "x=c": 0.0}))
    Race(config(tmp_path), launcher, [["x=a"], ["x=b"], ["x=c"]]).run()
    assert {o[0] for o in launcher.batches[0]} == {"x=a", "x=b", "x=c"}
    assert all(o[0] != "x=b" for batch in launcher.batches[1:] for o in batch)


def test_budgets_stop_the_race_and_say_which(tmp_path):
    close = {"x=a": 0.0, "x=c": 0.003}  # too close to call, too noisy (sd 0.01) to be equivalent
    launcher = ScriptedLauncher(noisy(close, sd=0.01))
    Race(config(tmp_path, max_runs=12), launcher, [["x=a"], ["x=c"]]).run()
    record = json.loads((tmp_path / race.RECORD).read_text())
    assert sum(len(b) for b in launcher.batches) <= 12
    assert record["stopped"] == f"race.max_runs=12 reached after {record['rounds'][-1]['runs']} runs"
    launcher = ScriptedLauncher(noisy(close, sd=0.01))
    # the even split: Pocock's spends 71% of alpha at the first of two looks, and these draws settle there
    Race(config(tmp_path, max_seeds=5, spending="bonferroni"), launcher, [["x=a"], ["x=c"]]).run()
    record = json.loads((tmp_path / race.RECORD).read_text())
    assert record["stopped"] == "race.max_seeds=5 reached" and record["looks"] == [3, 5]


def test_a_gap_the_budget_would_likely_not_settle_stops_before_the_budget(tmp_path):
    near = {"x=a": 0.0, "x=c": 0.004}  # near the margin: at this noise, 20 seeds settle neither way
    launcher = ScriptedLauncher(noisy(near, sd=0.008))
    Race(config(tmp_path, futility=0.0), launcher, [["x=a"], ["x=c"]]).run()
    record = json.loads((tmp_path / race.RECORD).read_text())
    assert record["stopped"] == "race.max_seeds=20 reached" and record["futility"] == 0.0
    launcher = ScriptedLauncher(noisy(near, sd=0.008))
    Race(config(tmp_path, futility=0.1), launcher, [["x=a"], ["x=c"]]).run()
    record = json.loads((tmp_path / race.RECORD).read_text())
    seeds = record["rounds"][-1]["seeds"]
    assert 8 <= seeds < 20, record  # not before 8 seeds (FUTILITY_FROM), and before the budget
    assert record["stopped"] == "all resolved but 1, which more seeds would likely not settle"


class PredictingLauncher(ScriptedLauncher):
    """Also leaves each job's per-example test predictions in its folder, as app.py does: 200 test
    examples, each right with chance 0.87 independently per run, so the test sample alone is far
    noisier than a 0.005 margin allows."""

    def launch(self, batch, initial_job_idx):
        from archbench.tracking.predictions import PREDICTIONS, write_predictions

        results = super().launch(batch, initial_job_idx)
        for n, result in enumerate(results):
            folder = self.folder / str(initial_job_idx + n)
            folder.mkdir(parents=True, exist_ok=True)
            right = np.random.default_rng(initial_job_idx + n).random(200) < 0.87
            labels = torch.zeros(200, dtype=torch.long)
            write_predictions(folder / PREDICTIONS, labels, torch.tensor(~right, dtype=torch.long))
            result.hydra_cfg = OmegaConf.create({"hydra": {"runtime": {"output_dir": str(folder)}}})
        return results


@pytest.mark.parametrize("asked", [True, False])
def test_a_margin_asked_for_below_the_floor_is_one_line(tmp_path, caplog, asked):
    launcher = PredictingLauncher(noisy({"x=a": 0.0, "x=b": 0.0}))
    launcher.folder = tmp_path / "jobs"
    cfg = config(tmp_path)
    cfg.hydra.overrides = {"task": ["x=a,b", *(["compare.margin=0.005"] if asked else [])]}
    with caplog.at_level("WARNING", logger="archbench.sweeps.race"):
        Race(cfg, launcher, [["x=a"], ["x=b"]]).run()
    said = [r.getMessage() for r in caplog.records if "floor" in r.getMessage()]
    if not asked:  # the default margin: the verdict (open: this test set cannot settle it) says it
        assert said == []
        return
    (line,) = said
    assert line.startswith("compare.margin=0.005 is below this test set's floor: its own noise alone is ±0.")
    assert "\n" not in line and "dataset.resample=true" in line
    record = json.loads((tmp_path / race.RECORD).read_text())
    assert len(record["rounds"]) < 5, "stopped at its floor, before the seed budget"


def test_the_wall_clock_budget(tmp_path, monkeypatch):
    clock = iter(range(0, 10_000, 120))  # each look at the clock: two minutes later (start, 2, 4 min)
    monkeypatch.setattr(race.time, "monotonic", lambda: next(clock))
    launcher = ScriptedLauncher(noisy({"x=a": 0.0, "x=c": 0.003}, sd=0.01))
    Race(config(tmp_path, max_minutes=3), launcher, [["x=a"], ["x=c"]]).run()
    record = json.loads((tmp_path / race.RECORD).read_text())
    assert record["stopped"] == "race.max_minutes=3 reached after 4.0 min" and len(launcher.batches) == 1


@pytest.mark.slow
def test_a_race_as_users_type_it(tmp_path):
    done = run_py(tmp_path, "-m", "activation=relu,tanh,sigmoid", "seeds=auto")
    assert done.returncode == 0, done.stderr[-3000:]
    runs = all_runs(tmp_path)
    (parent,) = [r for r in runs if r.data.tags.get("archbench.sweep") == "parent"]
    jobs = [r for r in runs if r is not parent]
    assert parent.info.status == "FINISHED" and parent.data.tags["race.stopped"] == "all resolved"
    assert (
        parent.data.params["race.looks"] == "3 5 8 13 20" and parent.data.params["compare.margin"] == "0.005"
    )
    client = store(tmp_path)
    rounds = client.get_metric_history(parent.info.run_id, "race_configurations")
    assert [m.step for m in rounds] == list(range(1, len(rounds) + 1))
    seeds = {r.data.params["seed"] for r in jobs}
    assert seeds >= {"0", "1", "2"} and all(r.info.status == "FINISHED" for r in jobs)
    files = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"comparison.md", "comparison.csv", "pareto.png", race.RECORD} <= files
    assert "Race: " in parent.data.tags["mlflow.note.content"] and "| front |" in done.stdout
    # make compare reads the race back from its parent: the same verdicts
    shown = subprocess.run(
        ["make", "compare", f"ARGS=--out {tmp_path}/cmp", f"TRACKING_URI=sqlite:///{tmp_path}/mlruns/mlflow.db"],
        cwd=ROOT, capture_output=True, text=True, timeout=patience(300),
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    table = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert all(line in shown.stdout for line in table)


@pytest.mark.slow  # several run.py processes: ~13 s
def test_bad_race_settings_are_one_line_before_anything_runs(tmp_path):
    for args, expected in (
        (["-m", "activation=relu,tanh", "seeds=auto", "seed=1,2"], "seeds=auto picks the seeds itself"),
        (["-m", "activation=relu,tanh", "seeds=auto", "race.max_seeds=1"], "race.max_seeds must be"),
        (["-m", "activation=relu,tanh", "compare.margin=0"], "compare.margin must be a number > 0"),
        (
            ["-m", "activation=relu,tanh", "seeds=auto", "race.futility=1"],
            "race.futility must be a number >= 0 and < 1, got 1",
        ),
        (["seeds=auto"], "seeds=auto repeats the configurations of a sweep: add -m"),
    ):
        done = run_py(tmp_path, *args)
        assert done.returncode == 1, (args, done.stderr[-2000:])
        line = done.stderr.strip().splitlines()[-1]
        assert line.startswith("error: ") and expected in line, (args, done.stderr[-2000:])
        assert not (tmp_path / "mlruns").exists() or not all_runs(tmp_path), args


@pytest.mark.slow
def test_sigterm_leaves_a_parent_that_says_so(tmp_path):
    # slow jobs (several epochs on more data): SIGTERM arrives during the first round
    args = shrunk(tmp_path, ["-m", "activation=relu,tanh", "seeds=auto", "train.epochs=50"])
    args += ["dataset.train_size=20000"]
    process = subprocess.Popen(
        [sys.executable, "run.py", *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    # the first job's first two epochs: the race is under way, its first round 48 epochs from its end
    wait_for(lambda: epochs_logged(tmp_path) >= 2, "two epochs in the store", 120, process)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=patience(120))
    assert process.returncode == 143, err[-2000:]
    runs = all_runs(tmp_path)
    (parent,) = [r for r in runs if r.data.tags.get("archbench.sweep") == "parent"]
    assert (
        parent.info.status == "KILLED"
        and parent.data.tags["race.stopped"] == "interrupted (stopped by SIGTERM)"
    )
    assert "KILLED" in parent.data.tags["mlflow.note.content"]  # the comparison as it stood
    assert all(r.info.status in ("FINISHED", "KILLED") for r in runs)


def epochs_logged(tmp_path) -> int:
    """train_loss values in the store, read with sqlite3, read-only: an MLflow client here could race
    the sweep's own creation of the store."""
    try:
        with sqlite3.connect(f"file:{tmp_path}/mlruns/mlflow.db?mode=ro", uri=True) as conn:
            return conn.execute("SELECT COUNT(*) FROM metrics WHERE key = 'train_loss'").fetchone()[0]
    except sqlite3.OperationalError:  # no database or no table yet
        return 0
