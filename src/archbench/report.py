"""Comparison tables and charts of a sweep's runs, read back from MLflow.

python -m archbench.report                      # the latest sweep
python -m archbench.report --parent RUN_ID      # one sweep, by its parent run
python -m archbench.report --experiment NAME    # every job run of an experiment
"""

import argparse
import csv
import io
import os
import sys
from pathlib import Path

from archbench import store, tracking
from archbench.config import GROUPS

NUMBERS = ("test_accuracy", "val_accuracy", "train_time_s", "params_total")
DEFAULT_URI = "sqlite:///mlruns/mlflow.db"  # as conf/config.yaml's tracking.uri


def _row(run) -> dict:
    tags, metrics = run.data.tags, run.data.metrics
    row = {"run": run.info.run_name, **{g: tags.get(g, "") for g in GROUPS}}
    row["overrides"] = tags.get("archbench.overrides", "")
    row["status"] = run.info.status
    row.update({k: metrics.get(k) for k in NUMBERS})
    row["error"] = tags.get("archbench.error", "")
    row["run_id"] = run.info.run_id
    return row


def _failed_row(failure: dict) -> dict:
    """A job that failed before it had a run (e.g. a config error)."""
    picked = failure.get("choices", {})
    row = {"run": "(no run)", **{g: picked.get(g, "") for g in GROUPS}}
    row.update(overrides=" ".join(failure["overrides"]), status="FAILED", error=failure["error"], run_id="")
    return row | {k: None for k in NUMBERS}


def _search(mlflow_client, experiment_ids: list[str], where: str) -> list:
    return list(mlflow_client.search_runs(experiment_ids, where, max_results=10_000))


def sort_rows(rows: list[dict]) -> list[dict]:
    """Finished runs by accuracy, best first; then the rest."""
    done = [r for r in rows if r["status"] == "FINISHED" and r["test_accuracy"] is not None]
    rest = [r for r in rows if r not in done]
    return sorted(done, key=lambda r: -(r["val_accuracy"] or r["test_accuracy"])) + rest


def sweep_rows(mlflow_client, parent_id: str, failures: list[dict] = ()) -> list[dict]:
    """One row per child run of the sweep, plus one per failed job that left no run."""
    parent = mlflow_client.get_run(parent_id)
    runs = _search(mlflow_client, [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    rows = [_row(r) for r in runs]
    recorded = {r["overrides"] for r in rows}
    rows += [_failed_row(f) for f in failures if " ".join(f["overrides"]) not in recorded]
    return sort_rows(rows)


def _label(row: dict, shared: set[str]) -> str:
    """What sets this row apart: the overrides not shared by every row."""
    own = [o for o in row["overrides"].split() if o not in shared and not o.startswith("+")]
    return " ".join(own) or row["run"]


def _shared(rows: list[dict]) -> set[str]:
    return set.intersection(*(set(r["overrides"].split()) for r in rows)) if rows else set()


def _table(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    shared = _shared(rows)
    varying = [g for g in GROUPS if len({r[g] for r in rows}) > 1] or ["model"]
    numbers = [k for k in NUMBERS if any(r[k] is not None for r in rows)]
    header = ["config", *varying, "status", *numbers]
    body = []
    for r in rows:
        values = [_fmt(k, r[k]) for k in numbers]
        body.append([_label(r, shared), *(r[g] for g in varying), r["status"], *values])
    return header, body


def _fmt(key: str, value) -> str:
    if value is None:
        return "-"
    if key.endswith("accuracy"):
        return f"{value:.4f}"
    if key.endswith("_s"):
        return f"{value:.2f}"
    return f"{int(value):,}"


def markdown(rows: list[dict]) -> str:
    header, body = _table(rows)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    shared = _shared(rows)
    errors = [f"- {_label(r, shared)}: {r['error']}" for r in rows if r["error"]]
    return "\n".join(lines + (["", "Failed:"] + errors if errors else [])) + "\n"


def csv_text(rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]) if rows else ["run"])
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def plot(rows: list[dict], path: Path, title: str) -> Path:
    """Accuracy and training time per configuration, side by side; failed runs marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shared = _shared(rows)
    labels = [_label(r, shared) for r in rows][::-1]  # best at the top
    accuracy = [(r["test_accuracy"] or 0) for r in rows][::-1]
    seconds = [(r["train_time_s"] or 0) for r in rows][::-1]
    failed = [r["status"] != "FINISHED" for r in rows][::-1]
    colors = ["#bbbbbb" if f else "#3b75af" for f in failed]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 1.2 + 0.45 * len(rows)), sharey=True)
    for ax, values, name, fmt in (
        (left, accuracy, "test accuracy", "{:.3f}"),
        (right, seconds, "training time (s)", "{:.2f}" if max(seconds) < 10 else "{:.1f}"),
    ):
        bars = ax.barh(labels, values, color=colors)
        texts = ["failed" if f else fmt.format(v) for f, v in zip(failed, values, strict=True)]
        ax.bar_label(bars, texts, padding=3, fontsize=9)
        ax.set_xlabel(name)
        ax.margins(x=0.2)
        ax.spines[["top", "right"]].set_visible(False)
    left.set_xlim(0, 1.12)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_all(rows: list[dict], folder: Path, title: str) -> list[Path]:
    """comparison.md, comparison.csv and comparison.png in `folder`."""
    (folder / "comparison.md").write_text(markdown(rows))
    (folder / "comparison.csv").write_text(csv_text(rows))
    paths = [folder / "comparison.md", folder / "comparison.csv"]
    return paths + ([plot(rows, folder / "comparison.png", title)] if rows else [])


def find_rows(mlflow_client, parent: str | None, experiment: str | None) -> tuple[list[dict], str, str]:
    """The rows to compare, a title and a file name; ([], reason, "") when there is nothing."""
    if experiment:
        found = mlflow_client.get_experiment_by_name(experiment)
        if found is None:
            return [], f"no experiment named {experiment!r}", ""
        runs = _search(mlflow_client, [found.experiment_id], "")
        runs = [r for r in runs if r.data.tags.get("archbench.sweep") != "parent"]  # jobs, not sweeps
        return (
            sort_rows([_row(r) for r in runs]),
            f"experiment {experiment}",
            f"experiment-{found.experiment_id}",
        )
    if parent is None:
        ids = [e.experiment_id for e in mlflow_client.search_experiments()]
        latest = (
            mlflow_client.search_runs(
                ids, "tags.archbench.sweep = 'parent'", order_by=["attributes.start_time DESC"], max_results=1
            )
            if ids
            else []
        )
        if not latest:
            return [], "no sweep recorded yet", ""
        parent = latest[0].info.run_id
    run = mlflow_client.get_run(parent)
    return sweep_rows(mlflow_client, parent), f"{run.info.run_name} ({parent})", parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m archbench.report", description=__doc__.split("\n")[0])
    pick = parser.add_mutually_exclusive_group()
    pick.add_argument("--parent", help="a sweep's parent run id (default: the latest sweep)")
    pick.add_argument("--experiment", help="compare every job run of this experiment")
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_URI))
    parser.add_argument("--out", type=Path, default=Path("outputs/comparison"), help="folder for the PNG")
    args = parser.parse_args(argv)
    if args.tracking_uri.startswith("sqlite:///") and not Path(args.tracking_uri[10:]).exists():
        print(
            f"nothing to compare: no MLflow store at {args.tracking_uri}; run a sweep first "
            "(make sweep-activations)",
            file=sys.stderr,
        )
        return 1
    try:
        mlflow_client = tracking.client(args.tracking_uri)
        rows, title, name = find_rows(mlflow_client, args.parent, args.experiment)
    except Exception as e:  # a store that is locked, unreadable or not answering: one line
        line = store.failure(e, args.tracking_uri)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        return 1
    if not rows:
        print(f"nothing to compare in {tracking.redact(args.tracking_uri)}: {title}", file=sys.stderr)
        return 1
    print(f"{title}\n")
    print(markdown(rows))
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"chart: {plot(rows, args.out / f'comparison-{name}.png', title)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
