"""What a classifier's run records beyond its metrics, for MLflow's own tools: the datasets it read
(the UI's Datasets column), accuracy per class, the confusion matrix, the test predictions, and the
model."""

import json
import re
import tempfile
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from archbench import evaluation
from archbench.data import class_names
from archbench.splits import Splits
from archbench.tracking import logged_model
from archbench.tracking.predictions import PREDICTIONS, write_predictions
from archbench.tracking.runs import Run


def log_datasets(run: Run, lineage: dict) -> None:
    """MLflow's dataset records, one per split (context train, test): the UI's Datasets column."""
    from mlflow.data.schema import TensorDatasetSchema
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.exceptions import MlflowException
    from mlflow.types import Schema, TensorSpec
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    inputs = []
    for split, d in lineage.items():
        files = Path(d.source).is_absolute()  # else generated: the source names its generator
        source = {"uri": d.source, "files": d.parts} if files else {"generator": d.source, **d.parts}
        schema = TensorDatasetSchema(
            Schema([TensorSpec(np.dtype(d.dtype), (-1, *d.shape), "image")]),
            Schema([TensorSpec(np.dtype("int64"), (-1,), "label")]),
        )
        profile = {"num_rows": d.rows, "shape": d.shape, "classes": d.classes}
        dataset = Dataset(
            d.name, d.digest, "local" if files else "code", json.dumps(source),
            json.dumps(schema.to_dict()), json.dumps(profile),
        )  # fmt: skip
        inputs.append(DatasetInput(dataset, [InputTag(MLFLOW_DATASET_CONTEXT, split)]))
    try:
        run.client.log_inputs(run.run_id, datasets=inputs)
    except MlflowException as e:
        # two jobs of a side-by-side sweep recording the same new dataset at once: the store refuses
        # the later insert (SQLite's "UNIQUE constraint failed", PostgreSQL's "unique constraint");
        # again, MLflow finds the record the other one wrote and links this run to it
        if "unique constraint" not in str(e).lower():
            raise
        run.client.log_inputs(run.run_id, datasets=inputs)


def log_outcome(
    run: Run,
    cfg: DictConfig,
    network,
    data: Splits,
    predicted: torch.Tensor,
    step: int,
    params: dict[str, str],
) -> None:
    """What a run leaves at its end: accuracy per class, the confusion matrix, and the model.

    `step` is the one the run's final figures went in at: the last epoch, or the one early stopping
    stopped at. The per-class metrics go in there before the model, and MLflow links every metric
    at the model's step to it, so the model carries test_accuracy and the rest. The model gets the
    run's `params` too.
    """
    classes = class_names(cfg.dataset.get("classes"), cfg.dataset.num_classes)
    matrix = evaluation.confusion(data.y_test, predicted, len(classes))
    shares = evaluation.per_class_accuracy(matrix)
    run.log_metrics(
        {class_metric(c): round(a, 4) for c, a in zip(classes, shares, strict=True) if a is not None},
        step=step,
        once=True,
    )
    title = f"{run.name}: test accuracy {float(matrix.trace() / matrix.sum()):.4f}"
    with tempfile.TemporaryDirectory() as tmp, run.atomic():
        (Path(tmp) / "confusion_matrix.csv").write_text(evaluation.csv_text(matrix, classes))
        evaluation.plot(matrix, classes, Path(tmp) / "confusion_matrix.png", title)
        write_predictions(Path(tmp) / PREDICTIONS, data.y_test, predicted, data.test_index)
        run.client.log_artifacts(run.run_id, tmp)
    if not cfg.tracking.get("log_model", True):
        return
    raw = data.x_test[: logged_model.EXAMPLE_ROWS] * data.std + data.mean  # what a user of the model has
    with run.atomic():
        logged_model.log_model(
            run, network, data.mean, data.std, raw.round(decimals=3), step,
            register=cfg.tracking.get("register"), params=params,
        )  # fmt: skip


# zz_: MLflow's Model metrics tab orders its charts by name, so these ten come after the learning
# curves; no "/": the UI makes a section of each name's part before its last "/" ("T-shirt/top").
CLASS_METRIC = "zz_class_accuracy."


def class_metric(label: str) -> str:
    """A class's test accuracy as an MLflow metric name: `zz_class_accuracy.T-shirt_top`."""
    return CLASS_METRIC + re.sub(r"[^\w.\- ]", "_", label)
