"""Hydra's flags anywhere among the overrides, as people type them; --help, --cfg, completion too."""

import os
import subprocess
import sys

import pytest

from archbench.cli import hydra_argv
from conftest import ROOT, patience


@pytest.mark.parametrize(
    ("typed", "hydra_gets"),
    [
        (["model=cnn3", "-m", "activation=relu,tanh"], ["--multirun", "model=cnn3", "activation=relu,tanh"]),
        (["model=cnn3", "--cfg", "job"], ["--cfg", "job", "model=cnn3"]),
        (["a=1", "-c", "hydra", "--resolve", "b=2"], ["--cfg", "hydra", "--resolve", "a=1", "b=2"]),
        (
            ["a=1", "-cn", "other", "b=2", "-cd", "/x"],
            ["--config-name", "other", "--config-dir", "/x", "a=1", "b=2"],
        ),
        (["a=1", "--cfg", "job", "-p", "model"], ["--cfg", "job", "--package", "model", "a=1"]),
        (["a=1", "--info", "defaults", "b=2"], ["--info", "defaults", "a=1", "b=2"]),
        (["a=1", "--info"], ["--info", "all", "a=1"]),
        (["a=1", "--help"], ["--help", "a=1"]),
        (["a=1", "--hydra-help"], ["--hydra-help", "a=1"]),
        (["-m", "a=1,2"], ["--multirun", "a=1,2"]),
        ([], []),
    ],
)
def test_flags_go_first_values_stay_with_them(typed, hydra_gets):
    assert hydra_argv(typed) == hydra_gets


def test_a_bad_flag_is_hydras_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        hydra_argv(["model=cnn3", "--cfg", "everything"])
    assert exit_.value.code == 2
    assert "argument --cfg/-c: invalid choice: 'everything'" in capsys.readouterr().err


def python(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "run.py", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=patience(120), env=env)


@pytest.mark.parametrize("args", [["--cfg", "job", "model=cnn3"], ["model=cnn3", "--cfg", "job"]])
def test_cfg_job_shows_the_config_either_way(args):
    result = python(*args)
    assert result.returncode == 0, result.stderr
    assert "_target_: archbench.models.CNN" in result.stdout and "epochs: 5" in result.stdout


def test_help_and_hydra_help():
    assert "== Configuration groups ==" in python("--help").stdout
    assert "_target_: archbench.models.CNN" in python("model=cnn3", "--help").stdout
    assert "Hydra (" in python("hydra.job.name=x", "--hydra-help").stdout


def test_config_name_and_dir_anywhere(tmp_path):
    (tmp_path / "mine.yaml").write_text("defaults:\n  - config\n  - _self_\nseed: 7\n")
    result = python("model=cnn3", "-cn", "mine", "--cfg", "job", "-cd", str(tmp_path), "train.epochs=2")
    assert result.returncode == 0, result.stderr
    assert "seed: 7" in result.stdout and "epochs: 2" in result.stdout and "CNN" in result.stdout


def test_info_after_the_overrides():
    result = python("model=cnn3", "--info", "defaults")
    assert result.returncode == 0, result.stderr
    assert "model/cnn3" in result.stdout


@pytest.mark.parametrize(
    ("line", "offers"),
    [
        ("python run.py mod", "model="),
        ("python run.py model=cnn3 -m act", "activation="),  # the card's line, half typed
        ("python run.py model=cnn3 -m activation=", "activation=tanh"),
    ],
)
def test_shell_completion(line, offers):
    result = python("-sc", "query=bash", env={**os.environ, "COMP_LINE": line, "COMP_POINT": str(len(line))})
    assert result.returncode == 0, result.stderr
    assert offers in result.stdout.split()
