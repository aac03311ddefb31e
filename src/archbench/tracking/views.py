"""A saved view of the experiment's runs for each comparison, so that the link archbench prints opens
on one row per configuration with its accuracy, training time and size, the best first.

MLflow's UI (3.17) takes columns, grouping and sort from no URL parameter: only from its
per-browser state, or from a shared view, an experiment tag `mlflow.sharedViewState.<key>` that
`?viewStateShareKey=<key>` opens (what the UI's own "Share" writes; it also lists it under the
experiment's views). The link must carry nothing else that the UI reads as a search setting, or it
ignores the view. `workflowType=machine_learning` keeps the page out of the GenAI view, which 3.17
opens by default whatever the experiment's kind.
"""

import json
import time

KEY_PREFIX = "mlflow.sharedViewState."
RUN_NAME = "attributes.`Run Name`"
UI = "http://127.0.0.1:5000"  # make ui
GROUPS = {"aggregateFunction": "average", "groupByKeys": [{"mode": "tag", "groupByData": "configuration"}]}
SECTION = {"uuid": "comparison", "name": "Comparison", "display": True, "isReordered": True}  # charts first


def save(mlflow_client, experiment_id: str, key: str, name: str, where: str, configs: list[str], metric: str):
    """The view `key`: runs matching `where` (MLflow's search syntax), grouped by configuration (the
    groups folded: one row each), averages of `metric`, train_time_s and params_total, best first;
    in the chart view, a section of `metric` per configuration and its learning curves."""
    columns = [f"metrics.`{m}`" for m in (metric, "train_time_s", "params_total")]
    charts = [
        {"uuid": "bar", "type": "BAR", "metricKey": metric},
        _line("curve", metric),
        _line("loss", "train_loss"),
    ]
    state = {
        "searchFilter": where,
        "orderByKey": columns[0],
        "orderByAsc": False,
        "selectedColumns": columns,
        "columnOrder": [RUN_NAME, *columns],
        "columnWidths": {RUN_NAME: _width(configs)},
        "groupBy": GROUPS,
        "groupsExpanded": {f"tag.configuration.{c}": False for c in configs},
        "compareRunCharts": [
            {**c, "metricSectionId": "comparison", "isGenerated": False, "deleted": False} for c in charts
        ],
        "compareRunSections": [SECTION],
        "isAccordionReordered": True,
    }
    if _saved(mlflow_client, experiment_id, key) == {"name": name, "state": json.dumps(state)}:
        return  # saved as it is: a write would only make a stored report compare again (stored.py)
    saved = {"name": name, "createdAt": int(time.time() * 1000), "state": json.dumps(state)}
    mlflow_client.set_experiment_tag(experiment_id, KEY_PREFIX + key, json.dumps(saved))


def _saved(mlflow_client, experiment_id: str, key: str) -> dict | None:
    """The view `key` as saved, without its time; None where there is none."""
    found = mlflow_client.get_experiment(experiment_id).tags.get(KEY_PREFIX + key)
    try:
        saved = json.loads(found)
    except (TypeError, ValueError):
        return None
    return {k: saved.get(k) for k in ("name", "state")} if isinstance(saved, dict) else None


def _width(configs: list[str]) -> int:
    """Pixels for "Group: <configuration>" in full (about 7 a character, and 100 for the unfold arrow,
    the colour and the count of seeds), so that groups that differ only at the end of a label are
    told apart; capped so that the metric columns still fit beside it."""
    return min(640, 100 + 7 * len("Group: ") + 7 * max(map(len, configs), default=30))


def _line(uuid: str, metric: str) -> dict:
    line = {"selectedMetricKeys": [metric], "xAxisKey": "step", "scaleType": "linear", "lineSmoothness": 0}
    return {"uuid": uuid, "type": "LINE", "metricKey": metric, **line}


def link(experiment_id: str, key: str) -> str:
    return f"{UI}/#/experiments/{experiment_id}/runs?viewStateShareKey={key}&workflowType=machine_learning"


def run_link(experiment_id: str, run_id: str) -> str:
    """A run's page (a sweep's parent: the comparison is its description)."""
    return f"{UI}/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"


def for_sweep(mlflow_client, comp, parent_id: str, experiment_id: str) -> str:
    """A sweep's view (its child runs, and the earlier runs it reused) under the parent's id; returns
    its link."""
    from archbench.tracking.tables import used_by_filter  # here: pandas, for a sweep's view only

    where = used_by_filter(mlflow_client, experiment_id, parent_id)
    configs = list(comp.summary.configuration)
    save(mlflow_client, experiment_id, parent_id, comp.title.split(":")[0], where, configs, comp.metric)
    return link(experiment_id, parent_id)


def for_experiment(mlflow_client, comp, experiment_id: str) -> str:
    """Every job run of the experiment (runs with a configuration tag: not the sweeps' parents)."""
    configs = list(comp.summary.configuration)
    save(
        mlflow_client,
        experiment_id,
        "all",
        "all job runs",
        "tags.configuration LIKE '%'",
        configs,
        comp.metric,
    )
    return link(experiment_id, "all")
