"""The layers as a test (issue 35): import-linter's contracts in pyproject.toml hold on the code, and
break on a copy of it with one import that runs back up."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path, src: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(src)}  # this tree's archbench before the installed one
    command = [str(LINT_IMPORTS), "--no-cache"]
    return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=120)


def test_the_layers_hold():
    done = lint_imports(ROOT, ROOT / "src")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Contracts: 2 kept, 0 broken." in done.stdout


def copy_with(tmp_path: Path, module: str, line: str) -> Path:
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(ROOT / "src", tmp_path / "src", ignore=skip)
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    path = tmp_path / "src" / Path(*module.split(".")).with_suffix(".py")
    path.write_text(path.read_text() + f"\n{line}  # noqa\n")
    return tmp_path


BREAKS = [
    # the store reaching up into the sweep's orchestration, as tracking/sweep.py once did
    ("archbench.tracking.runs", "from archbench.sweeps import callback", "Layers only point down BROKEN",
     "archbench.tracking.runs -> archbench.sweeps.callback"),
    # an import no layer forbids (mlflow is outside the package), but the forbidden contract does
    ("archbench.comparing.table", "import mlflow", "Layers only point down KEPT",
     "archbench.comparing is not allowed to import mlflow"),
]  # fmt: skip


@pytest.mark.parametrize("module, line, layers, why", BREAKS, ids=["upward", "mlflow"])
def test_an_import_out_of_place_breaks_a_contract(tmp_path, module, line, layers, why):
    root = copy_with(tmp_path, module, line)
    done = lint_imports(root, root / "src")
    assert done.returncode == 1, done.stdout
    assert layers in done.stdout
    assert why in done.stdout
