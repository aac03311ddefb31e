"""A run's per-example test predictions as a record: one gzipped CSV per run, written at its end and
read back by the comparison. Kept apart from records.py, which needs torch: reading them back is the
report's path, which imports no torch (1.5 s of a report's start here)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    import torch

# One row per test example: the comparison pairs configurations by example as well as by seed, so
# that an interval covers the test sample's own noise (compare/crossed.py). 10,000 rows: ~20 KB.
PREDICTIONS = "test_predictions.csv.gz"


def write_predictions(path: Path, labels: torch.Tensor, predicted: torch.Tensor, index=None) -> None:
    """index (in the test split's order; with dataset.resample=true, in the pooled data's), label,
    predicted: gzipped CSV."""
    labels, predicted = labels.cpu().numpy(), predicted.cpu().numpy()
    index = np.arange(len(labels)) if index is None else index
    table = pd.DataFrame({"index": index, "label": labels, "predicted": predicted})
    table.to_csv(path, index=False, compression={"method": "gzip", "mtime": 0})


def read_predictions(path: Path) -> np.ndarray | None:
    """Per test example, in index order: 1 where the run predicted the label, else 0. None for a run
    on its own partition (dataset.resample=true): its examples are not the other seeds', so there is
    no test sample to cross with the seeds; the seeds themselves carry its noise."""
    table = pd.read_csv(path).sort_values("index")
    if not np.array_equal(table["index"].to_numpy(), np.arange(len(table))):
        return None
    return (table.label.to_numpy() == table.predicted.to_numpy()).astype(np.uint8)


def fetch_predictions(mlflow_client, run_id: str, folder: str) -> np.ndarray | None:
    """A run's recorded predictions (read_predictions), downloaded into `folder`; None for a run
    recorded before them."""
    from unittest import mock

    from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR

    quiet = {MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name: "false"}  # else a bar per 20 KB file
    try:
        with mock.patch.dict(os.environ, quiet):
            path = mlflow_client.download_artifacts(run_id, PREDICTIONS, folder)
    except Exception:  # noqa: BLE001 (a run recorded before predictions were: its seeds alone count)
        return None
    return read_predictions(Path(path))
