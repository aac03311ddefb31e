"""The comparison a user points at (the latest sweep, a sweep by its parent run, or a whole
experiment), read from the store and compared; and its link in the MLflow UI."""

from archbench.comparing.comparison import Comparison
from archbench.comparing.verdicts import MARGIN
from archbench.tracking import store, tables, views
from archbench.tuning import RECORD as TUNING_RECORD

DEFAULT_URI = "sqlite:///mlruns/mlflow.db"  # as conf/config.yaml's tracking.uri


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
        runs = tables.experiment_runs(mlflow_client, found.experiment_id)
        if runs.empty:
            raise NothingToCompare(f"experiment {experiment!r} has no job runs")
        note = (
            "Pooled across sweeps: each pooled look at the same seeds spends the error budget again, "
            "which no interval here accounts for; `seeds=auto` plans its looks."
        )
        comp = Comparison.of(
            runs, f"experiment {experiment}", note, margin=margin or MARGIN,
            correct=tables.predictions(mlflow_client, runs),
        )  # fmt: skip
        return comp, f"experiment-{found.experiment_id}", found.experiment_id
    if parent is None:
        parent = tables.latest_sweep(mlflow_client)
        if parent is None:
            raise NothingToCompare("no sweep recorded yet")
    run = mlflow_client.get_run(parent)
    info = run.info
    runs = tables.sweep_runs(mlflow_client, parent)
    if runs.empty:
        raise NothingToCompare(f"sweep {info.run_name} ({parent}) has no job runs")
    logged = float(run.data.params.get("compare.margin", MARGIN))
    from archbench.sweeps.race import RECORD as RACE_RECORD  # here: hydra's parser only for a sweep

    raced = tables.parent_record(mlflow_client, parent, RACE_RECORD)
    study = tables.parent_record(mlflow_client, parent, TUNING_RECORD)
    correct = tables.predictions(mlflow_client, runs)
    margin = margin or logged
    comp = Comparison.of(runs, info.run_name, margin=margin, race=raced, correct=correct, tuning=study)
    return comp, parent, info.experiment_id


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
