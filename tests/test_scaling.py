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


# submitit_local's sweep is the README's own command under "Scaling out" (tests/test_readme.py)


def test_slurm_preset_takes_cluster_settings_from_config():
    with initialize(version_base="1.3", config_path="../conf"):
        cfg = compose(
            "config",
            overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.mem_gb=64"],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.partition, launcher.mem_gb, launcher.gpus_per_node) == ("gpu", 64, 1)
    assert launcher.timeout_min == 120 and launcher.cpus_per_task == 8


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
