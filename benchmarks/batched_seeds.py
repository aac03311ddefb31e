"""Seeds trained together (archbench/batched.py) against the same seeds one after another, side by
side in one process: an epoch's training time per seed, per network kind, at K seeds together.

    python benchmarks/batched_seeds.py                          # Fashion-MNIST, mlp and cnn1, K = 5, 10
    python benchmarks/batched_seeds.py --models mlp --seeds 5 --threads 1 2
    python benchmarks/batched_seeds.py --data synthetic --train-size 6000

Both train archbench's network (run.py's model=...) with SGD lr 0.1, batch 100, on the same data,
with the same thread count and glibc's freed memory kept (as a job has it). "alone" is archbench's
Trainer, seed after seed; "together" is batched.TogetherTrainer over the K seeds at once. What
sweeps/together.py's train.together=auto chooses follows these figures (docs/speed.md).
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from table import publish  # noqa: E402

from archbench import cpus  # noqa: E402
from archbench.batched import Stack, TogetherTrainer  # noqa: E402
from archbench.splits import Splits  # noqa: E402
from archbench.train import Trainer, keep_freed_memory, place  # noqa: E402

CONF = Path(__file__).resolve().parents[1] / "conf"
ROOT = Path(__file__).resolve().parents[1]


def config(model: str, data: str, train_size: int):
    overrides = [f"model={model}"]
    if data == "synthetic":
        overrides += ["dataset=synthetic", f"dataset.train_size={train_size}"]
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", overrides=overrides)


def splits(cfg) -> Splits:
    from archbench.splits import for_job

    return for_job(instantiate(cfg.dataset), ROOT / cfg.data_dir, torch.device("cpu"), 0.0, 0)


def network(cfg, seed: int):
    torch.manual_seed(seed)
    return instantiate(cfg.model)


def trainer(model, seed: int) -> Trainer:
    return Trainer(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        criterion=torch.nn.CrossEntropyLoss(),
        batch_size=100,
        generator=torch.Generator().manual_seed(seed),
        progress=False,
    )


def alone(cfg, data: Splits, seeds: list[int]) -> float:
    """Seconds of training an epoch, per seed, one seed after another."""
    spent = 0.0
    for s in seeds:
        t = trainer(place(network(cfg, s), data, cfg.train.channels_last), s)
        tic = time.perf_counter()
        t.train_one_epoch(data.x_train, data.y_train, 1)
        spent += time.perf_counter() - tic
    return spent / len(seeds)


def together(cfg, data: Splits, seeds: list[int]) -> float:
    """Seconds of training an epoch, per seed, all seeds at once."""
    stack = Stack([place(network(cfg, s), data, cfg.train.channels_last) for s in seeds])
    t = TogetherTrainer(trainer(stack, 0), stack, [torch.Generator().manual_seed(s) for s in seeds])
    tic = time.perf_counter()
    t.train_one_epoch(data.x_train, data.y_train, 1)
    return (time.perf_counter() - tic) / len(seeds)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn1"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[5, 10], help="K: seeds together")
    parser.add_argument("--threads", nargs="+", type=int, default=[1], help="a sweep's job has 1")
    parser.add_argument("--repeats", type=int, default=2, help="the median of this many")
    parser.add_argument("--data", default="fashion_mnist", choices=["fashion_mnist", "synthetic"])
    parser.add_argument("--train-size", type=int, default=6000, help="synthetic only")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench" / "batched_seeds.md")
    args = parser.parse_args()
    keep_freed_memory()
    rows = []
    for model in args.models:
        cfg = config(model, args.data, args.train_size)
        data = splits(cfg)
        for threads in args.threads:
            torch.set_num_threads(threads)
            for k in args.seeds:
                seeds = list(range(k))
                one = statistics.median(alone(cfg, data, seeds) for _ in range(args.repeats))
                all_ = statistics.median(together(cfg, data, seeds) for _ in range(args.repeats))
                rows.append(f"| {model} | {threads} | {k} | {one:.3f} | {all_:.3f} | {one / all_:.2f}x |")
                print(rows[-1], file=sys.stderr, flush=True)
    header = [
        f"**An epoch's training per seed: alone vs together ({args.data}, {len(data.x_train)} samples, "
        f"{cpus.usable_cores()} cores)**",
        "",
        "| model | threads | seeds together | alone (s/seed) | together (s/seed) | speed-up |",
        "|---|---|---|---|---|---|",
    ]
    publish(header + rows, args.out)


if __name__ == "__main__":
    main()
