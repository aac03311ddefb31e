"""Beyond one machine: submitit sweeps, the SLURM preset, Optuna search on a validation split."""

import pytest
from hydra import compose, initialize

from archbench.app import main
from conftest import all_runs, compose_job, run_py, store


def sweep_runs(tmp_path):
    runs = all_runs(tmp_path)
    (parent,) = [r for r in runs if r.data.tags.get("archbench.sweep") == "parent"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == len(runs) - 1
    return parent, children


# submitit_local's sweep is a command of docs/scaling.md ("Slurm clusters"), run by tests/test_readme.py


def slurm_preset(*overrides: str):
    with initialize(version_base="1.3", config_path="../conf"):
        cfg = compose("config", overrides=["hydra/launcher=slurm", *overrides], return_hydra_config=True)
    return cfg.hydra.launcher


def test_slurm_preset_takes_cluster_settings_from_config():
    launcher = slurm_preset("hydra.launcher.partition=gpu", "hydra.launcher.mem_gb=64")
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.partition, launcher.mem_gb, launcher.timeout_min) == ("gpu", 64, 120)
    # what a small CPU partition takes, unless raised
    assert (slurm_preset().cpus_per_task, slurm_preset().mem_gb) == (1, 4)


@pytest.mark.parametrize(
    "overrides, gpus",
    [
        ((), None),  # device=auto: no GPU unless asked for
        (("device=cpu",), None),
        (("device=cuda",), 1),
        (("device=cuda:1",), 2),  # the second GPU: two of them
        (("hydra.launcher.gpus_per_node=1",), 1),  # device=auto takes it
        (("device=cuda", "hydra.launcher.gpus_per_node=4"), 4),
    ],
)
def test_a_slurm_job_asks_for_a_gpu_only_when_the_run_wants_one(overrides, gpus):
    assert slurm_preset(*overrides).gpus_per_node == gpus


def test_validation_split_is_what_a_run_returns(tmp_path):
    accuracy = main(compose_job(tmp_path, "train.val_fraction=0.2", "train.epochs=2"))
    (run,) = all_runs(tmp_path)
    assert accuracy == run.data.metrics["val_accuracy"] != run.data.metrics["test_accuracy"]
    history = store(tmp_path).get_metric_history(run.info.run_id, "val_accuracy")
    assert [m.step for m in history] == [1, 2]
    assert main(compose_job(tmp_path / "b")) == all_runs(tmp_path / "b")[0].data.metrics["test_accuracy"]


@pytest.mark.slow
def test_optuna_search_records_trials_and_the_best(tmp_path):
    result = run_py(tmp_path, "+search=lr_batch", "hydra.sweeper.n_trials=3")
    assert result.returncode == 0, result.stderr
    parent, children = sweep_runs(tmp_path)
    assert len(children) == 3 and parent.info.run_name == "sweep-lr_batch"
    assert all(r.data.params["train.val_fraction"] == "0.1" for r in children)
    top = max(r.data.metrics["val_accuracy"] for r in children)
    assert parent.data.metrics["best_value"] == top
    best = {(float(r.data.params["optimizer.lr"]), r.data.params["train.batch_size"])
            for r in children if r.data.metrics["val_accuracy"] == top}  # fmt: skip
    assert (
        float(parent.data.params["best.optimizer.lr"]),
        parent.data.params["best.train.batch_size"],
    ) in best
