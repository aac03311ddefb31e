"""Comparisons per configuration, read back from MLflow: table, CSV, charts.

python -m archbench.compare.report                      # the latest sweep
python -m archbench.compare.report --parent RUN_ID      # one sweep, by its parent run
python -m archbench.compare.report --experiment NAME    # every job run of an experiment, across sweeps
"""

import argparse
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from archbench.compare import charts, stats
from archbench.config import configuration
from archbench.tracking import store

DEFAULT_URI = "sqlite:///mlruns/mlflow.db"  # as conf/config.yaml's tracking.uri
# MLflow 3.17's UI opens in GenAI mode, whatever the experiment's kind, unless the URL asks otherwise
UI_MODE = "?workflowType=machine_learning"
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
    }


def _failed_row(failure: dict) -> dict:
    """A job that failed before it had a run (a config error, say)."""
    seed = next((o.split("=", 1)[1] for o in failure["overrides"] if o.startswith("seed=")), "0")
    row = dict.fromkeys(COLUMNS, None) | {"run": "(no run)", "status": "FAILED", "error": failure["error"]}
    picked = failure.get("choices", {})
    row |= {"configuration": configuration(failure["overrides"]), "seed": int(seed), "run_id": ""}
    return row | {"dataset": picked.get("dataset", ""), "epochs": "", "debug": "", "start_time": 0}


def _frame(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=COLUMNS)
    return frame.astype({k: float for k in METRICS})


def _search(mlflow_client, experiment_ids: list[str], where: str) -> list:
    return list(mlflow_client.search_runs(experiment_ids, where, max_results=50_000))


def sweep_runs(mlflow_client, parent_id: str, failures: list[dict] = ()) -> pd.DataFrame:
    """A row per child run of the sweep, plus one per failed job that left no run."""
    parent = mlflow_client.get_run(parent_id)
    runs = _search(mlflow_client, [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    recorded = {r.data.tags.get("archbench.overrides", "") for r in runs}
    rows = [_row(r) for r in runs]
    rows += [_failed_row(f) for f in failures if " ".join(f["overrides"]) not in recorded]
    return _frame(rows)


def experiment_runs(mlflow_client, experiment_id: str) -> tuple[pd.DataFrame, int]:
    """Every job run of an experiment; where a configuration ran a seed more than once (a sweep re-run),
    only its latest finished run counts. Returns the rows and how many runs were set aside so."""
    runs = _search(mlflow_client, [experiment_id], "")
    frame = _frame([_row(r) for r in runs if r.data.tags.get("archbench.sweep") != "parent"])
    frame["finished"] = frame.status == "FINISHED"
    frame = frame.sort_values(["finished", "start_time"], ascending=False, kind="stable")
    kept = frame.drop_duplicates(["configuration", "seed"]).drop(columns="finished")
    return kept, len(frame) - len(kept)


@dataclass
class Comparison:
    runs: pd.DataFrame  # a row per run
    metric: str  # val_accuracy where every finished run held out a validation split, else test_accuracy
    summary: pd.DataFrame  # a row per configuration, best first (stats.summarize)
    labels: dict[str, str]  # configuration -> what sets it apart from the others
    title: str
    note: str = ""

    @classmethod
    def of(cls, runs: pd.DataFrame, where: str, note: str = "") -> "Comparison":
        done = runs[runs.status == "FINISHED"]
        # every finished run held out a validation split (a search): rank by it; a mix: the test set
        metric = "val_accuracy" if len(done) and done.val_accuracy.notna().all() else "test_accuracy"
        summary = stats.summarize(runs, metric)
        configs = list(summary.configuration)
        shared = set.intersection(*(set(c.split()) for c in configs)) if len(configs) > 1 else set()
        labels = {c: " ".join(o for o in c.split() if o not in shared) or c for c in configs}
        n = sorted(set(summary.n[summary.n > 0]))
        seeds = f"{n[0]}" if len(n) == 1 else f"{n[0]}-{n[-1]}" if n else "0"
        what = [
            "/".join(sorted(set(done.dataset.dropna()) - {""})) or "?",
            f"{'/'.join(sorted(set(done.epochs.dropna()) - {''}, key=str)) or '?'} epochs",
            f"{seeds} seed{'s' if seeds != '1' else ''} per configuration",
        ]
        return cls(runs, metric, summary, labels, f"{where}: {', '.join(what)}", note)

    @property
    def metric_name(self) -> str:
        return self.metric.replace("_", " ")


def _fmt(value, digits=4, signed=False) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def markdown(comp: Comparison) -> str:
    """The table with verdicts, then the runs left out of it."""
    s = comp.summary
    lines = [
        f"**{comp.title}**",
        "",
        f"{comp.metric_name.capitalize()} per configuration: mean over seeds with its 95% t-interval, ranked "
        "by mean. Each configuration against the best: the difference with its 95% interval, paired by "
        "seed where both ran the same seeds, else Welch's; called worse only where the interval excludes "
        "0 (each interval on its own, not corrected for the number of comparisons).",
        "",
        "| # | configuration | n | mean | sd | 95% CI | vs best [95% CI] | verdict | train time (s) "
        "| params |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    debug = comp.runs[comp.runs.debug.fillna("") != ""]
    shrunk = set(debug.configuration)
    for i, r in s.iterrows():
        n = f"{r.n}" + (f" (+{r.failed} failed)" if r.failed else "")
        ci = f"[{_fmt(r.ci_low)}, {_fmt(r.ci_high)}]" if r.n >= 2 else "-"
        diff = "" if pd.isna(r["diff"]) else f"{_fmt(r['diff'], signed=True)} "
        vs = f"{diff}[{_fmt(r.diff_low, signed=True)}, {_fmt(r.diff_high, signed=True)}]" if diff else "-"
        params = "-" if pd.isna(r.params_total) else f"{int(r.params_total):,}"
        cells = [
            str(i + 1),
            comp.labels[r.configuration] + (" (debug)" if r.configuration in shrunk else ""),
            n,
            _fmt(r["mean"]),
            _fmt(r.sd),
            ci,
            vs,
            r.verdict,
            _fmt(r.train_time_s, 2),
            params,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if shrunk:
        names = sorted(comp.labels.get(c, c) for c in shrunk)
        why = "shrunk by +debug or train.limit_batches"
        lines += ["", f"**Debug runs, not results** ({', '.join(names)}): {why}."]
    failed = comp.runs[comp.runs.status != "FINISHED"]
    if len(failed):
        lines += ["", "Not in the statistics (did not finish):"]
        for _, r in failed.iterrows():
            lines.append(
                f"- {comp.labels.get(r.configuration, r.configuration)} seed={r.seed}: {r.status}"
                + (f": {r.error}" if r.error else "")
            )
    if comp.note:
        lines += ["", comp.note]
    return "\n".join(lines) + "\n"


def csv_text(comp: Comparison) -> str:
    table = comp.summary.assign(label=comp.summary.configuration.map(comp.labels), metric=comp.metric)
    table.insert(0, "rank", range(1, len(table) + 1))
    return table.assign(seeds=table.seeds.map(lambda s: " ".join(map(str, s)))).to_csv(index=False)


def headline(comp: Comparison) -> dict[str, float]:
    """The figures a parent run carries as metrics: the best, and each configuration's mean."""
    s = comp.summary
    best = s.iloc[0]
    figures = {"configurations": len(s), "seeds": int(s.n.max())}
    figures["resolved_worse"] = int((s.diff_high < 0).sum())
    figures |= {"best_mean": best["mean"], "best_ci_low": best.ci_low, "best_ci_high": best.ci_high}
    for _, r in s.iterrows():
        name = re.sub(r"[^/\w.\- :]", "_", comp.labels[r.configuration])  # what MLflow allows in a name
        figures[f"mean/{name}"] = r["mean"]
    return {k: float(v) for k, v in figures.items() if not pd.isna(v)}


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
    (folder / "comparison.md").write_text(markdown(comp))
    (folder / "comparison.csv").write_text(csv_text(comp))
    paths = [folder / "comparison.md", folder / "comparison.csv"]
    paths.append(charts.comparison(comp, folder / "comparison.png"))
    curves = histories(mlflow_client, comp)
    if len(curves):
        paths.append(charts.curves(comp, curves, folder / "curves.png"))
    return paths


class NothingToCompare(Exception):
    """No runs where the user pointed; the message says why."""


def find(mlflow_client, parent: str | None, experiment: str | None) -> tuple[Comparison, str, str]:
    """The comparison to show, a folder name for it, and its experiment's id."""
    if experiment:
        found = mlflow_client.get_experiment_by_name(experiment)
        if found is None:
            raise NothingToCompare(f"no experiment named {experiment!r}")
        runs, superseded = experiment_runs(mlflow_client, found.experiment_id)
        if runs.empty:
            raise NothingToCompare(f"experiment {experiment!r} has no job runs")
        note = f"{superseded} earlier run(s) of a configuration and seed that ran again are left out."
        comp = Comparison.of(runs, f"experiment {experiment}", note if superseded else "")
        return comp, f"experiment-{found.experiment_id}", found.experiment_id
    if parent is None:
        ids = [e.experiment_id for e in mlflow_client.search_experiments()]
        where, order = "tags.archbench.sweep = 'parent'", ["attributes.start_time DESC"]
        latest = mlflow_client.search_runs(ids, where, order_by=order, max_results=1) if ids else []
        if not latest:
            raise NothingToCompare("no sweep recorded yet")
        parent = latest[0].info.run_id
    info = mlflow_client.get_run(parent).info
    runs = sweep_runs(mlflow_client, parent)
    if runs.empty:
        raise NothingToCompare(f"sweep {info.run_name} ({parent}) has no job runs")
    return Comparison.of(runs, info.run_name), parent, info.experiment_id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m archbench.compare.report", description=__doc__.split("\n")[0]
    )
    pick = parser.add_mutually_exclusive_group()
    pick.add_argument("--parent", help="a sweep's parent run id (default: the latest sweep)")
    pick.add_argument("--experiment", help="every job run of this experiment, grouped by configuration")
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_URI))
    parser.add_argument("--out", type=Path, default=Path("outputs/comparison"), help="folder for the files")
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
        comp, name, experiment_id = find(mlflow_client, args.parent, args.experiment)
    except NothingToCompare as e:
        print(f"nothing to compare in {store.redact(args.tracking_uri)}: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # a store that is locked, unreadable or not answering: one line
        line = store.failure(e, args.tracking_uri)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        return 1
    print(markdown(comp))
    paths = write_all(comp, args.out / name, mlflow_client)
    print(f"written to {args.out / name}: {', '.join(p.name for p in paths)}")
    print(
        f"in the MLflow UI (make ui): http://127.0.0.1:5000/#/experiments/{experiment_id}/runs{UI_MODE}"
        " then Group by -> Tags -> configuration"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
