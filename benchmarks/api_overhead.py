"""What the Python API (archbench.run/sweep, as a notebook calls them) costs against `run.py`, in one
run, side by side: the same single runs and the same sweep, each into a store of its own.

    python benchmarks/api_overhead.py                          # Fashion-MNIST, 1 epoch, 3 runs
    python benchmarks/api_overhead.py --data synthetic --runs 2

The CLI's times are each command's wall time (a new Python, torch and Hydra every time). The API's
are each call's wall time in one process, as a notebook's kernel makes them: the first call pays the
imports, the later ones do not.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from table import publish  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

API = """
import json, sys, time
start = time.perf_counter()
import archbench
common, runs = json.loads(sys.argv[1]), int(sys.argv[2])
times = []
for seed in range(runs):
    archbench.run(*common, f"seed={seed}")
    times.append(time.perf_counter() - start)
    start = time.perf_counter()
archbench.sweep("activation=relu,tanh", "seeds=2", *common)
times.append(time.perf_counter() - start)
print(json.dumps(times))
"""


def overrides(tmp: Path, args) -> list[str]:
    return [
        f"dataset={args.data}", "train.epochs=1", "train.progress=false", "tracking.log_model=false",
        f"tracking.uri=sqlite:///{tmp}/mlruns/mlflow.db", f"data_dir={ROOT / 'data'}",
        f"hydra.run.dir={tmp}/runs/${{now:%H-%M-%S-%f}}",
        f"hydra.sweep.dir={tmp}/sweeps/${{now:%H-%M-%S-%f}}",
        *([f"dataset.train_size={args.train_size}"] if args.data == "synthetic" else []),
    ]  # fmt: skip


def cli(tmp: Path, args) -> list[float]:
    times = []
    for command in [[f"seed={s}"] for s in range(args.runs)] + [["-m", "activation=relu,tanh", "seeds=2"]]:
        start = time.perf_counter()
        subprocess.run([sys.executable, "run.py", *overrides(tmp, args), *command], cwd=ROOT, check=True,
                       capture_output=True)  # fmt: skip
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="fashion_mnist")
    parser.add_argument("--train-size", type=int, default=2000, help="synthetic data's training images")
    parser.add_argument("--runs", type=int, default=3, help="single runs each way")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench" / "api_overhead.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        shell = cli(Path(a), args)
        command = [sys.executable, "-c", API, json.dumps(overrides(Path(b), args)), str(args.runs)]
        found = subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True)
        api = json.loads(found.stdout.strip().splitlines()[-1])
    later = statistics.median(api[1 : args.runs]) if args.runs > 1 else float("nan")
    rows = [
        ("first single run (the API's imports included)", shell[0], api[0]),
        (f"a later single run (median of {args.runs - 1})", statistics.median(shell[1 : args.runs]), later),
        ("a sweep: -m activation=relu,tanh seeds=2", shell[-1], api[-1]),
    ]
    lines = [
        f"API against run.py, {args.data}, 1 epoch (wall seconds, one run of this benchmark)",
        "",
        "| what | run.py | archbench API | API / run.py |",
        "|---|---|---|---|",
        *(f"| {what} | {c:.2f} | {p:.2f} | {p / c:.2f}x |" for what, c, p in rows),
    ]
    publish(lines, args.out)


if __name__ == "__main__":
    main()
