"""Parallel sweeps lose nothing, and give the same numbers as the basic launcher."""

import pytest

from conftest import all_runs, run_py, store

pytestmark = pytest.mark.slow

METRICS = {
    "train_loss",
    "train_accuracy",
    "test_accuracy",
    "test_loss",
    "epoch_time_s",
    "train_time_s",
    "params_total",
    "params_trainable",
}


def test_twelve_jobs_four_at_a_time_into_a_fresh_store(tmp_path):
    assert not (tmp_path / "mlruns").exists()
    result = run_py(
        tmp_path,
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=4",
        "tracking.experiment=par12",
        "activation=relu,tanh,sigmoid,gelu",
        "optimizer=sgd,adam,rmsprop",
        "dataset.train_size=500",
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    par12 = store(tmp_path).get_experiment_by_name("par12").experiment_id
    assert {r.info.experiment_id for r in all_runs(tmp_path)} == {par12}
    jobs = [r for r in all_runs(tmp_path) if r.data.tags.get("archbench.sweep") != "parent"]
    assert len(jobs) == 12 and {r.info.status for r in jobs} == {"FINISHED"}
    assert len({(r.data.tags["activation"], r.data.tags["optimizer"]) for r in jobs}) == 12
    assert all(set(r.data.metrics) >= METRICS for r in jobs)
    assert {r.data.params["train.threads"] for r in jobs} == {"1"}  # jobs x threads <= cores


def numbers(tmp_path):
    jobs = [r for r in all_runs(tmp_path) if r.data.tags.get("archbench.sweep") != "parent"]
    return {r.info.run_name: (r.data.metrics["test_loss"], r.data.metrics["train_loss"]) for r in jobs}


def test_basic_and_joblib_launchers_agree_to_the_bit(tmp_path):
    args = ["-m", "activation=relu,tanh", "model=cnn3", "dataset.train_size=400", "train.threads=1"]
    basic = run_py(tmp_path / "basic", *args)
    joblib = run_py(tmp_path / "joblib", *args, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    assert basic.returncode == 0 and joblib.returncode == 0, basic.stderr + joblib.stderr
    assert numbers(tmp_path / "basic") == numbers(tmp_path / "joblib")
    assert len(numbers(tmp_path / "basic")) == 2
