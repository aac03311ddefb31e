"""A store's runs read into plain tables: a row per run (its configuration, seed and metrics), each
run's per-example test predictions, per-epoch histories, and the records on a sweep's parent run.
archbench.comparing takes these tables and never the store.
"""

import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from archbench.config import configuration
from archbench.tracking.predictions import fetch_predictions
from archbench.tuning import ROLE_TAG

# on every run a sweep used, its children and the earlier runs it reused (reuse.py): USED_BY + the
# parent's id, with the configuration the sweep counts the run as
USED_BY = "archbench.used_by."
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


def used_by_filter(mlflow_client, experiment_id: str, parent_id: str) -> str:
    """MLflow's search for the runs a sweep used; its children, for a sweep from before USED_BY."""
    where = f"tags.`{USED_BY}{parent_id}` LIKE '%'"
    if mlflow_client.search_runs([experiment_id], where, max_results=1):
        return where
    return f"tags.mlflow.parentRunId = '{parent_id}'"


def sweep_runs(mlflow_client, parent_id: str, failures: list[dict] = ()) -> pd.DataFrame:
    """A row per run the sweep used: its children, and the runs of earlier sweeps that it reused or
    resumed (sweeps/reuse.py), each as the configuration this sweep counts it as; plus a row per
    failed job that left no run."""
    experiment = mlflow_client.get_run(parent_id).info.experiment_id
    runs = _search(mlflow_client, [experiment], used_by_filter(mlflow_client, experiment, parent_id))
    recorded = {r.data.tags.get("archbench.overrides", "") for r in runs}
    rows = [_row(r) | _counted_as(r, USED_BY + parent_id) for r in runs]
    rows += [_failed_row(f) for f in failures if " ".join(f["overrides"]) not in recorded]
    return _frame(rows)


def experiment_runs(mlflow_client, experiment_id: str) -> pd.DataFrame:
    """Every job run of an experiment; a seed a configuration ran more than once (a sweep run again)
    counts once, as the mean of its finished runs (comparing.stats.per_seed)."""
    runs = _search(mlflow_client, [experiment_id], "")
    jobs = [r for r in runs if r.data.tags.get("archbench.sweep") != "parent"]
    return _frame([_row(r) for r in jobs if r.data.tags.get(ROLE_TAG) != "tuning"])


def predictions(mlflow_client, runs: pd.DataFrame) -> dict[tuple[str, int], np.ndarray]:
    """(configuration, seed) -> 0/1 per test example, from each finished run's recorded predictions
    (predictions.PREDICTIONS); the first run of a seed that ran more than once; none for older runs."""
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


def histories(mlflow_client, runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per-epoch `metric` and train_loss of every finished run: configuration, epoch, key, value."""
    rows = []
    for _, run in runs[runs.status == "FINISHED"].iterrows():
        for key in (metric, "train_loss"):
            for m in mlflow_client.get_metric_history(run.run_id, key):
                rows.append((run.configuration, run.seed, m.step, key, m.value))
    return pd.DataFrame(rows, columns=["configuration", "seed", "epoch", "key", "value"])


def parent_record(mlflow_client, parent_id: str, name: str) -> dict | None:
    """A record on a sweep's parent run (a race's race.json, a tuned sweep's tuning.json), or None."""
    if name not in {a.path for a in mlflow_client.list_artifacts(parent_id)}:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        return json.loads(Path(mlflow_client.download_artifacts(parent_id, name, tmp)).read_text())


def latest_sweep(mlflow_client) -> str | None:
    """The parent run id of the sweep started last, in any experiment; None before the first."""
    ids = [e.experiment_id for e in mlflow_client.search_experiments()]
    where, order = "tags.archbench.sweep = 'parent'", ["attributes.start_time DESC"]
    latest = mlflow_client.search_runs(ids, where, order_by=order, max_results=1) if ids else []
    return latest[0].info.run_id if latest else None
