"""Parallel sweeps give the same numbers as the basic launcher. That 15 jobs four at a time into a
fresh store lose nothing is the README's own "Parallel sweeps" command (tests/test_readme.py)."""

import pytest

from conftest import all_runs, run_py

pytestmark = pytest.mark.slow


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
