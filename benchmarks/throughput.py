"""Sweep throughput, in one run: the activations preset (`python run.py +experiment=activations`)
under archbench's default launcher (jobs side by side, 1 thread each: conf/hydra/launcher/
parallel.yaml) and under the old policy (`hydra/launcher=basic`: one job at a time, all cores),
each alone, beside a second sweep of the same policy started at the same moment, and beside a
foreign CPU-bound process (a Python busy loop).

    python benchmarks/throughput.py                   # Fashion-MNIST, 1 epoch, 5 seeds: 15 jobs a sweep
    python benchmarks/throughput.py --epochs 5        # the preset as it is
    python benchmarks/throughput.py --data synthetic --train-size 300 --seeds 2   # a smoke run

Runs per minute count every job of every sweep in the scenario over its wall time, start-up
included. A job's slowdown is its train_time_s (MLflow) over the median of the same policy's jobs
alone, so start-up is left out of it; the worst job is shown. Ratios, measured side by side.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow

sys.path.insert(0, str(Path(__file__).resolve().parent))
from table import publish  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
POLICIES = {  # what a user types for each: nothing, or the old one-at-a-time launcher
    "default (side by side, 1 thread each)": [],
    "old (one at a time, all cores)": ["hydra/launcher=basic"],
}
BUSY = "while True: pass"


def start(args, folder: Path, launcher: list[str]) -> subprocess.Popen:
    overrides = [
        "+experiment=activations", f"seeds={args.seeds}", f"dataset={args.data}",
        f"train.epochs={args.epochs}", "train.progress=false", "tracking.log_model=false",
        *([f"dataset.train_size={args.train_size}"] if args.data == "synthetic" else []),
        f"tracking.uri=sqlite:///{folder}/mlflow.db", f"hydra.sweep.dir={folder}/sweep", *launcher,
    ]  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "run.py", *overrides], cwd=ROOT, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def train_times(folder: Path) -> list[float]:
    client = mlflow.MlflowClient(f"sqlite:///{folder}/mlflow.db")
    found = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000)
    return [r.data.metrics["train_time_s"] for r in found if "train_time_s" in r.data.metrics]


def scenario(args, tmp: Path, tag: str, launcher: list[str], sweeps: int, foreign: bool):
    """Runs per minute of `sweeps` sweeps started together, and every job's train_time_s."""
    folders = [tmp / f"{tag}-{sweeps}sweeps-{'busy' if foreign else 'quiet'}-{i}" for i in range(sweeps)]
    busy = subprocess.Popen([sys.executable, "-c", BUSY]) if foreign else None
    try:
        tic = time.monotonic()
        started = [start(args, f, launcher) for f in folders]
        for process in started:
            _, err = process.communicate()
            assert process.returncode == 0, err[-3000:]
        wall = time.monotonic() - tic
    finally:
        if busy:
            busy.kill()
            busy.wait()
    times = [t for f in folders for t in train_times(f)]
    assert len(times) == sweeps * 3 * args.seeds, f"{len(times)} jobs recorded"
    return 60 * len(times) / wall, times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="fashion_mnist")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--train-size", type=int, default=2000, help="synthetic data: training samples")
    parser.add_argument(
        "--alone-only", action="store_true", help="without the neighbours (a smoke run: 2 sweeps, not 8)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench" / "throughput.md")
    args = parser.parse_args()
    rows = [
        f"The activations preset, {args.seeds} seeds, {args.epochs} epoch(s) of {args.data}: runs per "
        f"minute (wall, start-up included), its ratio to the old policy alone, and the worst job's "
        f"train_time_s against the same policy's jobs alone; {os.cpu_count()} CPUs",
        "",
        "| policy | alone: runs/min | beside a second sweep: runs/min (both), worst job | beside a busy "
        "process: runs/min, worst job |",
        "|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        measured = {}
        for tag, (name, launcher) in enumerate(POLICIES.items()):
            alone, alone_times = scenario(args, Path(tmp), f"p{tag}", launcher, 1, False)
            base, cells = statistics.median(alone_times), [alone]
            for sweeps, foreign in () if args.alone_only else ((2, False), (1, True)):
                rate, times = scenario(args, Path(tmp), f"p{tag}", launcher, sweeps, foreign)
                cells.append((rate, max(times) / base))
            measured[name] = cells
        old = measured["old (one at a time, all cores)"][0]
        for name, (alone, *beside) in measured.items():
            shown = [f"{rate:.1f} ({rate / old:.2f}x), {worst:.1f}x" for rate, worst in beside] or ["-", "-"]
            rows.append(f"| {name} | {alone:.1f} ({alone / old:.2f}x) | {' | '.join(shown)} |")
    publish(rows, args.out)


if __name__ == "__main__":
    main()
