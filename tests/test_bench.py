"""The benchmarks run (on small synthetic data); their figures are for the README, not asserted."""

import re
import subprocess
import sys

import pytest

from conftest import ROOT, patience

pytestmark = pytest.mark.slow


def bench(script, tmp_path, *args):
    out = tmp_path / "table.md"
    cmd = [sys.executable, f"benchmarks/{script}", "--data", "synthetic", "--out", str(out), *args]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=patience(300))
    assert result.returncode == 0, result.stderr
    assert out.read_text() in result.stdout
    return out.read_text()


def test_epoch_speed_runs(tmp_path):
    args = ["--train-size", "600", "--repeats", "1", "--models", "mlp", "cnn2", "--profile"]
    table = bench("epoch_speed.py", tmp_path, *args)
    number = r"\d+\.\d+"
    for model in ("mlp", "cnn2"):
        assert re.search(
            rf"\| {model} \| {number} \| {number} \| {number}x \| {number} \| {number} \|", table
        )
    assert "matmul peak" in table
    for model in ("mlp", "cnn2"):  # the step alone, on one fixed batch: its seconds and fraction of the bound
        assert re.search(rf"^\| {model} \|.* \| {number} \| {number} \|$", table, re.M), table
        assert len(re.search(rf"^\| {model} \|.*$", table, re.M).group(0).split("|")) == 12, table
    for model in ("mlp", "cnn2"):  # --profile: the operators that take the step's time, and the whole
        part = table.split(f"Where a {model} step's time goes (6 steps")[1].split("\n\n")[1]
        assert re.search(r"^\| [\w:#.]+ \| \d+% \| \d+\.\d{3} \| \d+ \|$", part, re.M), part
        assert re.search(r"^\| all \| 100% \| \d+\.\d{3} \| \|$", part, re.M), part


def test_accuracy_parity_runs(tmp_path):
    args = ["--train-size", "600", "--epochs", "1", "--seeds", "0", "1", "--configs", "mlp-tanh", "cnn3-relu"]
    table = bench("accuracy_parity.py", tmp_path, *args)
    acc = r"[01]\.\d{4}"
    assert re.search(rf"\| mlp-tanh \| {acc} ± {acc} \({acc}, {acc}\) \| {acc} ± ", table)
    assert "| cnn3-relu |" in table


def test_augment_cost_runs(tmp_path):
    args = ["--train-size", "600", "--repeats", "1", "--models", "mlp", "cnn2"]
    table = bench("augment_cost.py", tmp_path, *args)
    number = r"\d+\.\d+"
    for model in ("mlp", "cnn2"):
        assert re.search(rf"\| {model} \| {number} \| {number} \| {number}x \| {number} \|", table)


def test_record_cost_runs(tmp_path):
    table = bench("record_cost.py", tmp_path, "--runs", "2", "--epochs", "1")
    seconds = r"\d+\.\d+ \(\d+\.\d+\)"  # wall (CPU)
    for piece in ("logged model (pt2)", "confusion matrix PNG", "dataset records", "whole run"):
        assert re.search(rf"\| {re.escape(piece)} \| {seconds} \| {seconds} \|", table), piece


def test_own_cost_runs(tmp_path):
    table = bench("own_cost.py", tmp_path, "--train-size", "300", "--images", "40", "--repeats", "1")
    seconds = r"\d+\.\d+ s"
    for row in ("built directly", "built by archbench from model=lenet"):
        assert re.search(rf"\| [^|]*{row}: wall \(CPU\)[^|]* \| {seconds} \({seconds}\) \|", table), row
    assert re.search(rf"\| once per run: the torch.export trial [^|]* \| {seconds} \|", table)
    assert re.search(rf"\| the same folder, a later run: the cache, median of 1 \| {seconds} \|", table)


def test_neighbours_runs(tmp_path):
    # archbench's policy only (the old one differs by two settings): 4 jobs and a busy loop, not 8
    table = bench("neighbours.py", tmp_path, "--train-size", "300", "--epochs", "1", "--policy", "archbench")
    cell = r"\d+\.\d+ s \(\d+\.\dx\)"
    assert "old (" not in table
    row = rf"\| archbench \(lease, passive wait\) \| \d+\.\d+ s \| {cell}, {cell} \| {cell} \|"
    assert re.search(row, table), table


def test_throughput_runs(tmp_path):
    # alone only: the neighbours' scenarios are the same sweeps started beside others (6 sweeps more)
    table = bench("throughput.py", tmp_path, "--train-size", "300", "--seeds", "1", "--alone-only")
    rate = r"\d+\.\d \(\d+\.\d\dx\)"
    for policy in (r"default \(side by side, 1 thread each\)", r"old \(one at a time, all cores\)"):
        assert re.search(rf"\| {policy} \| {rate} \| - \| - \|", table), table
    assert re.search(r"\| old \(one at a time, all cores\) \| \d+\.\d \(1\.00x\) \|", table)  # the reference


def test_api_overhead_runs(tmp_path):
    table = bench("api_overhead.py", tmp_path, "--train-size", "300", "--runs", "2")
    cell = r"\d+\.\d\d \| \d+\.\d\d \| \d+\.\d\dx"
    for row in ("first single run", "a later single run (median of 1)", "a sweep: -m activation=relu,tanh"):
        assert re.search(rf"\| {re.escape(row)}[^|]* \| {cell} \|", table), table


def test_overhead_runs(tmp_path):
    # the first table's single run only: the presets and the tuned sweep go through the same code, and
    # with them this test took 144 s of the suite
    table = bench("overhead.py", tmp_path, "--repeats", "1", "--sweeps", "one")
    cells = r"\d+\.\d\d \| \d+\.\d\d \| \d+\.\d\dx \| \d+\.\d\d"
    assert re.search(rf"^\| one run, 1 epoch, 1 thread \| now \| {cells} \|$", table, re.M), table
    for row in ("plain", "archbench"):
        cells = r"\d+\.\d\d \| \d+\.\d\d \| \d+\.\dx \| \d+\.\d\dx"
        assert re.search(rf"^\| {row} \| {cells} \|$", table, re.M), table
    assert re.search(r"^\| torch \| \d+\.\d\d \|$", table, re.M), table  # the imports, measured
    assert re.search(r"^\| app\.py:\d+\(run_job\) \| \d+\.\d\d \|$", table, re.M), table  # the profile
    for bare in ("a run: import torch", "a sweep's own process", "a report: open the MLflow store"):
        assert re.search(rf"^\| {re.escape(bare)}[^|]* \| \d+\.\d\d \|$", table, re.M), table  # floors
    target = r"^\| one run, 1 epoch, 1 thread \| 3\.00 \| \d+\.\d\d \| (yes|no) \|$"  # against its floor
    assert re.search(target, table, re.M), table


def test_batched_seeds_runs(tmp_path):
    args = ["--train-size", "600", "--repeats", "1", "--models", "mlp", "cnn1", "--seeds", "2"]
    table = bench("batched_seeds.py", tmp_path, *args)
    number = r"\d+\.\d+"
    for model in ("mlp", "cnn1"):
        assert re.search(rf"\| {model} \| 1 \| 2 \| {number} \| {number} \| {number}x \|", table), table
