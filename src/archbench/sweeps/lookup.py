"""The comparison a user points at (the latest sweep, a sweep by its parent run, or a whole
experiment): first the question, read from the store (its runs and records), then its comparison;
and its link in the MLflow UI."""

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from archbench.tracking import store, tables, views
from archbench.tuning import RECORD as TUNING_RECORD

FAILURES = "failed_jobs.json"  # on a sweep's parent run: its failed jobs (overrides, error)
POOLED = (
    "Pooled across sweeps: each pooled look at the same seeds spends the error budget again, "
    "which no interval here accounts for; `seeds=auto` plans its looks."
)


class NothingToCompare(Exception):
    """No runs where the user pointed; the message says why."""


@dataclass
class Question:
    """What a comparison compares, as the store holds it now: no statistics yet."""

    runs: pd.DataFrame  # tracking.tables: a row per run
    where: str  # the sweep's name, or "experiment NAME"
    name: str  # a folder name: the parent run's id, or experiment-ID
    experiment_id: str
    margin: float | None  # None: compare.margin's default
    note: str = ""
    race: dict | None = None  # the parent run's race.json
    tuning: dict | None = None  # the parent run's tuning.json

    def same(self, other: "Question") -> bool:
        """Whether `other` asks the same: the same runs in the same states, and the same records."""
        fields = ("where", "name", "experiment_id", "margin", "note", "race", "tuning")
        return self.runs.equals(other.runs) and all(getattr(self, f) == getattr(other, f) for f in fields)

    def compare(self, mlflow_client):
        """The comparison (comparing.comparison.Comparison), with the runs' recorded predictions."""
        from archbench.comparing.comparison import Comparison  # here: scipy, which a stored one skips
        from archbench.comparing.verdicts import MARGIN

        correct = tables.predictions(mlflow_client, self.runs)
        margin = self.margin or MARGIN
        return Comparison.of(
            self.runs,
            self.where,
            self.note,
            margin=margin,
            race=self.race,
            correct=correct,
            tuning=self.tuning,
        )


def question(
    mlflow_client, parent: str | None, experiment: str | None, margin: float | None = None, records=None
) -> Question:
    """The runs and records of the latest sweep, of the sweep `parent`, or of every job of `experiment`.
    `records`: a sweep's records by name (FAILURES, race's and tuning's) as it logged them on its parent
    run, not downloaded again (at interpreter exit, MLflow can no longer download)."""
    if experiment:
        found = mlflow_client.get_experiment_by_name(experiment)
        if found is None:
            raise NothingToCompare(f"no experiment named {experiment!r}")
        runs = tables.experiment_runs(mlflow_client, found.experiment_id)
        if runs.empty:
            raise NothingToCompare(f"experiment {experiment!r} has no job runs")
        name, where = f"experiment-{found.experiment_id}", f"experiment {experiment}"
        return Question(runs, where, name, found.experiment_id, margin, POOLED)
    if parent is None:
        parent = tables.latest_sweep(mlflow_client)
        if parent is None:
            raise NothingToCompare("no sweep recorded yet")
    run = mlflow_client.get_run(parent)
    info = run.info

    def record(name: str):
        if records is not None and name in records:
            return records[name]
        return tables.parent_record(mlflow_client, parent, name)

    # as the sweep's own comparison counts them: its failed jobs, and the runs it reused
    failures = record(FAILURES) or []
    runs = tables.sweep_runs(mlflow_client, parent, failures)
    if runs.empty:
        raise NothingToCompare(f"sweep {info.run_name} ({parent}) has no job runs")
    logged = run.data.params.get("compare.margin")
    from archbench.sweeps.race import RECORD as RACE_RECORD  # here: hydra's parser only for a sweep

    raced, study = record(RACE_RECORD), record(TUNING_RECORD)
    margin = margin or (float(logged) if logged is not None else None)
    note = reused_note(run.data.tags)
    return Question(runs, info.run_name, parent, info.experiment_id, margin, note, race=raced, tuning=study)


def reused_note(tags: dict[str, str]) -> str:
    """The comparison's word on the runs a sweep took from earlier sweeps rather than training them,
    from its parent run's tags (the launcher set them before any job ran)."""
    from archbench.sweeps.reuse import CONTINUES_TAG, REUSED_TAG

    reused = int(tags.get(REUSED_TAG, 0))
    if not reused:
        return ""
    earlier = tags.get(CONTINUES_TAG, "").split()
    where = f" (from sweep{'s'[: len(earlier) > 1]} {', '.join(earlier)})" if earlier else ""
    runs = f"{reused} run{'s'[: reused > 1]}"
    return f"{runs} reused from earlier sweeps{where}, not trained again (sweep.reuse)"


def shown(comp, folder: Path, paths: list[Path], ui_link: str, run_link: str | None) -> str:
    """What a report prints: the table, where its files went, and its links (a sweep's parent run's
    with `run_link`)."""
    from archbench.comparing import table  # here: scipy, which a stored report skips

    lines = [table.markdown(comp), f"written to {folder}: {', '.join(p.name for p in paths)}"]
    lines.append(f"in the MLflow UI (make ui): {ui_link}")
    if run_link is not None:
        lines.append(f"the comparison: {run_link}")
    return "\n".join(lines)


def find(mlflow_client, parent: str | None, experiment: str | None, margin: float | None = None):
    """The comparison to show, a folder name for it, and its experiment's id."""
    asked = question(mlflow_client, parent, experiment, margin)
    return asked.compare(mlflow_client), asked.name, asked.experiment_id


def ui_link(mlflow_client, comp, name: str, experiment_id: str, experiment: str | None) -> str:
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
