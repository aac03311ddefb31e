"""Epoch speed, side by side in one process: the course's textbook loop vs archbench's trainer.

    python benchmarks/epoch_speed.py                          # Fashion-MNIST, mlp cnn2 cnn3
    python benchmarks/epoch_speed.py --data synthetic --train-size 2000 --repeats 1

Both loops train the same model (same init), on the same images, with the same batch size,
optimiser, learning rate and thread count. "archbench" is the trainer with its defaults (fp32
on CPU, NHWC for CNNs, glibc told to reuse freed memory: process-wide, so the textbook loop
gets that too); the last columns repeat it with bf16 autocast (train.amp=true).
The textbook loop is the course's benchmark(): torchvision's FashionMNIST dataset, ToTensor
and Normalize per sample, a shuffling DataLoader and per-batch `.item()` calls.
The arithmetic bound is 3 x forward FLOPs (torchinfo's mult-adds x 2) x samples, at the
float32 matmul rate measured here, now. "The step alone" is a floor for any trainer: the same
network (NHWC, as archbench places it) and optimiser take an epoch's steps on one fixed batch,
with no data to gather and nothing recorded: zero_grad, forward, loss, backward, step.
"""

import argparse
import gzip
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchinfo
import torchvision
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch import nn
from torchvision import transforms

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from table import publish  # noqa: E402

from archbench.data import IdxSource  # noqa: E402
from archbench.splits import prepare  # noqa: E402
from archbench.train import Trainer, keep_freed_memory, place  # noqa: E402

MODELS = ["mlp", "mlp_deep", "cnn1", "cnn2", "cnn3"]
NAMES = IdxSource.FILES
CONF = Path(__file__).resolve().parents[1] / "conf"


def build(model: str, activation: str = "relu") -> nn.Module:
    """The network run.py builds for model=... activation=... (on Fashion-MNIST's input shape)."""
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[f"model={model}", f"activation={activation}"])
    return instantiate(cfg.model)


def stage_data(args, root: Path) -> Path:
    """root/FashionMNIST/raw with the four IDX files, extracted as torchvision wants them."""
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    if args.data == "synthetic":
        g = torch.Generator().manual_seed(0)
        prototypes = torch.rand(10, 28, 28, generator=g) * 255
        for split, n in (("train", args.train_size), ("test", max(args.train_size // 6, 100))):
            y = torch.randint(10, (n,), generator=g)
            x = (prototypes[y] + 60 * torch.randn(n, 28, 28, generator=g)).clamp(0, 255).to(torch.uint8)
            for name, t in zip(NAMES[split], (x, y.to(torch.uint8)), strict=True):
                header = bytes([0, 0, 8, t.dim()]) + b"".join(d.to_bytes(4, "big") for d in t.shape)
                (raw / name).write_bytes(header + t.numpy().tobytes())
        return root
    source = IdxSource("fashion_mnist", "FashionMNIST", "/usr/share/datasets/fashion-mnist", [1, 28, 28], 10)
    found = source.find(Path("data"))
    if found is None:
        sys.exit("Fashion-MNIST not found: sudo apt-get install dataset-fashion-mnist, or --data synthetic")
    for base, path in found.items():
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        (raw / base).write_bytes(data)
    return root


def textbook_epoch(model, loader, optimizer, criterion) -> float:
    """The course's benchmark() loop, one epoch; returns seconds."""
    tic = time.perf_counter()
    model.train()
    total, correct, running = 0, 0, 0.0
    for images, labels in loader:
        optimizer.zero_grad()
        outputs = model(images)
        loss = criterion(outputs, labels)
        loss.backward()
        optimizer.step()
        running += loss.item()
        correct += (outputs.argmax(1) == labels).sum().item()
        total += labels.size(0)
    return time.perf_counter() - tic


def archbench_epoch(trainer: Trainer, data) -> float:
    tic = time.perf_counter()
    trainer.train_one_epoch(data.x_train, data.y_train, 1)
    return time.perf_counter() - tic


def step_alone(name: str, data, args, steps: int) -> float:
    """Seconds for `steps` training steps of a fresh `name` on the first batch, over and over."""
    torch.manual_seed(0)
    model = place(build(name), data, channels_last=True)
    optimizer, criterion = torch.optim.SGD(model.parameters(), lr=args.lr), nn.CrossEntropyLoss()
    xb, yb = data.x_train[: args.batch_size], data.y_train[: args.batch_size]
    for first in (True, False):  # a warm-up pass (first-touch allocations, oneDNN caches), then timed
        tic = time.perf_counter()
        for _ in range(min(steps, 20) if first else steps):
            optimizer.zero_grad(set_to_none=True)
            criterion(model(xb), yb).backward()
            optimizer.step()
    return time.perf_counter() - tic


def matmul_peak(seconds: float = 1.0, n: int = 2048) -> float:
    """Float32 FLOP/s of an n x n matmul on this machine, now."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    count, tic = 0, time.perf_counter()
    while time.perf_counter() - tic < seconds:
        a @ b
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - tic)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn2", "cnn3"], choices=MODELS)
    parser.add_argument("--data", choices=["fashion_mnist", "synthetic"], default="fashion_mnist")
    parser.add_argument("--train-size", type=int, default=6000, help="samples, with --data synthetic")
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs of each loop per model")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--out", type=Path, default=Path("outputs/bench/epoch_speed.md"))
    parser.add_argument("--profile", action="store_true", help="where an archbench step's time goes")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as run.py does; process-wide, so the textbook loop gets it too

    with tempfile.TemporaryDirectory() as tmp:
        root = stage_data(args, Path(tmp))
        tv = torchvision.datasets.FashionMNIST(root, train=True)
        mean, std = (tv.data.float() / 255).mean().item(), (tv.data.float() / 255).std().item()
        tv.transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((mean,), (std,))])
        loader = torch.utils.data.DataLoader(tv, batch_size=args.batch_size, shuffle=True)
        source = IdxSource("bench", "FashionMNIST", None, [1, 28, 28], 10)
        data = prepare(source.load(Path(tmp)), torch.device("cpu"), 0.0, 0)
        n = len(data.x_train)
        peak = matmul_peak()
        rows, profiles = [], []
        for name in args.models:
            times = {"textbook": [], "archbench": [], "bf16": [], "alone": []}
            models, trainers = {}, {}
            for kind in ("textbook", "archbench", "bf16"):
                torch.manual_seed(0)
                models[kind] = build(name)
            optimizers = {k: torch.optim.SGD(m.parameters(), lr=args.lr) for k, m in models.items()}
            for kind, amp in (("archbench", "auto"), ("bf16", True)):  # archbench's defaults, then amp=true
                models[kind] = place(models[kind], data, channels_last=True)
                trainers[kind] = Trainer(
                    models[kind],
                    optimizers[kind],
                    nn.CrossEntropyLoss(),
                    args.batch_size,
                    torch.Generator().manual_seed(0),
                    amp=amp,
                    progress=False,
                )
                archbench_epoch(trainers[kind], data)  # warm-up: first-touch allocations, oneDNN caches
            for _ in range(args.repeats):  # interleaved, so drifting machine load hits all alike
                times["textbook"].append(
                    textbook_epoch(models["textbook"], loader, optimizers["textbook"], nn.CrossEntropyLoss())
                )
                times["archbench"].append(archbench_epoch(trainers["archbench"], data))
                times["bf16"].append(archbench_epoch(trainers["bf16"], data))
                times["alone"].append(step_alone(name, data, args, -(-n // args.batch_size)))
            if args.profile:
                profiles += profile(name, trainers["archbench"], data)
            macs = torchinfo.summary(build(name), input_size=(1, 1, 28, 28), verbose=0).total_mult_adds
            bound = 3 * 2 * macs * n / peak
            textbook, ours, bf16, alone = (statistics.median(times[k]) for k in times)
            rows.append(
                (
                    name,
                    textbook,
                    ours,
                    textbook / ours,
                    bound,
                    bound / ours,
                    bf16,
                    textbook / bf16,
                    alone,
                    bound / alone,
                )
            )
            print(
                f"{name}: textbook {textbook:.2f} s, archbench {ours:.3f} s, bf16 {bf16:.3f} s",
                file=sys.stderr,
            )

    lines = [
        f"Epoch of {n:,} samples ({args.data}), batch {args.batch_size}, SGD lr {args.lr}, "
        f"{args.threads} threads, median of {args.repeats}; matmul peak {peak / 1e9:.0f} GFLOP/s",
        "",
        "| model | textbook loop (s) | archbench (s) | speed-up | fp32 arithmetic bound (s) "
        "| fraction of bound | archbench, train.amp=true (s) | speed-up "
        "| the step alone (s) | its fraction |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {m} | {t:.2f} | {o:.3f} | {r:.1f}x | {b:.3f} | {f:.2f} | {h:.3f} | {hr:.1f}x "
        f"| {a:.3f} | {af:.2f} |"
        for m, t, o, r, b, f, h, hr, a, af in rows
    ]
    publish(lines + profiles, args.out)


def profile(name: str, trainer: Trainer, data, top: int = 8) -> list[str]:
    """The operators that take an archbench epoch's time (torch.profiler, self CPU time), as table rows."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as profiler

    with profiler(activities=[ProfilerActivity.CPU]) as prof:
        archbench_epoch(trainer, data)
    steps = trainer.batches_per_epoch(len(data.x_train))
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in ops)
    lines = ["", f"Where a {name} step's time goes ({steps} steps, profiled; self CPU time):", "",
             "| operator | share | ms per step | calls per step |", "|---|---|---|---|"]  # fmt: skip
    for e in ops[:top]:
        share, per_step = e.self_cpu_time_total / total, e.self_cpu_time_total / 1e3 / steps
        lines.append(f"| {e.key} | {share:.0%} | {per_step:.3f} | {e.count / steps:.0f} |")
    lines.append(f"| all | 100% | {total / 1e3 / steps:.3f} | |")
    return lines


if __name__ == "__main__":
    main()
