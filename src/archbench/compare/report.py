"""Comparisons per configuration, read back from MLflow: table, CSV, charts.

python -m archbench.compare.report                      # the latest sweep
python -m archbench.compare.report --parent RUN_ID      # one sweep, by its parent run
python -m archbench.compare.report --experiment NAME    # every job run of an experiment, across sweeps
"""

import argparse
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from archbench.compare import charts, stats, study_charts, table, tuned
from archbench.compare.verdicts import MARGIN, Plan
from archbench.config import configuration
from archbench.tracking import store, views
from archbench.tuning import RECORD as TUNING_RECORD
from archbench.tuning import ROLE_TAG

DEFAULT_URI = "sqlite:///mlruns/mlflow.db"  # as conf/config.yaml's tracking.uri
METRICS = ("test_accuracy", "val_accuracy", "train_time_s", "params_total")
COLUMNS = [
    "run_id",
    "run",
    "status",
    "configuration",
    "seed",
    *METRICS,
    "dataset",
    "epochs",
    "debug",
    "error",
    "start_time",
    "resampled",
    "role",  # a tuned sweep's (tune=lr): tuning or evaluation; "" otherwise
    "lr",  # optimizer.lr as the run trained with it
]


def _row(run) -> dict:
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    overrides = tags.get("archbench.overrides", "").split()
    return {
        "run_id": run.info.run_id,
        "run": run.info.run_name,
        "status": run.info.status,
        "configuration": tags.get("configuration") or configuration(overrides),  # runs older than the tag
        "seed": int(params.get("seed", 0)),
        **{k: metrics.get(k) for k in METRICS},
        "dataset": tags.get("dataset", ""),
        "epochs": params.get("train.epochs", ""),
        "debug": tags.get("archbench.debug", ""),
        "error": tags.get("archbench.error", ""),
        "start_time": run.info.start_time,
        "resampled": params.get("dataset.resample") == "True",  # its own partition per seed
        "role": tags.get(ROLE_TAG, ""),
        "lr": params.get("optimizer.lr", ""),
    }


def _counted_as(run, tag: str) -> dict:
    """The configuration a sweep counts a run as, where it says (one it reused: it may have been
    started by a command written another way)."""
    return {"configuration": run.data.tags[tag]} if tag in run.data.tags else {}


def _failed_row(failure: dict) -> dict:
    """A job that failed before it had a run (a config error, say)."""
    seed = next((o.split("=", 1)[1] for o in failure["overrides"] if o.startswith("seed=")), "0")
    row = dict.fromkeys(COLUMNS, None) | {"run": "(no run)", "status": "FAILED", "error": failure["error"]}
    picked = failure.get("choices", {})
    row |= {"configuration": configuration(failure["overrides"]), "seed": int(seed), "run_id": ""}
    return row | {"dataset": picked.get("dataset", ""), "epochs": "", "debug": "", "start_time": 0,
                  "resampled": False, "role": "", "lr": ""}  # fmt: skip


def _frame(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=COLUMNS)
    return frame.astype({k: float for k in METRICS})


def _search(mlflow_client, experiment_ids: list[str], where: str) -> list:
    return list(mlflow_client.search_runs(experiment_ids, where, max_results=50_000))


def sweep_runs(mlflow_client, parent_id: str, failures: list[dict] = ()) -> pd.DataFrame:
    """A row per run the sweep used: its children, and the runs of earlier sweeps that it reused or
    resumed (tracking/reuse.py), each as the configuration this sweep counts it as; plus a row per
    failed job that left no run."""
    from archbench.tracking.runs import USED_BY, used_by_filter

    experiment = mlflow_client.get_run(parent_id).info.experiment_id
    runs = _search(mlflow_client, [experiment], used_by_filter(mlflow_client, experiment, parent_id))
    recorded = {r.data.tags.get("archbench.overrides", "") for r in runs}
    rows = [_row(r) | _counted_as(r, USED_BY + parent_id) for r in runs]
    rows += [_failed_row(f) for f in failures if " ".join(f["overrides"]) not in recorded]
    return _frame(rows)


def experiment_runs(mlflow_client, experiment_id: str) -> pd.DataFrame:
    """Every job run of an experiment; a seed a configuration ran more than once (a sweep run again)
    counts once, as the mean of its finished runs (stats.per_seed)."""
    runs = _search(mlflow_client, [experiment_id], "")
    jobs = [r for r in runs if r.data.tags.get("archbench.sweep") != "parent"]
    return _frame([_row(r) for r in jobs if r.data.tags.get(ROLE_TAG) != "tuning"])


@dataclass
class Comparison:
    runs: pd.DataFrame  # a row per run
    metric: str  # val_accuracy where every finished run held out a validation split, else test_accuracy
    summary: pd.DataFrame  # a row per configuration, best first (stats.summarize)
    labels: dict[str, str]  # configuration -> what sets it apart from the others
    title: str
    plan: Plan  # the looks taken at the data and the error budget (one look, unless a race)
    race: dict | None = None  # a race's record (compare.race.RECORD): its looks, rounds, why it stopped
    note: str = ""
    roles: str = ""  # what was tuned per configuration, or held fixed for all (tuning.roles)
    chosen: dict[str, str] | None = None  # a tuned sweep's: configuration -> its chosen values
    tuning: dict | None = None  # a tuned sweep's record (tuning.RECORD), for its charts

    @classmethod
    def of(
        cls, runs: pd.DataFrame, where: str, note="", margin=MARGIN, race=None, correct=None, tuning=None
    ) -> "Comparison":
        """`correct`: the runs' per-example test predictions (`predictions`), or None: seeds only.
        `tuning`: a tuned sweep's record (tuning.RECORD); its tuning runs are not compared."""
        trials = runs[runs.role == "tuning"]
        runs = runs[runs.role != "tuning"]
        done = runs[runs.status == "FINISHED"]
        # every finished run held out a validation split (a search): rank by it; a mix: the test set
        metric = "val_accuracy" if len(done) and done.val_accuracy.notna().all() else "test_accuracy"
        if race:  # a race recorded before alpha spending split it evenly over its looks
            spending = race.get("spending", "bonferroni")  # and one before futility stops had none
            futility = race.get("futility", 0.0)
            plan = Plan(tuple(race["looks"]), race["alpha"], race["margin"], spending, futility)
            summary = stats.summarize(runs, metric, plan, looks=len(race["rounds"]), correct=correct)
        else:
            summary = stats.summarize(runs, metric, margin=margin, correct=correct)
        configs = list(summary.configuration)
        shared = set.intersection(*(set(c.split()) for c in configs)) if len(configs) > 1 else set()
        labels = {c: " ".join(o for o in c.split() if o not in shared) or c for c in configs}
        n = sorted(set(summary.n[summary.n > 0]))
        seeds = f"{n[0]}" if len(n) == 1 else f"{n[0]}-{n[-1]}" if n else "0"
        what = [
            "/".join(sorted(set(done.dataset.dropna()) - {""})) or "?",
            f"{'/'.join(sorted(set(done.epochs.dropna()) - {''}, key=str)) or '?'} epoch(s)",
            f"{seeds} seed{'s' if seeds != '1' else ''} per configuration",
        ]
        plan = summary.attrs["plan"]
        roles, chosen = tuned.roles(done, trials, tuning)
        title = f"{where}: {', '.join(what)}"
        return cls(runs, metric, summary, labels, title, plan, race, note, roles, chosen, tuning)

    @property
    def metric_name(self) -> str:
        return self.metric.replace("_", " ")


def predictions(mlflow_client, runs: pd.DataFrame) -> dict[tuple[str, int], np.ndarray]:
    """(configuration, seed) -> 0/1 per test example, from each finished run's recorded predictions
    (predictions.PREDICTIONS); the first run of a seed that ran more than once; none for older runs."""
    from archbench.tracking.predictions import fetch_predictions

    found = {}
    compared = runs[(runs.status == "FINISHED") & (runs.role != "tuning")]
    with tempfile.TemporaryDirectory() as tmp:
        for _, run in compared.sort_values("start_time").iterrows():
            key = (run.configuration, int(run.seed))
            if key in found:
                continue
            if (correct := fetch_predictions(mlflow_client, run.run_id, tmp)) is not None:
                found[key] = correct
    return found


def histories(mlflow_client, comp: Comparison) -> pd.DataFrame:
    """Per-epoch metric and train_loss of every finished run: configuration, epoch, key, value."""
    rows = []
    for _, run in comp.runs[comp.runs.status == "FINISHED"].iterrows():
        for key in (comp.metric, "train_loss"):
            for m in mlflow_client.get_metric_history(run.run_id, key):
                rows.append((run.configuration, run.seed, m.step, key, m.value))
    return pd.DataFrame(rows, columns=["configuration", "seed", "epoch", "key", "value"])


def write_all(comp: Comparison, folder: Path, mlflow_client) -> list[Path]:
    """comparison.md, comparison.csv, comparison.png and curves.png in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "comparison.md").write_text(table.markdown(comp))
    (folder / "comparison.csv").write_text(table.csv_text(comp))
    paths = [folder / "comparison.md", folder / "comparison.csv"]
    paths.append(charts.comparison(comp, folder / "comparison.png"))
    paths.append(charts.pareto(comp, folder / "pareto.png"))
    curves = histories(mlflow_client, comp)
    if len(curves):
        paths.append(charts.curves(comp, curves, folder / "curves.png"))
    if comp.tuning:  # tune=lr: the score against the tuned value, and against the tuning budget
        paths.append(study_charts.sensitivity(comp.tuning, comp.labels, folder / "sensitivity.png"))
        paths.append(study_charts.budget(comp.tuning, comp.labels, folder / "budget.png"))
    return paths


class NothingToCompare(Exception):
    """No runs where the user pointed; the message says why."""


def find(
    mlflow_client, parent: str | None, experiment: str | None, margin: float | None = None
) -> tuple[Comparison, str, str]:
    """The comparison to show, a folder name for it, and its experiment's id."""
    if experiment:
        found = mlflow_client.get_experiment_by_name(experiment)
        if found is None:
            raise NothingToCompare(f"no experiment named {experiment!r}")
        runs = experiment_runs(mlflow_client, found.experiment_id)
        if runs.empty:
            raise NothingToCompare(f"experiment {experiment!r} has no job runs")
        note = (
            "Pooled across sweeps: each pooled look at the same seeds spends the error budget again, "
            "which no interval here accounts for; `seeds=auto` plans its looks."
        )
        comp = Comparison.of(
            runs, f"experiment {experiment}", note, margin=margin or MARGIN,
            correct=predictions(mlflow_client, runs),
        )  # fmt: skip
        return comp, f"experiment-{found.experiment_id}", found.experiment_id
    if parent is None:
        ids = [e.experiment_id for e in mlflow_client.search_experiments()]
        where, order = "tags.archbench.sweep = 'parent'", ["attributes.start_time DESC"]
        latest = mlflow_client.search_runs(ids, where, order_by=order, max_results=1) if ids else []
        if not latest:
            raise NothingToCompare("no sweep recorded yet")
        parent = latest[0].info.run_id
    run = mlflow_client.get_run(parent)
    info = run.info
    runs = sweep_runs(mlflow_client, parent)
    if runs.empty:
        raise NothingToCompare(f"sweep {info.run_name} ({parent}) has no job runs")
    logged = float(run.data.params.get("compare.margin", MARGIN))
    from archbench.compare.race import RECORD as RACE_RECORD  # here: hydra's parser only for a sweep

    raced = parent_record(mlflow_client, parent, RACE_RECORD)
    comp = Comparison.of(
        runs, info.run_name, margin=margin or logged, race=raced, correct=predictions(mlflow_client, runs),
        tuning=parent_record(mlflow_client, parent, TUNING_RECORD),
    )  # fmt: skip
    return comp, parent, info.experiment_id


def parent_record(mlflow_client, parent_id: str, name: str) -> dict | None:
    """A record on a sweep's parent run (a race's race.json, a tuned sweep's tuning.json), or None."""
    if name not in {a.path for a in mlflow_client.list_artifacts(parent_id)}:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        return json.loads(Path(mlflow_client.download_artifacts(parent_id, name, tmp)).read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m archbench.compare.report", description=__doc__.split("\n")[0]
    )
    pick = parser.add_mutually_exclusive_group()
    pick.add_argument("--parent", help="a sweep's parent run id (default: the latest sweep)")
    pick.add_argument("--experiment", help="every job run of this experiment, grouped by configuration")
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_URI))
    parser.add_argument("--out", type=Path, default=Path("outputs/comparison"), help="folder for the files")
    parser.add_argument(
        "--margin", type=float, help=f"equivalence margin (default: the sweep's compare.margin or {MARGIN})"
    )
    args = parser.parse_args(argv)
    if args.tracking_uri.startswith("sqlite:///") and not Path(args.tracking_uri[10:]).exists():
        print(
            f"nothing to compare: no MLflow store at {args.tracking_uri}; run a sweep first "
            "(make sweep-activations)",
            file=sys.stderr,
        )
        return 1
    try:
        mlflow_client = store.client(args.tracking_uri)
        comp, name, experiment_id = find(mlflow_client, args.parent, args.experiment, args.margin)
    except NothingToCompare as e:
        print(f"nothing to compare in {store.redact(args.tracking_uri)}: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # a store that is locked, unreadable or not answering: one line
        line = store.failure(e, args.tracking_uri)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        return 1
    print(table.markdown(comp))
    paths = write_all(comp, args.out / name, mlflow_client)
    print(f"written to {args.out / name}: {', '.join(p.name for p in paths)}")
    print(f"in the MLflow UI (make ui): {ui_link(mlflow_client, comp, name, experiment_id, args.experiment)}")
    if not args.experiment:
        print(f"the comparison: {views.run_link(experiment_id, name)}")
    return 0


def ui_link(mlflow_client, comp: Comparison, name: str, experiment_id: str, experiment: str | None) -> str:
    """The runs view of this comparison, saved as a view of the experiment; the bare runs view where
    the store takes no writes (a read-only copy, say)."""
    try:
        if experiment:
            return views.for_experiment(mlflow_client, comp, experiment_id)
        return views.for_sweep(mlflow_client, comp, name, experiment_id)
    except Exception as e:
        if store.failure(e, mlflow_client.tracking_uri) is None:
            raise
        return f"{views.UI}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


if __name__ == "__main__":
    sys.exit(main())
