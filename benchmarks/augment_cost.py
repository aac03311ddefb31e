"""What dataset.augment=true costs per epoch: archbench's trainer with and without it, side by side.

    python benchmarks/augment_cost.py                         # Fashion-MNIST, mlp and cnn2
    python benchmarks/augment_cost.py --data synthetic --train-size 2000 --repeats 1

Both trainers train the same model (same init) on the same batches with the run's defaults (fp32,
NHWC for CNNs); epochs alternate between the two, so drifting machine load hits both alike. The last
column times the augmentation alone over one epoch's batches (random crop, padding 2, and flip).
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from epoch_speed import MODELS, build, stage_data
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from table import publish  # noqa: E402

from archbench.augment import RandomCropFlip  # noqa: E402
from archbench.data import IdxSource  # noqa: E402
from archbench.splits import prepare  # noqa: E402
from archbench.train import Trainer, keep_freed_memory, place  # noqa: E402


def epoch_seconds(trainer: Trainer, data) -> float:
    tic = time.perf_counter()
    trainer.train_one_epoch(data.x_train, data.y_train, 1)
    return time.perf_counter() - tic


def augment_seconds(augment: RandomCropFlip, x: torch.Tensor, batch_size: int) -> float:
    """The augmentation alone, over every batch of one epoch."""
    tic = time.perf_counter()
    for start in range(0, len(x), batch_size):
        augment(x[start : start + batch_size])
    return time.perf_counter() - tic


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn2"], choices=MODELS)
    parser.add_argument("--data", choices=["fashion_mnist", "synthetic"], default="fashion_mnist")
    parser.add_argument("--train-size", type=int, default=6000, help="samples, with --data synthetic")
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs of each trainer per model")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--padding", type=int, default=2, help="dataset.crop_padding")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench/augment_cost.md"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as run.py does

    with tempfile.TemporaryDirectory() as tmp:
        stage_data(args, Path(tmp))
        source = IdxSource("bench", "FashionMNIST", None, [1, 28, 28], 10)
        data = prepare(source.load(Path(tmp)), torch.device("cpu"), 0.0, 0)
    fill = -data.mean / data.std  # a raw 0 pixel, normalised: what run.py pads with
    rows = []
    for name in args.models:
        trainers = {}
        for kind in ("plain", "augmented"):
            torch.manual_seed(0)
            model = place(build(name), data, channels_last=True)
            augment = RandomCropFlip(args.padding, True, fill, seed=0) if kind == "augmented" else None
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
            generator = torch.Generator().manual_seed(0)
            trainers[kind] = Trainer(
                model,
                optimizer,
                nn.CrossEntropyLoss(),
                args.batch_size,
                generator,
                progress=False,
                augment=augment,
            )
            epoch_seconds(trainers[kind], data)  # warm-up: first-touch allocations, oneDNN caches
        times = {"plain": [], "augmented": [], "alone": []}
        for _ in range(args.repeats):
            for kind, trainer in trainers.items():
                times[kind].append(epoch_seconds(trainer, data))
            times["alone"].append(
                augment_seconds(trainers["augmented"].augment, data.x_train, args.batch_size)
            )
        plain, augmented, alone = (statistics.median(times[k]) for k in times)
        rows.append((name, plain, augmented, augmented / plain, alone))
        print(
            f"{name}: {plain:.3f} s, augmented {augmented:.3f} s, augmentation alone {alone:.3f} s",
            file=sys.stderr,
        )

    lines = [
        f"Epoch of {len(data.x_train):,} samples ({args.data}), batch {args.batch_size}, SGD lr 0.1, "
        f"{args.threads} threads, median of {args.repeats}; crop padding {args.padding}, flip",
        "",
        "| model | epoch (s) | epoch, dataset.augment=true (s) | ratio | augmentation alone (s) |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {m} | {p:.3f} | {a:.3f} | {r:.2f}x | {g:.3f} |" for m, p, a, r, g in rows]
    publish(lines, args.out)


if __name__ == "__main__":
    main()
