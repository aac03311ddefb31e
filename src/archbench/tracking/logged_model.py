"""A run's network as an MLflow model that takes what users have: the dataset's raw pixel values.

`mlflow.pytorch.load_model(f"runs:/{run_id}/model")` gives back the network behind the run's own
normalisation, so raw test images (0..255 for the image sets) reproduce the run's test accuracy.
It is saved in MLflow 3's default `pt2` format (torch.export): it loads without archbench's code
and without unpickling, which MLflow 3.17 refuses by default (MLFLOW_ALLOW_PICKLE_DESERIALIZATION).
"""

import copy
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
    """Log `network` (a CPU copy, in eval mode) to `run` as its model; returns the model's id, or
    None where torch.export cannot trace the network (the run says so in one line, and goes on).

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
    experiment = run.client.get_run(run.run_id).info.experiment_id
    logged = run.client.create_logged_model(experiment, name=NAME, source_run_id=run.run_id, params=params)
    try:
        # model logging and registration read MLflow's global URI; torch's logs: see _quiet
        with _tracking_uri(run.client.tracking_uri), _quiet("torch"):
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
                validate_serving_input=False,  # it loads the model back and predicts: 0.1 s; tests do that
                step=step,
            )
    except Exception as e:
        if not _raised_by_export(e):
            raise  # the store's failures (locked, read-only, full) fail the run, as everywhere
        run.client.delete_logged_model(logged.model_id)
        why = f"torch.export cannot trace {type(network).__name__} ({type(e).__name__}: {_first_line(e)})"
        run.client.set_tag(run.run_id, "archbench.model_not_logged", why[:4000])
        log.warning("the run's model is not logged: %s; the rest of its record is", why)
        return None
    return logged.model_id


def _raised_by_export(error: BaseException) -> bool:
    """Whether `error` came out of torch.export.export, tracing the model (not from MLflow or the store)."""
    export = os.path.join(os.path.dirname(torch.export.__file__), "__init__.py")
    tb = error.__traceback__
    while tb is not None:
        if (tb.tb_frame.f_code.co_filename, tb.tb_frame.f_code.co_name) == (export, "export"):
            return True
        tb = tb.tb_next
    return False


def _first_line(error: BaseException) -> str:
    return next((line.strip() for line in str(error).splitlines() if line.strip()), "")


@contextmanager
def _quiet(logger: str):
    """`logger` at ERROR for a while: torch.export, failing, logs the graph it traced (dozens of lines)."""
    named = logging.getLogger(logger)
    level = named.level
    named.setLevel(logging.ERROR)
    try:
        yield
    finally:
        named.setLevel(level)


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
