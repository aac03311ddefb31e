"""What a network and a folder of images of one's own cost, beyond what they cost anyway.

    python benchmarks/own_cost.py --threads 1        # LeNet-5 on Fashion-MNIST; 2,000 PNGs of 64 x 64
    python benchmarks/own_cost.py --data synthetic --train-size 600 --images 200 --repeats 1

1. An epoch of LeNet-5 built directly (`LeNet(num_classes=10)`) and built by archbench from a model
   config of its own (`_target_: archbench_test_nets.LeNet`, as fits.build does for model=lenet):
   same initial weights, data and batches, trained by archbench's Trainer; one warm-up epoch each,
   then epochs alternating, median of --repeats. Also what building it adds once per run: the check on a batch
   of two zeros, and the torch.export trial before its model is logged.
2. A folder of --images PNGs (4 classes, 64 x 64 RGB, resized to 3 x 32 x 32): the first load
   decodes, hashes and caches them, a later one reads the cache; median of --repeats each.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))
from table import publish  # noqa: E402

import test_own  # noqa: E402  (its user module, as text)
from archbench import fits, images  # noqa: E402
from archbench.splits import prepare  # noqa: E402
from archbench.tracking.logged_model import RawInput, untraceable  # noqa: E402
from archbench.train import Trainer, keep_freed_memory, place  # noqa: E402
from imagefiles import shape_image  # noqa: E402


def user_module():
    """The tests' module of one's own (tests/test_own.py's NETS), imported from a folder on sys.path as
    a user's is: its LeNet is the README's example."""
    import importlib

    folder = Path(tempfile.mkdtemp())
    (folder / f"{test_own.MODULE}.py").write_text(test_own.NETS)
    sys.path.insert(0, str(folder))
    return importlib.import_module(test_own.MODULE)


def timed(function) -> tuple[float, object]:
    tic = time.perf_counter()
    result = function()
    return time.perf_counter() - tic, result


def cpu_timed(function) -> tuple[float, float]:
    """(wall, CPU) seconds of `function()`: with other work on the cores, CPU time moves less."""
    tic, cpu = time.perf_counter(), time.process_time()
    function()
    return time.perf_counter() - tic, time.process_time() - cpu


def network_rows(args) -> list[str]:
    overrides = [f"dataset={args.data}", "data_dir=data"]
    if args.data == "synthetic":
        overrides.append(f"dataset.train_size={args.train_size}")
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose("config", overrides)
    LeNet = user_module().LeNet
    target = {"_target_": f"{test_own.MODULE}.LeNet", "num_classes": "${dataset.num_classes}"}
    cfg.model = OmegaConf.create(target)
    data = prepare(instantiate(cfg.dataset).load(ROOT / "data"), torch.device("cpu"), 0.0, 0)
    torch.manual_seed(0)
    direct = LeNet(num_classes=10)
    torch.manual_seed(0)
    build_s, built = timed(lambda: fits.build(cfg, "lenet"))
    plain_s, _ = timed(lambda: LeNet(num_classes=10))
    assert type(built) is LeNet and all(
        torch.equal(a, b) for a, b in zip(direct.parameters(), built.parameters(), strict=True)
    )
    trainers = {}
    for name, model in (("built directly", direct), ("built by archbench from model=lenet", built)):
        model = place(model, data, channels_last=True)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        shuffle = torch.Generator().manual_seed(0)
        trainers[name] = Trainer(model, optimizer, nn.CrossEntropyLoss(), 100, shuffle, progress=False)
        trainers[name].train_one_epoch(data.x_train, data.y_train, 0)  # warm-up: allocations, oneDNN caches
    spent = {name: [] for name in trainers}
    for round_ in range(args.repeats):
        for name in list(trainers)[:: 1 if round_ % 2 == 0 else -1]:  # ABBA: drift falls on both arms
            epoch = lambda t=trainers[name]: t.train_one_epoch(data.x_train, data.y_train, 1)  # noqa: E731
            spent[name].append(cpu_timed(epoch))
    example = (data.x_test[:2] * data.std + data.mean).numpy()
    wrapped = RawInput(LeNet(10).eval(), data.mean, data.std).eval()
    untraceable(wrapped, example)  # torch.export's first use in a process costs ~1 s more: not counted
    export_s, why = timed(lambda: untraceable(wrapped, example))
    assert why is None, why
    epoch = f"LeNet-5 epoch ({len(data.x_train):,} samples of {args.data}, batch 100)"
    rows = []
    for name, times in spent.items():
        wall, cpu = (statistics.median(t[i] for t in times) for i in (0, 1))
        each = ", ".join(f"{w:.3f} ({c:.3f})" for w, c in times)
        rows.append(
            f"| {epoch}, {name}: wall (CPU), median of {args.repeats} | {wall:.3f} s ({cpu:.3f} s) | {each} |"
        )
    rows.append(f"| once per run: fits.build (constructor, then 2 zero inputs) / the constructor alone | "
                f"{build_s * 1000:.1f} / {plain_s * 1000:.1f} ms | |")  # fmt: skip
    rows.append(f"| once per run: the torch.export trial before the model is logged | {export_s:.3f} s | |")
    return rows


def folder_rows(args) -> list[str]:
    rng = np.random.default_rng(0)
    classes = ("circle", "square", "triangle", "disc")  # disc: circles again, a fourth folder
    with tempfile.TemporaryDirectory() as tmp:
        root, data_dir = Path(tmp) / "shapes", Path(tmp) / "data"
        for i in range(args.images):
            kind, split = classes[i % 4], "test" if i % 5 == 0 else "train"
            (root / split / kind).mkdir(parents=True, exist_ok=True)
            image = shape_image("circle" if kind == "disc" else kind, rng, (64, 64), "RGB")
            image.save(root / split / kind / f"{i:05d}.png")
        megabytes = sum(p.stat().st_size for p in root.rglob("*.png")) / 1e6
        node = OmegaConf.load(ROOT / "conf" / "dataset" / "image_folder.yaml")
        node.root, node.input_shape = str(root), [3, 32, 32]

        def load():  # as a run does: settle the config from the folder, build the source, load
            settled = node.copy()
            images.settle(settled)
            keys = {k: v for k, v in OmegaConf.to_container(settled).items() if k != "_target_"}
            return images.ImageFolderSource(**keys).load(data_dir)

        first, later = [], []
        for _ in range(args.repeats):
            for cache in data_dir.glob("cache/*.pt"):
                cache.unlink()
            first.append(timed(load)[0])
            later.append(timed(load)[0])
    what = f"{args.images:,} PNGs (64 x 64 RGB, {megabytes:.1f} MB) to 3 x 32 x 32"
    return [
        f"| {what}, first run: decode, resize, sha256, cache, median of {args.repeats} | "
        f"{statistics.median(first):.3f} s | {', '.join(f'{s:.3f}' for s in first)} |",
        f"| the same folder, a later run: the cache, median of {args.repeats} | "
        f"{statistics.median(later):.3f} s | {', '.join(f'{s:.3f}' for s in later)} |",
    ]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", choices=["fashion_mnist", "synthetic"], default="fashion_mnist")
    parser.add_argument("--train-size", type=int, default=6000, help="samples, with --data synthetic")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5, help="timed epochs per arm; loads per kind")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--out", type=Path, default=Path("outputs/bench/own_cost.md"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as run.py does
    lines = [
        f"{args.threads} thread(s); torch {torch.__version__}",
        "",
        "| | median | each |",
        "|---|---|---|",
        *network_rows(args),
        *folder_rows(args),
    ]
    publish(lines, args.out)


if __name__ == "__main__":
    main()
