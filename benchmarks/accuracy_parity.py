"""Does the fast data path change what a network learns? Test accuracy after N epochs, trained by
the textbook loop ("before") and by archbench's trainer ("after"), over several seeds.

    python benchmarks/accuracy_parity.py                       # both presets, 5 epochs, seeds 0 1 2
    python benchmarks/accuracy_parity.py --configs mlp-relu --seeds 0 --epochs 1

Same model init per seed, same images and normalisation, SGD lr 0.1, batch 100, and the same
batches: the textbook DataLoader draws its shuffles as archbench does (one torch.randperm per epoch
from a generator seeded with the seed), so what remains is the data path itself, down to float
rounding. Across seeds (init and order both change) the spread shows the run-to-run noise.
"""

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch
import torchvision
from epoch_speed import build, stage_data, textbook_epoch
from torch import nn
from torchvision import transforms

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from archbench.data import IdxSource  # noqa: E402
from archbench.splits import prepare  # noqa: E402
from archbench.train import Trainer, place  # noqa: E402

PRESETS = ["mlp-relu", "mlp-tanh", "mlp-sigmoid", "mlp_deep-relu", "cnn1-relu", "cnn2-relu", "cnn3-relu"]


class SameOrder(torch.utils.data.Sampler):
    """Each epoch a fresh permutation, drawn exactly as archbench's Trainer draws it."""

    def __init__(self, n: int, seed: int):
        self.n, self.generator = n, torch.Generator().manual_seed(seed)

    def __iter__(self):
        return iter(torch.randperm(self.n, generator=self.generator).tolist())

    def __len__(self) -> int:
        return self.n


@torch.inference_mode()
def accuracy(model, loader) -> float:
    model.eval()
    correct = sum((model(x).argmax(1) == y).sum().item() for x, y in loader)
    return correct / len(loader.dataset)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", default=PRESETS, help="model-activation pairs")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--data", choices=["fashion_mnist", "synthetic"], default="fashion_mnist")
    parser.add_argument("--train-size", type=int, default=6000, help="samples, with --data synthetic")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench/accuracy_parity.md"))
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        root = stage_data(args, Path(tmp))
        data = prepare(
            IdxSource("bench", "FashionMNIST", None, [1, 28, 28], 10).load(root), torch.device("cpu"), 0.0, 0
        )
        train = torchvision.datasets.FashionMNIST(root, train=True)
        scale = train.data.float() / 255
        normalize = transforms.Compose(
            [transforms.ToTensor(), transforms.Normalize((scale.mean(),), (scale.std(),))]
        )
        train.transform = normalize
        test = torchvision.datasets.FashionMNIST(root, train=False, transform=normalize)
        test_loader = torch.utils.data.DataLoader(test, batch_size=1000)
        rows = []
        for config in args.configs:
            arch, act = config.split("-")
            results = {"textbook": [], "archbench": []}
            for seed in args.seeds:
                torch.manual_seed(seed)
                model = build(arch, act)
                optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
                loader = torch.utils.data.DataLoader(
                    train, batch_size=100, sampler=SameOrder(len(train), seed)
                )
                for _ in range(args.epochs):
                    textbook_epoch(model, loader, optimizer, nn.CrossEntropyLoss())
                results["textbook"].append(accuracy(model, test_loader))

                torch.manual_seed(seed)
                model = place(build(arch, act), data, channels_last=True)
                trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(),
                                  100, torch.Generator().manual_seed(seed), progress=False)  # fmt: skip
                results["archbench"].append(trainer.fit(data, args.epochs)["test_accuracy"])
                print(config, seed, {k: v[-1] for k, v in results.items()}, file=sys.stderr, flush=True)
            rows.append((config, *(results[k] for k in ("textbook", "archbench"))))

    def cell(values):
        spread = f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else ""
        return f"{statistics.mean(values):.4f}{spread} ({', '.join(f'{v:.4f}' for v in values)})"

    lines = [
        f"Test accuracy after {args.epochs} epochs ({args.data}), mean ± sd over seeds {args.seeds}",
        "",
        "| model-activation | textbook loop (before) | archbench (after) | difference of means |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {c} | {cell(t)} | {cell(a)} | {statistics.mean(a) - statistics.mean(t):+.4f} |"
        for c, t, a in rows
    ]
    table = "\n".join(lines) + "\n"
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table)


if __name__ == "__main__":
    main()
