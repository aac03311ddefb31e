"""A run's network as an MLflow model that takes what users have: the dataset's raw pixel values.

`mlflow.pytorch.load_model(f"runs:/{run_id}/model")` gives back the network behind the run's own
normalisation, so raw test images (0..255 for the image sets) reproduce the run's test accuracy.
It is saved in MLflow 3's default `pt2` format (torch.export): it loads without archbench's code
and without unpickling, which MLflow 3.17 refuses by default (MLFLOW_ALLOW_PICKLE_DESERIALIZATION).
"""

import contextlib
import copy
import io
import logging
import os
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

NAME = "model"  # runs:/<run_id>/model
EXAMPLE_ROWS = 2  # torch.export keeps a batch dimension of 1 fixed: the example needs 2 rows


class RawInput(nn.Module):
    """The network preceded by its run's normalisation: (x - mean) / std, per channel."""

    def __init__(self, network: nn.Module, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.network = network
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network((x - self.mean) / self.std)


def log_model(
    run, network: nn.Module, mean, std, raw_example, step: int, register=None, params=None
) -> str | None:
    """Log `network` (a CPU copy, in eval mode) to `run` as its model; returns the model's id, or None
    where torch.export cannot trace the network: the run says so in one line, and goes on without it.

    The logged model is created in the run's own experiment and handed to MLflow by id: left to
    itself, MLflow puts it in the active experiment, which for a client-driven run is Default (0).
    Metrics logged at `step` are linked to the model (the UI's Models tab shows them).
    """
    import mlflow.pytorch
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    network = copy.deepcopy(network).to("cpu", memory_format=torch.contiguous_format).eval()  # NCHW: as given
    model = RawInput(network, mean.detach().cpu(), std.detach().cpu()).eval()
    example = raw_example[:EXAMPLE_ROWS].detach().cpu().float().numpy()
    with torch.inference_mode():
        classes = model(torch.from_numpy(example)).shape[1]
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *example.shape[1:]))]),  # raw pixel values
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, classes))]),  # a score per class
    )
    # Any network but archbench's own (whose export tests/test_records.py checks) is tried first: MLflow
    # links a model to its run before exporting it. One export more (0.06 s for the mlp, 0.15 s for cnn3,
    # 2-core Xeon) is why archbench's own skip it.
    why = None if type(network).__module__.startswith("archbench.") else untraceable(model, example)
    if why is not None:
        run.client.set_tag(run.run_id, "archbench.model_not_logged", why[:4000])
        log.warning("the run's model is not logged: %s; the rest of its record is", why)
        return None
    experiment = run.client.get_run(run.run_id).info.experiment_id
    logged = run.client.create_logged_model(experiment, name=NAME, source_run_id=run.run_id, params=params)
    # model logging and registration read MLflow's global URI
    with _tracking_uri(run.client.tracking_uri), _requirements_checked_by_name():
        mlflow.pytorch.log_model(
            model,
            name=NAME,
            model_id=logged.model_id,
            run_id=run.run_id,
            signature=signature,
            input_example=example,
            serialization_format="pt2",
            # what loading a pt2 model needs (MLflow adds itself); given, so MLflow infers nothing
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
            registered_model_name=register,
            validate_serving_input=False,  # it loads the model back and predicts: 0.1 s; the tests do that
            step=step,
        )
    return logged.model_id


def untraceable(model: nn.Module, example: np.ndarray) -> str | None:
    """Why torch.export cannot trace `model` as MLflow's pt2 format will (batch dimension dynamic), in
    one line; None if it can. What torch prints on failing (the graph it traced so far) is dropped."""
    from torch.export import Dim

    try:
        with contextlib.redirect_stderr(io.StringIO()):
            torch.export.export(model, (torch.from_numpy(example),), dynamic_shapes=[{0: Dim.AUTO}])
    except Exception as e:
        first = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
        return f"torch.export cannot trace {type(model.network).__name__} ({type(e).__name__}: {first})"
    return None


@contextmanager
def _requirements_checked_by_name():
    """MLflow checks a model's requirements against the installed packages (a warning when they differ)
    through a map of every installed distribution's modules, built on first use by reading each one's
    file list: 0.7 s of a run's fixed cost here, for a map the check only needs for requirements it
    cannot look up by name. archbench's are torch and mlflow, looked up by name, so the map is left
    empty for this one call and put back after: the check itself still runs, and MLflow's own
    requirement inference elsewhere in the process still gets the full map."""
    from unittest import mock

    from mlflow.utils import requirements_utils

    if getattr(requirements_utils, "_MODULES_TO_PACKAGES", {}) is not None:  # built already, or renamed
        yield
        return
    with mock.patch.object(requirements_utils, "_MODULES_TO_PACKAGES", {}):
        yield


@contextmanager
def _tracking_uri(uri: str):
    """MLflow's process-wide tracking URI pointed at `uri`, then put back as it was, with MLFLOW_TRACKING_URI.

    mlflow's own helper for this (_use_tracking_uri) unsets MLFLOW_TRACKING_URI on the way out,
    which would move the next job of a sweep, whose tracking.uri reads it, to another store.
    """
    import mlflow
    from mlflow.tracking._tracking_service import utils

    saved, saved_env = utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved)  # which also sets or unsets MLFLOW_TRACKING_URI: restored below
        if saved_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved_env
