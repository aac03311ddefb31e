"""A job beside other work, in one run: `python run.py` alone, beside a second one started at the same
moment, and beside a foreign CPU-bound process, under archbench's thread policy (archbench/cpus.py),
under the same lease with a bounded spin instead of the passive wait (libgomp's GOMP_SPINCOUNT: a
waiting thread spins that many times, then sleeps), and under the old policy (2 threads each,
OpenMP's default spin-waiting).

    python benchmarks/neighbours.py                     # Fashion-MNIST, mlp, 3 epochs
    python benchmarks/neighbours.py --data synthetic --train-size 2000 --epochs 1

Each figure is a run's own train_time_s (MLflow), so start-up is left out; the ratios are to the
same policy's job alone, measured in the same benchmark run.
"""

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import mlflow

sys.path.insert(0, str(Path(__file__).resolve().parent))
from table import publish  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# an empty OMP_WAIT_POLICY is no policy to libgomp: its own default wait, or GOMP_SPINCOUNT's bound
POLICIES = {
    "archbench (lease, passive wait)": {},
    "spin1k (lease, GOMP_SPINCOUNT=1000)": {"OMP_WAIT_POLICY": "", "GOMP_SPINCOUNT": "1000"},
    "spin10k (lease, GOMP_SPINCOUNT=10000)": {"OMP_WAIT_POLICY": "", "GOMP_SPINCOUNT": "10000"},
    "spin100k (lease, GOMP_SPINCOUNT=100000)": {"OMP_WAIT_POLICY": "", "GOMP_SPINCOUNT": "100000"},
    "old (2 threads each, spin-wait)": {"OMP_WAIT_POLICY": ""},  # and train.threads=2: no lease
}
BUSY = "while True: pass"  # a foreign CPU-bound process


def start(args, folder: Path, name: str, env: dict) -> subprocess.Popen:
    overrides = [f"dataset={args.data}", f"train.epochs={args.epochs}", "train.progress=false"]
    if args.data == "synthetic":
        overrides.append(f"dataset.train_size={args.train_size}")
    if name.startswith("old"):
        overrides.append("train.threads=2")
    overrides += [f"tracking.uri=sqlite:///{folder}/mlflow.db", f"hydra.run.dir={folder}/run"]
    return subprocess.Popen(
        [sys.executable, "run.py", *overrides], cwd=ROOT, env={**os.environ, **env},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def train_time(folder: Path) -> float:
    client = mlflow.MlflowClient(f"sqlite:///{folder}/mlflow.db")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return run.data.metrics["train_time_s"]


def together(args, tmp: Path, name: str, env: dict, jobs: int, foreign: bool) -> list[float]:
    tag = list(POLICIES).index(name)  # a folder name Hydra's override grammar takes
    folders = [tmp / f"policy{tag}-{jobs}jobs-{'busy' if foreign else 'quiet'}-{i}" for i in range(jobs)]
    busy = subprocess.Popen([sys.executable, "-c", BUSY]) if foreign else None
    try:
        started = [start(args, f, name, env) for f in folders]
        for process in started:
            _, err = process.communicate()
            assert process.returncode == 0, err[-2000:]
    finally:
        if busy:
            busy.kill()
            busy.wait()
    return [train_time(f) for f in folders]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="fashion_mnist")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-size", type=int, default=2000, help="synthetic data: training samples")
    parser.add_argument(
        "--policy", choices=[n.split()[0] for n in POLICIES], action="append",
        help="only this policy (again for more); default: all",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench" / "neighbours.md")
    args = parser.parse_args()
    rows = [
        f"mlp, {args.epochs} epoch(s) of {args.data}: train_time_s of each job, and its ratio to the same "
        f"policy's job alone; {os.cpu_count()} CPUs",
        "",
        "| policy | alone | beside a second job started with it | beside a busy foreign process |",
        "|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for name, env in POLICIES.items():
            if args.policy and name.split()[0] not in args.policy:
                continue
            (alone,) = together(args, Path(tmp), name, env, 1, False)
            pair = together(args, Path(tmp), name, env, 2, False)
            (beside,) = together(args, Path(tmp), name, env, 1, True)
            two = ", ".join(f"{t:.2f} s ({t / alone:.1f}x)" for t in pair)
            rows.append(f"| {name} | {alone:.2f} s | {two} | {beside:.2f} s ({beside / alone:.1f}x) |")
    publish(rows, args.out)


if __name__ == "__main__":
    main()
