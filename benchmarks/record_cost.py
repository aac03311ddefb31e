"""What a run's MLflow record costs beyond training: each piece timed, over several runs in one process.

    python benchmarks/record_cost.py                        # mlp on Fashion-MNIST, 5 epochs, 6 runs
    python benchmarks/record_cost.py --data synthetic --runs 3 --model cnn3

The runs are ordinary archbench jobs (app.main, a fresh SQLite store); the pieces archbench adds
at a run's end are wrapped with timers: the logged model (torch.export to MLflow's pt2 format, its
input example checked by MLflow), the confusion matrix (CSV and PNG), the test set's predictions,
the mult-adds count, and the dataset records. The first run of a process pays one-time imports
(torch.export, matplotlib); a sweep's later jobs pay the median.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from archbench import app, evaluation  # noqa: E402
from archbench.tracking import logged_model, records  # noqa: E402
from archbench.train import Trainer  # noqa: E402

CONF = Path(__file__).resolve().parents[1] / "conf"
PIECES = {  # (owner, attribute): what the table calls it
    (logged_model, "log_model"): "logged model (pt2)",
    (evaluation, "plot"): "confusion matrix PNG",
    (Trainer, "predict"): "test-set predictions",
    (app, "mult_adds"): "mult-adds (torchinfo)",
    (records, "log_datasets"): "dataset records",
    (records, "log_outcome"): "all at the run's end",
}


def timed(spent: dict, name: str, function):
    """`function`, recording (wall, CPU) seconds per call: CPU time moves less on a busy machine."""

    def wrapper(*args, **kwargs):
        tic, cpu = time.perf_counter(), time.process_time()
        try:
            return function(*args, **kwargs)
        finally:
            spent[name].append((time.perf_counter() - tic, time.process_time() - cpu))

    return wrapper


def job(overrides: list[str]):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="fashion_mnist")
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--out", type=Path, help="also write the table here")
    parser.add_argument("--train-size", type=int, help="synthetic data: training samples")
    args = parser.parse_args()
    spent: dict[str, list[float]] = defaultdict(list)
    for (owner, attribute), name in PIECES.items():
        setattr(owner, attribute, timed(spent, name, getattr(owner, attribute)))
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.runs):
            cfg = job(
                [f"dataset={args.data}", f"model={args.model}", f"train.epochs={args.epochs}", f"seed={seed}",
                 "train.progress=false", f"tracking.uri=sqlite:///{tmp}/mlruns/mlflow.db"]
                + ([f"dataset.train_size={args.train_size}"] if args.train_size else [])
            )  # fmt: skip
            timed(spent, "whole run", app.main)(cfg)
    lines = [
        f"{args.model} on {args.data}, {args.epochs} epochs, {args.runs} runs in one process; seconds, "
        f"wall (CPU of all threads); load average {os.getloadavg()[0]:.1f}",
        "",
        "| piece | first run | median of the later runs |",
        "|---|---|---|",
    ]
    for name, times in spent.items():
        first = f"{times[0][0]:.3f} ({times[0][1]:.3f})"
        later = [statistics.median(t[k] for t in times[1:]) for k in (0, 1)] if len(times) > 1 else None
        lines.append(f"| {name} | {first} | {f'{later[0]:.3f} ({later[1]:.3f})' if later else '-'} |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        args.out.write_text(table)


if __name__ == "__main__":
    main()
