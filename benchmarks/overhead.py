"""Where archbench's seconds go besides training (issue 34): wall time against training time per core
for one run, the activations preset at 1 and at 5 epochs, a tuned comparison and a report, optionally
beside an earlier revision of archbench (--against); then one run against a plain PyTorch script that
does the same job, its imports and its profile. Everything side by side in one run.

    python benchmarks/overhead.py                       # Fashion-MNIST, 3 repeats of the single run
    python benchmarks/overhead.py --against 9178011     # the same, beside that revision (git worktree)
    python benchmarks/overhead.py --data synthetic --repeats 1 --sweeps one

The plain script decodes the data, trains the same mlp for the epoch and tests it, with no record.
archbench's wall time is the command's; its training time is the run's train_time_s. Then
`python -X importtime` (the heaviest imports, cumulative) and a cProfile of one run (the calls that
take the most time, cumulative), each in a fresh process with a store of its own.

Last, the floors: how long a bare Python process takes to do only what each command cannot skip
(import torch and take one torch.optim step, which imports torch._dynamo; open the MLflow store;
import what a comparison computes with), against what issue 34's targets leave for everything
besides training. A target below its floor cannot be met by archbench on this machine.
"""

import argparse
import cProfile  # noqa: F401  (run as python -m cProfile)
import os
import pstats
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from table import publish  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HEAVY = {"torch", "torch._dynamo", "mlflow", "matplotlib.pyplot", "scipy", "pandas"}

PLAIN = """
import gzip, sys, time
import numpy as np, torch
from torch import nn
torch.set_num_threads(1)
torch.manual_seed(0)
data = sys.argv[1]
if data == "synthetic":
    x, y = torch.randn(12000, 1, 28, 28), torch.randint(0, 10, (12000,))
    xt, yt = torch.randn(2000, 1, 28, 28), torch.randint(0, 10, (2000,))
else:
    def idx(name, offset):
        with gzip.open(f"{data}/{name}.gz") as f:
            return np.frombuffer(f.read(), np.uint8, offset=offset)
    x = torch.tensor(idx("train-images-idx3-ubyte", 16).reshape(-1, 1, 28, 28)) / 255.0
    y = torch.tensor(idx("train-labels-idx1-ubyte", 8)).long()
    xt = torch.tensor(idx("t10k-images-idx3-ubyte", 16).reshape(-1, 1, 28, 28)) / 255.0
    yt = torch.tensor(idx("t10k-labels-idx1-ubyte", 8)).long()
model = nn.Sequential(nn.Flatten(), nn.Linear(784, 100), nn.ReLU(), nn.Linear(100, 10))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
tic = time.perf_counter()
for i in torch.randperm(len(x)).split(100):
    opt.zero_grad()
    nn.functional.cross_entropy(model(x[i]), y[i]).backward()
    opt.step()
train = time.perf_counter() - tic
with torch.no_grad():
    print(train, (model(xt).argmax(1) == yt).float().mean().item())
"""


# What each command cannot skip, as bare scripts (argv[1]: a copy of an archbench store). A run
# imports torch and steps a torch.optim optimizer, whose step() and zero_grad() import torch._dynamo
# (torch/optim/optimizer.py); it records to MLflow. A sweep's own process composes with Hydra and
# reads the store; a report reads the store and computes with scipy.stats, statsmodels and pandas.
OPEN_STORE = (
    "import mlflow; mlflow.MlflowClient('sqlite:///' + sys.argv[1]).search_experiments(max_results=1)"
)
FLOORS = {
    "run": (
        "a run: import torch, one torch.optim step, open the MLflow store",
        "import sys, torch; p = torch.nn.Parameter(torch.zeros(1)); p.grad = torch.ones(1); "
        f"torch.optim.SGD([p], lr=0.1).step(); {OPEN_STORE}",
    ),
    "parent": (
        "a sweep's own process: import Hydra, open the MLflow store",
        f"import sys, hydra; {OPEN_STORE}",
    ),
    "report": (
        "a report: open the MLflow store, import scipy.stats, statsmodels, pandas",
        f"import sys; {OPEN_STORE}; import pandas, scipy.stats, statsmodels.stats.power",
    ),
}
# issue 34's targets as (floor's parts, what they leave besides training: a function of the
# scenario's training per core)
TARGETS = {
    "one": (("run",), lambda train: 3.0),
    "activations1": (("parent", "run"), lambda train: (2.0 - 1) * train),
    "activations5": (("parent", "run"), lambda train: (1.3 - 1) * train),
    "report": (("report",), lambda train: 2.0),
}


# A notebook's first cell: the comparison of an experiment, shown (its repr is the table)
API_COMPARE = (
    "import sys, archbench; print(repr(archbench.compare(experiment='archbench', tracking_uri=sys.argv[1])))"
)

# What a user runs, shrunk by nothing but the scenario's own overrides: (name, arguments after python).
SCENARIOS = {
    "one": ("one run, 1 epoch, 1 thread", ["run.py", "train.epochs=1", "train.threads=1"]),
    "activations1": (
        "activations preset, 1 epoch (15 jobs)",
        ["run.py", "+experiment=activations", "train.epochs=1"],
    ),
    "activations5": ("activations preset, 5 epochs (15 jobs)", ["run.py", "+experiment=activations"]),
    "tuned": (
        "tuned: relu vs sigmoid, tune=lr, 2 seeds, 1 epoch",
        ["run.py", "-m", "activation=relu,sigmoid", "tune=lr", "seeds=2", "train.epochs=1"],
    ),
    "report": ("report: --experiment of the 1-epoch preset's 15 runs", ["-m", "archbench.report"]),
    "stored": ("the same report again, the store unchanged", ["-m", "archbench.report"]),
    "latest": ("`make compare` right after the 1-epoch preset: its latest sweep", ["-m", "archbench.report"]),
    "api": ("archbench.compare(experiment=...) of those 15 runs, a new process", ["-c", API_COMPARE]),
    "api-stored": ("the same archbench.compare() again, the store unchanged", ["-c", API_COMPARE]),
}
REPORTS = ("report", "stored", "latest", "api", "api-stored")
ASKED_BEFORE = ("stored", "api-stored")


def scenario(
    tree: Path, key: str, data: str, folder: Path, store: Path, prefix=()
) -> tuple[float, float | None, str]:
    """(wall s, training s per core, stderr) of one scenario run in `tree` on the store `store`;
    `prefix`: Python's own options before it (-X importtime, -m cProfile -o FILE)."""
    name, args = SCENARIOS[key]
    uri = f"sqlite:///{store}"
    if key in REPORTS and not (tree / "src/archbench/report.py").exists():
        args = ["-m", "archbench.compare.report"]  # its name before issue 35's layers
    if key.startswith("api"):
        args = [*args, uri]
    elif key == "latest":  # where the sweep before it wrote its comparison (compare.out)
        args = [*args, "--tracking-uri", uri, "--out", str(folder / "comparison")]
    elif key in REPORTS:
        args = [*args, "--tracking-uri", uri, "--experiment", "archbench", "--out", str(folder / "report")]
    else:
        args = [*args, "train.progress=false", f"tracking.uri={uri}", f"data_dir={ROOT / 'data'}",
                f"hydra.run.dir={folder}/run", f"hydra.sweep.dir={folder}/sweep",
                f"++compare.out={folder}/comparison",  # ++: a revision before the key ignores it
                *(["dataset=synthetic"] * (data == "synthetic"))]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}  # the tree's archbench, not the installed one
    tic = time.perf_counter()
    done = subprocess.run(
        [sys.executable, *prefix, *args], cwd=tree, env=env, check=True, capture_output=True, text=True
    )
    wall = time.perf_counter() - tic
    if key in REPORTS:
        return wall, None, done.stderr
    with sqlite3.connect(store) as db:
        (train,) = db.execute("select sum(value) from latest_metrics where key = 'train_time_s'").fetchone()
        (jobs,) = db.execute("select count(*) from latest_metrics where key = 'train_time_s'").fetchone()
    cores = 1 if key == "one" else min(len(os.sched_getaffinity(0)), jobs)  # a sweep's jobs: 1 thread each
    return wall, train / cores, done.stderr


def archbench_run(data: str, folder: Path, prefix=()) -> tuple[float, float, str]:
    """(wall s, train_time_s, stderr) of `python run.py train.epochs=1 train.threads=1` in this tree."""
    return scenario(ROOT, "one", data, folder, folder / "mlflow.db", prefix)


def floors(store: Path, repeats: int, measured: dict[str, float | None]) -> list[str]:
    """The floors' table: each bare script's wall time (median of `repeats`, a fresh process and a
    fresh copy of `store` each), against what each measured scenario's target leaves besides training.
    A sweep's floor is its own process's, then a worker's: its workers import side by side, one a core."""
    took = {}
    for key, (_, code) in FLOORS.items():
        walls = []
        for r in range(repeats):
            copy = store.with_name(f"floor-{key}-{r}.db")
            copy.write_bytes(store.read_bytes())
            tic = time.perf_counter()
            # os._exit: without the interpreter's teardown (1.3 s after torch and MLflow), as run.py ends
            done = f"{code}; import os; os._exit(0)"
            subprocess.run([sys.executable, "-c", done, str(copy)], check=True, capture_output=True)
            walls.append(time.perf_counter() - tic)
        took[key] = statistics.median(walls)
    lines = [f"**What cannot be cut: a bare process doing only that, median of {repeats}**", "",
             "| bare process | wall (s) |", "|---|---|"]  # fmt: skip
    lines += [f"| {FLOORS[key][0]} | {took[key]:.2f} |" for key in FLOORS]
    lines += ["", "**The targets against their floors (besides training, s)**", "",
              "| scenario | target leaves | floor | within |", "|---|---|---|---|"]  # fmt: skip
    for key, train in measured.items():
        parts, allowed = TARGETS[key]
        floor = sum(took[p] for p in parts)
        budget = allowed(train)
        within = "yes" if floor <= budget else "no"
        lines.append(f"| {SCENARIOS[key][0]} | {budget:.2f} | {floor:.2f} | {within} |")
    return [*lines, ""]


def sweeps(
    keys: list[str], against: str | None, data: str, tmp: Path, measured: dict | None = None
) -> list[str]:
    """The scenarios' table: each in this tree and, with --against, in that revision, one after the other.
    `measured` gets this tree's training per core of each scenario that has a target (TARGETS)."""
    trees = {"now": ROOT}
    if against:
        before = tmp / "before"
        subprocess.run(
            ["git", "worktree", "add", "--detach", "-q", str(before), against], cwd=ROOT, check=True
        )
        trees[f"before ({against})"] = before
    lines = [
        f"**Wall time against training time per core ({data}, {len(os.sched_getaffinity(0))} cores)**",
        "",
        "| scenario | archbench | wall (s) | training per core (s) | wall / training | besides (s) |",
        "|---|---|---|---|---|---|",
    ]
    try:
        # a warm-up: the decoded-data cache, the store template, the OS's caches
        for label, tree in trees.items():
            scenario(tree, "one", data, tmp / f"warm-{len(label)}", tmp / f"warm-{len(label)}.db")
        for key in keys:
            for i, (label, tree) in enumerate(trees.items()):
                store = tmp / f"{'activations1' if key in REPORTS else key}-{i}.db"
                if key == "latest":  # a sweep of its own, just before: nothing else has read its store
                    store = tmp / f"latest-{i}.db"
                    scenario(tree, "activations1", data, tmp / f"latest-{i}", store)
                elif key in REPORTS and not store.exists():  # the report reads the 1-epoch preset's runs
                    scenario(tree, "activations1", data, tmp / f"for-report-{i}", store)
                if key in ASKED_BEFORE:  # asked once before, on the same store and folder
                    scenario(tree, key, data, tmp / f"{key}-{i}", store)
                wall, train, _ = scenario(tree, key, data, tmp / f"{key}-{i}", store)
                cells = (
                    ["—", "—", "—"]
                    if train is None
                    else [f"{train:.2f}", f"{wall / train:.2f}x", f"{wall - train:.2f}"]
                )
                lines.append(f"| {SCENARIOS[key][0]} | {label} | {wall:.2f} | {' | '.join(cells)} |")
                if measured is not None and tree == ROOT and key in TARGETS:
                    measured[key] = train
                print(lines[-1], file=sys.stderr, flush=True)  # as it goes: the whole table takes minutes
    finally:
        if against:
            subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=ROOT, check=False)
    return [*lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="fashion_mnist", choices=["fashion_mnist", "synthetic"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--top", type=int, default=8)
    parser.add_argument(
        "--sweeps",
        nargs="*",
        default=list(SCENARIOS),
        choices=list(SCENARIOS),
        help="the scenarios of the first table (none: only the single run's tables)",
    )
    parser.add_argument("--against", help="a git revision to measure beside this tree (in a git worktree)")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench" / "overhead.md")
    args = parser.parse_args()
    source = "synthetic" if args.data == "synthetic" else "/usr/share/datasets/fashion-mnist"
    rows = {"plain": [], "archbench": []}
    measured = {}
    with tempfile.TemporaryDirectory() as tmp:
        first = sweeps(args.sweeps, args.against, args.data, Path(tmp), measured) if args.sweeps else []
        archbench_run(args.data, Path(tmp) / "warm")  # the decoded-data cache and the store template
        for r in range(args.repeats):  # interleaved: a load that comes and goes hits both alike
            tic = time.perf_counter()
            out = subprocess.run(
                [sys.executable, "-c", PLAIN, source], check=True, capture_output=True, text=True
            )
            rows["plain"].append((time.perf_counter() - tic, float(out.stdout.split()[0])))
            rows["archbench"].append(archbench_run(args.data, Path(tmp) / f"r{r}")[:2])
        imports = archbench_run(args.data, Path(tmp) / "imports", ["-X", "importtime"])[2]
        profile = Path(tmp) / "run.prof"
        archbench_run(args.data, Path(tmp) / "prof", ["-m", "cProfile", "-o", str(profile)])
        stats = pstats.Stats(str(profile))
        measured = {"one": statistics.median(t for _, t in rows["archbench"]), **measured}
        last = floors(Path(tmp) / "warm" / "mlflow.db", args.repeats, measured)
    wall = {k: statistics.median(w for w, _ in v) for k, v in rows.items()}
    train = {k: statistics.median(t for _, t in v) for k, v in rows.items()}
    lines = [
        *first,
        f"**One 1-epoch mlp run ({args.data}), median of {args.repeats}, 1 thread**",
        "",
        "| | wall (s) | training (s) | wall / training | wall vs plain |",
        "|---|---|---|---|---|",
    ]
    for name in rows:
        ratio = wall[name] / wall["plain"]
        per = wall[name] / train[name]
        lines.append(f"| {name} | {wall[name]:.2f} | {train[name]:.2f} | {per:.1f}x | {ratio:.2f}x |")
    found = []
    for line in imports.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \| ( *)(\S+)", line)
        # imported at the top level or inside a function: what each costs in all; and the heavy
        # packages wherever they are first imported (torch inside archbench.app), so they are named
        if m and (not m.group(2) or m.group(3) in HEAVY):
            found.append((int(m.group(1)), m.group(3)))
    lines += ["", "**Heaviest imports of that run, cumulative (python -X importtime)**", "",
              "| module | s |", "|---|---|"]  # fmt: skip
    lines += [f"| {name} | {us / 1e6:.2f} |" for us, name in sorted(found, reverse=True)[: args.top]]
    lines += ["", "**One run under cProfile: the calls that take the most time, cumulative**", "",
              "| call | s |", "|---|---|"]  # fmt: skip
    entries = sorted(stats.stats.items(), key=lambda kv: kv[1][3], reverse=True)
    shown = [
        (f"{Path(f).name}:{n}({fn})", v[3])
        for (f, n, fn), v in entries
        if "archbench" in f or "torch/optim" in f
    ]
    lines += [f"| {call} | {s:.2f} |" for call, s in shown[: args.top]]
    publish([*lines, "", *last], args.out)


if __name__ == "__main__":
    main()
