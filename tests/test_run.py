"""A run trains, evaluates and leaves a complete MLflow record; a multirun leaves one per job."""

import os
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from archbench.app import main
from archbench.data import IdxSource
from conftest import all_runs, compose_job, store

SYSTEM = "/usr/share/datasets/fashion-mnist"
have_fashion = IdxSource("fashion_mnist", "FashionMNIST", SYSTEM, [1, 28, 28], 10).find(Path("data"))
needs_fashion = pytest.mark.skipif(
    not have_fashion and not os.environ.get("ARCHBENCH_STRICT"),
    reason="Fashion-MNIST not installed (sudo apt-get install dataset-fashion-mnist)",
)

PER_EPOCH = ("train_loss", "train_accuracy", "test_accuracy", "test_loss", "epoch_time_s")
FINAL = ("test_accuracy", "test_loss", "train_time_s", "params_total", "params_trainable", "mult_adds")
TAGS = ("model", "activation", "optimizer", "dataset", "loss", "device", "torch_version", "cuda_version")


def check_record(tmp_path, run, cfg, epochs):
    mlflow_client = store(tmp_path)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == f"mlp-relu-sgd-s{cfg.seed}"  # the seed too: a sweep's runs differ by name
    assert set(FINAL) <= set(run.data.metrics)
    for key in PER_EPOCH:
        history = mlflow_client.get_metric_history(run.info.run_id, key)
        assert sorted(m.step for m in history) == list(range(1, epochs + 1)), key
    real = sum(p.numel() for p in instantiate(cfg.model).parameters())
    assert run.data.metrics["params_total"] == real == run.data.metrics["params_trainable"]
    params = run.data.params
    assert params["optimizer.lr"] == "0.1" and params["model.hidden_sizes"] == "[100]"
    assert params["train.epochs"] == str(epochs) and params["train.batch_size"] == "100"
    assert params["activation"] == "relu" and params["device"] == "cpu" and params["seed"] == str(cfg.seed)
    assert int(params["train.threads"]) >= 1
    # what changes results, not Hydra's plumbing or where things are kept (config.yaml has it all)
    plumbing = [k for k in params if k.endswith(("_target_", "_partial_")) or k.startswith("tracking.")]
    assert not plumbing and not {"data_dir", "resume", "mode", "seeds", "train.progress"} & set(params)
    tags = run.data.tags
    assert {k: tags[k] for k in TAGS[:5]} == {
        "model": "mlp",
        "activation": "relu",
        "optimizer": "sgd",
        "dataset": cfg.dataset.name,
        "loss": "cross_entropy",
    }
    assert tags["device"] == "cpu" and tags["torch_version"] == torch.__version__
    assert tags["cuda_version"] == str(torch.version.cuda)
    names = {a.path for a in mlflow_client.list_artifacts(run.info.run_id)}
    assert {"model_summary.txt", "config.yaml", "checkpoint", "confusion_matrix.csv"} <= names
    assert "confusion_matrix.png" in names and "model" not in names, "the model is MLflow's, not an artifact"
    summary = mlflow_client.download_artifacts(run.info.run_id, "model_summary.txt", str(tmp_path))
    assert "[100, 1, 28, 28]" in Path(summary).read_text()
    (logged,) = run.outputs.model_outputs
    assert mlflow_client.get_logged_model(logged.model_id).name == "model"
    assert {d.tags[0].value for d in run.inputs.dataset_inputs} == {"train", "test"}


@needs_fashion
def test_one_epoch_mlp_on_fashion_mnist(tmp_path):
    cfg = compose_job(tmp_path, "dataset=fashion_mnist", "model=mlp", "tracking.log_model=true")
    accuracy = main(cfg)
    assert accuracy >= 0.75
    (run,) = all_runs(tmp_path)
    assert run.data.metrics["test_accuracy"] == accuracy
    assert run.data.metrics["train_time_s"] > 0
    check_record(tmp_path, run, cfg, epochs=1)
    assert run.data.metrics["mult_adds"] == 79_510  # one sample through 784-100-10: one per weight


def test_record_on_synthetic_data(tmp_path):
    cfg = compose_job(tmp_path, "train.epochs=2", "tracking.log_model=true")
    main(cfg)
    (run,) = all_runs(tmp_path)
    check_record(tmp_path, run, cfg, epochs=2)
    assert (tmp_path / "mlruns" / "archbench").is_dir(), "artifacts live beside the database"
