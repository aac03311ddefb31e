"""The CUDA path: bf16 autocast, NHWC, cuDNN benchmark. Skipped where there is no CUDA device."""

import pytest
import torch

from archbench.app import main
from conftest import all_runs, compose_job

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine"),
]


@pytest.mark.parametrize("model", ["mlp", "cnn3"])
def test_trains_on_cuda_with_the_fast_options(tmp_path, model):
    accuracy = main(compose_job(tmp_path, f"model={model}", "device=cuda", "train.epochs=2"))
    (run,) = all_runs(tmp_path)
    assert run.info.status == "FINISHED" and run.data.tags["device"].startswith("cuda")
    assert run.data.params["train.amp"] == "auto" and accuracy > 0.5


def test_deterministic_cuda_runs_repeat(tmp_path):
    args = ("model=cnn3", "device=cuda", "deterministic=true", "train.epochs=1")
    first = main(compose_job(tmp_path / "a", *args))
    second = main(compose_job(tmp_path / "b", *args))
    assert first == second


def test_augmentation_schedule_and_early_stopping_on_cuda(tmp_path):
    # the augmentation's generator lives on the device; its state and the scheduler's go in the checkpoint
    args = ("model=cnn3", "device=cuda", "deterministic=true", "train.epochs=2", "dataset.augment=true")
    args += ("scheduler=onecycle", "train.val_fraction=0.1", "train.early_stopping.patience=1")
    first = main(compose_job(tmp_path / "a", *args))
    second = main(compose_job(tmp_path / "b", *args))
    assert first == second and all_runs(tmp_path / "a")[0].info.status == "FINISHED"


@pytest.mark.parametrize("name", ["sgd_momentum", "adam"])
def test_seeds_train_together_on_cuda_exactly_as_alone(name):
    """batched.py on CUDA: float64, 200 steps, each seed as alone to 1e-10 (tests/test_batched.py)."""
    from test_batched import exactly_as_alone

    exactly_as_alone(name, torch.device("cuda"))


def test_a_sweep_trains_seeds_together_on_cuda(tmp_path):
    from conftest import all_runs, run_py

    done = run_py(tmp_path, "-m", "activation=relu,tanh", "seeds=3", "device=cuda", "train.together=true")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "6 runs in 2 jobs" in done.stdout
    children = [r for r in all_runs(tmp_path) if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 6 and all(r.data.tags["device"].startswith("cuda") for r in children)
