"""Bad input: one clear line naming the key and what is allowed, exit 1, before any work, no run."""

import pytest

from archbench.app import main
from archbench.config import ConfigError, validate
from conftest import compose_job, run_py

CASES = [
    (["optimizer.lr=-1"], "optimizer.lr must be a number > 0, got -1"),
    (["optimizer.lr=0"], "optimizer.lr must be a number > 0, got 0"),
    (["optimizer.lr=fast"], "optimizer.lr must be a number > 0, got 'fast'"),
    (
        ["optimizer=sgd_momentum", "optimizer.momentum=high"],
        "optimizer.momentum must be a number, got 'high'",
    ),
    (["train.epochs=0"], "train.epochs must be an integer >= 1, got 0"),
    (["train.epochs=2.5"], "train.epochs must be an integer >= 1, got 2.5"),
    (["train.batch_size=0"], "train.batch_size must be an integer >= 1, got 0"),
    (["train.batch_size=big"], "train.batch_size must be an integer >= 1, got 'big'"),
    (["train.val_fraction=1.5"], "train.val_fraction must be a number >= 0 and < 1, got 1.5"),
    (["seed=x"], "seed must be an integer >= 0, got 'x'"),
    (["model.hidden_sizes=[]"], "model.hidden_sizes must be a non-empty list of integers >= 1, got []"),
    (
        ["model.hidden_sizes=[100,0]"],
        "model.hidden_sizes must be a non-empty list of integers >= 1, got [100, 0]",
    ),
    (["model=cnn2", "model.channels=[16,-4]"], "model.channels must be a non-empty list of integers >= 1"),
    (["model=cnn2", "model.channels=[]"], "model.channels must be a non-empty list of integers >= 1, got []"),
    (["device=gpu"], "device must be auto, cpu, cuda, cuda:N or mps, got 'gpu'"),
    (["train.amp=maybe"], "train.amp must be auto, true or false, got 'maybe'"),
    (["train.compile=1"], "train.compile must be true or false, got 1"),
    (["mode=serve"], "mode must be one of train, inspect, got 'serve'"),
    (
        ["model=cnn2", "dataset.input_shape=[1,2,2]"],
        "model=CNN cannot fit input [1, 2, 2]: pool2 (kernel 2, padding 0, stride 2) gets 32x1x1 "
        "and would give 0x0 by O = (I - F + 2P)/S + 1",
    ),
    (["model=wide"], "model.input_shape [2] does not fit dataset=synthetic, whose input is [1, 28, 28]"),
    (["model.head=softmax"], "model.head=softmax does not fit the loss, which needs model.head=null"),
    (
        ["train.limit_batches=1.5"],
        "train.limit_batches must be null, an integer >= 1 (batches) or a fraction in (0, 1], got 1.5",
    ),
    (["train.limit_batches=0"], "train.limit_batches must be null, an integer >= 1 (batches)"),
    (["train.overfit_batches=0"], "train.overfit_batches must be an integer >= 1 or null, got 0"),
    (["train.early_stopping.patience=0"], "train.early_stopping.patience must be an integer >= 1 or null"),
    (["train.early_stopping.min_delta=-1"], "train.early_stopping.min_delta must be a number >= 0, got -1"),
    (
        ["train.early_stopping.patience=3"],
        "train.early_stopping.patience=3 watches val_accuracy and needs train.val_fraction > 0, got 0.0",
    ),
    (["scheduler=plateau"], "scheduler=plateau watches val_loss and needs train.val_fraction > 0, got 0.0"),
    (["scheduler.interval=step"], "scheduler.interval must be one of epoch, batch, got 'step'"),
    (
        ["scheduler=plateau", "scheduler.monitor=test_loss", "train.val_fraction=0.1"],
        "scheduler.monitor must be null or one of val_loss, val_accuracy, train_loss, train_accuracy",
    ),
    (["dataset.augment=yes"], "dataset.augment must be true or false, got 'yes'"),
    (["dataset.crop_padding=-2"], "dataset.crop_padding must be an integer >= 0, got -2"),
    (
        ["loss=nll", "model.head=null"],
        "model.head=null does not fit the loss, which needs model.head=log_softmax",
    ),
]


@pytest.mark.parametrize(("overrides", "message"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_config_errors(tmp_path, overrides, message):
    cfg = compose_job(tmp_path, *overrides)
    with pytest.raises(ConfigError) as error:
        validate(cfg)
    assert message in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(SystemExit) as exit_:  # run.py's view: one line, no traceback
        main(cfg)
    assert str(exit_.value) == f"error: {error.value}"
    assert not (tmp_path / "mlruns").exists(), "no MLflow store, let alone a run"


def test_cuda_without_cuda(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="device=cuda but this machine has no CUDA device"):
        validate(compose_job(tmp_path, "device=cuda"))


def test_every_model_option_passes(tmp_path):
    for model in ("mlp", "mlp_deep", "cnn1", "cnn2", "cnn3"):
        for loss in ("cross_entropy", "nll", "mse"):
            validate(compose_job(tmp_path, f"model={model}", f"loss={loss}"))
    for model in ("wide", "deep", "dummynet", "tinymodel"):
        validate(compose_job(tmp_path, f"model={model}", "mode=inspect"))
    validate(compose_job(tmp_path, "model=tinymodel", "loss=mse", "dataset.input_shape=[100]"))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["optimizer.lr=-1"], "error: optimizer.lr must be a number > 0, got -1"),
        (["train.epochs=0"], "error: train.epochs must be an integer >= 1, got 0"),
        (["device=tpu"], "error: device must be auto, cpu, cuda, cuda:N or mps, got 'tpu'"),
        (["model=cnn1", "dataset.input_shape=[1,1,1]"], "error: model=CNN cannot fit input [1, 1, 1]"),
    ],
)
def test_cli_exits_with_one_line(tmp_path, args, line):
    result = run_py(tmp_path, *args)
    assert result.returncode == 1
    assert result.stderr.startswith(line) and result.stderr.count("\n") == 1
    assert not (tmp_path / "mlruns").exists()


@pytest.mark.slow
def test_unknown_option_is_hydras_error(tmp_path):
    result = run_py(tmp_path, "activation=swish")
    assert result.returncode == 1
    assert "Could not find 'activation/swish'" in result.stderr and "relu" in result.stderr
    assert not (tmp_path / "mlruns").exists()
