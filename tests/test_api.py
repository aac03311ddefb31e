"""The Python API (`import archbench`): run, sweep (and race), compare and inspect, in this process as
a notebook calls them, against `run.py` typed with the same overrides; and the calls of docs/api.md."""

import ast
import re
from pathlib import Path

import pandas as pd
import pytest
import torch

import archbench
from conftest import ROOT, all_runs, run_py, small, store

pytestmark = pytest.mark.slow

SAME = ["configuration", "n", "mean", "sd", "verdict"]  # a comparison's figures: all but its timings


def test_a_run_returns_its_id_metrics_and_a_loadable_model(tmp_path):
    run = archbench.run("model=cnn2", *small(tmp_path), "tracking.log_model=true")
    (recorded,) = all_runs(tmp_path)
    assert (run.id, run.status, run.name) == (recorded.info.run_id, "FINISHED", "cnn2-relu-sgd-s0")
    assert run.metrics["test_accuracy"] == recorded.data.metrics["test_accuracy"]
    assert run.params["model"] == "cnn2"
    scores = run.model(torch.zeros(3, 1, 28, 28))  # raw images in, a score per class out
    assert tuple(scores.shape) == (3, 10)


def test_a_sweep_gives_the_table_run_py_gives_and_compare_reads_it_back(tmp_path, capsys):
    api = archbench.sweep("activation=relu,tanh", "seeds=2", *small(tmp_path / "api"))
    assert re.search(r"jobs ended: 4 jobs", capsys.readouterr().err)  # its bar, as a notebook shows it
    cli = run_py(tmp_path / "cli", "-m", "activation=relu,tanh", "seeds=2")
    assert cli.returncode == 0, cli.stderr[-3000:]
    again = archbench.compare(tracking_uri=f"sqlite:///{tmp_path}/cli/mlruns/mlflow.db")  # the latest sweep
    (parent,) = [r for r in all_runs(tmp_path / "cli") if r.data.tags.get("archbench.sweep") == "parent"]
    assert again.parent_id == parent.info.run_id
    table = api.table.reset_index()
    assert len(table) == 2
    pd.testing.assert_frame_equal(table[SAME], again.table.reset_index()[SAME])
    assert set(table.n) == {2} and table.verdict.str.len().gt(0).all()
    assert sorted(api.runs.seed) == [0, 0, 1, 1] and set(api.runs.status) == {"FINISHED"}
    # the parent run's page and the runs' view, under the parent's id
    assert api.parent_id in api.comparison_link and f"viewStateShareKey={api.parent_id}" in api.ui_link
    shown = api._repr_html_()  # what a notebook shows: the verdicts first
    assert shown.index("<th>verdict</th>") < shown.index("<th>configuration</th>")
    assert all(f"<td>{label}</td>" in shown for label in ("activation=relu", "activation=tanh"))
    assert api.chart("pareto").data[:4] == b"\x89PNG"
    pooled = archbench.compare(
        experiment="archbench", tracking_uri=f"sqlite:///{tmp_path}/api/mlruns/mlflow.db"
    )
    assert (
        pooled.parent_id is None
        and pooled.comparison_link is None
        and "viewStateShareKey=all" in pooled.ui_link
    )
    pd.testing.assert_frame_equal(pooled.table.reset_index()[SAME], table[SAME])  # one sweep: the same table


def test_a_race_from_the_api_records_its_rounds(tmp_path):
    race = archbench.sweep("activation=relu,sigmoid", "seeds=auto", "race.max_seeds=6", *small(tmp_path))
    assert race.comp.race is not None and race.comp.race["rounds"]
    n = race.table.n
    assert n.min() >= race.comp.race["looks"][0] and n.max() <= 6
    stopped = store(tmp_path).get_run(race.parent_id).data.tags["race.stopped"]
    assert stopped == race.comp.race["stopped"]


REFUSED = [
    ("run", "train.epochs=abc"),  # archbench's own one line
    ("run", "model=nope"),  # Hydra's: no such option, and the ones there are
    ("sweep", "model=nope"),
    ("sweep", "compare.margin=2"),  # a sweep's setting: refused before its parent run exists
]


@pytest.mark.parametrize(("call", "override"), REFUSED)
def test_a_refused_override_raises_the_clis_message_and_leaves_no_run(tmp_path, call, override):
    cli = run_py(tmp_path / "cli", *(["-m"] if call == "sweep" else []), override)
    assert cli.returncode == 1, cli.stderr[-2000:]
    # the CLI's words, without Hydra's closing hint about HYDRA_FULL_ERROR
    printed = cli.stderr.split("\nSet the environment variable HYDRA_FULL_ERROR")[0].strip()
    with pytest.raises(archbench.ArchbenchError) as raised:
        getattr(archbench, call)(*small(tmp_path / "api"), override)
    assert str(raised.value) == printed
    assert "Traceback" not in str(raised.value) and "HYDRA_FULL_ERROR" not in str(raised.value)
    if not override.startswith("model="):  # archbench's: one line
        assert len(printed.splitlines()) == 1 and printed.startswith(
            f"error: {override.split('=')[0]} must be"
        )
    assert all_runs(tmp_path / "api") == [] and all_runs(tmp_path / "cli") == []


def test_inspect_prints_what_mode_inspect_prints(tmp_path):
    shown = archbench.inspect("model=dummynet", *small(tmp_path))
    cli = run_py(tmp_path, "model=dummynet", "mode=inspect")
    assert shown.text.strip() and shown.text.strip() in cli.stdout
    assert "2,512" in shown.text and "Conv2d" in shown.text
    assert all_runs(tmp_path) == []


def readme_block() -> str:
    """The Python block of the page "The notebook and the Python API" (docs/api.md)."""
    text = (ROOT / "docs" / "api.md").read_text()
    section = text.split("# The notebook and the Python API", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S)[1]


class Shrink(ast.NodeTransformer):
    """Each `archbench.run/sweep/inspect(...)` call with `overrides` appended, as test_readme.py appends
    them to a command line: the user's own come first, and Hydra lets the last value of a key win."""

    def __init__(self, overrides: list[str]):
        self.overrides = overrides

    def visit_Call(self, node):
        self.generic_visit(node)
        f = node.func
        if (
            isinstance(f, ast.Attribute)
            and f.attr in ("run", "sweep", "inspect")
            and getattr(f.value, "id", "") == "archbench"
        ):
            node.args += [ast.Constant(o) for o in self.overrides]
        return node


def test_the_readmes_python_calls_do_what_it_says(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlruns/mlflow.db")  # compare() reads it
    shrink = [o for o in small(tmp_path) if not o.startswith(("tracking.uri=", "tracking.log_model="))]
    code = ast.fix_missing_locations(Shrink(shrink).visit(ast.parse(readme_block())))
    scope: dict = {}
    exec(compile(code, "docs/api.md", "exec"), scope)
    assert scope["run"].status == "FINISHED" and "test_accuracy" in scope["run"].metrics
    assert isinstance(scope["model"], torch.nn.Module)
    table = scope["comparison"].table
    assert sorted(table.index) == ["activation=relu", "activation=sigmoid", "activation=tanh"]
    assert set(table.n) == {5}
    assert scope["latest"].parent_id == scope["comparison"].parent_id
    assert "2,512" in scope["counts"].text


CELL = """
import torch
from torch import nn


def block(n: int) -> nn.Module:
    return nn.Sequential(nn.Linear(n, n), nn.ReLU())


class Tiny(nn.Module):
    @torch.no_grad()
    def describe(self):
        return "tiny"

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(784, 16), block(16), nn.Linear(16, num_classes))

    def forward(self, x):
        return self.net(x)


class CNN2(Tiny):
    def forward(self, x):
        return self.net(x)
"""


def cell_class(tmp_path, name: str) -> type:
    """A class as a notebook cell defines it: its source only where linecache finds it, by file name."""
    import importlib.util

    path = tmp_path / "cell_1.py"
    path.write_text(CELL)
    spec = importlib.util.spec_from_file_location("__cell__", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)


def test_a_cells_network_is_written_with_its_cell_and_importable(tmp_path, capsys):
    import importlib

    from archbench import cells

    name = archbench.network(cell_class(tmp_path, "Tiny"), num_classes="${dataset.num_classes}")
    assert name == "tiny"
    (written,) = [line for line in capsys.readouterr().out.splitlines() if "written to" in line]
    path = Path(written.split("written to ")[1].split(" for the jobs")[0])
    assert path.parent == cells.FOLDER and "def block(n: int)" in path.read_text()  # what the class uses
    net = importlib.import_module(path.stem).Tiny(num_classes=3)  # as a job imports it
    assert tuple(net(torch.zeros(2, 1, 28, 28)).shape) == (2, 3)
    inspected = archbench.inspect("model=tiny", *small(tmp_path))  # the option, composed by Hydra
    assert f"{16 * 784 + 16 + 16 * 16 + 16 + 16 * 10 + 10:,}" in inspected.text
    with pytest.raises(ValueError, match=r"model=cnn2 is archbench's own network"):
        archbench.network(cell_class(tmp_path, "CNN2"))
    with pytest.raises(archbench.ArchbenchError, match="use archbench.inspect"):
        archbench.run("model=tiny", "mode=inspect", *small(tmp_path))
