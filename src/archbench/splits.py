"""A dataset as training uses it: split, normalised once, on the training device.

`prepare()` does it; `for_job()` does it for a job of a sweep and keeps the result for the next
job of the same process that asks for the same data. A sweep's jobs mostly differ in the model
and the seed, and reading the cache and normalising took ~0.4 s per job (an mlp's 5 epochs take
~1.8 s on 2 cores).
"""

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from archbench import identity
from archbench.data import DataError, Raw


@dataclass
class Splits:
    """Normalised tensors on the training device."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    x_val: torch.Tensor | None = None
    y_val: torch.Tensor | None = None
    mean: torch.Tensor | None = None  # per channel, shaped (1, C, 1, ...): x = (raw - mean) / std
    std: torch.Tensor | None = None
    lineage: dict | None = None  # {split: Lineage}: what the data was read from
    test_index: np.ndarray | None = None  # dataset.resample=true: each test example's index in the pool
    source_digest: str | None = None  # the data as read, before any split (identity.data_digest)


def partition(raw: Raw, seed: int) -> Raw:
    """dataset.resample=true: train and test pooled, then split again by `seed` at the standard sizes,
    stratified by class (scikit-learn's train_test_split). The same seed draws the same partition for
    every configuration, so a comparison stays paired by seed; each seed draws another, so the seeds
    carry the test and training samples' noise too. Each split's lineage names the partition: the
    seed and a digest of the pooled indices of its test examples."""
    from sklearn.model_selection import train_test_split

    x, y = torch.cat([raw["x_train"], raw["x_test"]]), torch.cat([raw["y_train"], raw["y_test"]])
    try:
        train, test = train_test_split(
            np.arange(len(y)), test_size=len(raw["y_test"]), stratify=y.numpy(), random_state=seed
        )
    except ValueError as e:  # a class with one image, or fewer test images than classes
        raise DataError(f"dataset.resample=true cannot stratify this data: {e}") from None
    train, test = np.sort(train), np.sort(test)  # in pool order: the trainer shuffles every epoch
    drawn = hashlib.sha256(test.astype("<i8").tobytes()).hexdigest()[:16]
    pooled = {f"{s}.{k}": v for s, line in raw["lineage"].items() for k, v in line.parts.items()}
    lineage = {}
    for split, index in (("train", train), ("test", test)):
        parts = {**pooled, "resample.seed": str(seed), "resample.test_indices": drawn, "split": split}
        whole = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]
        lineage[split] = dataclasses.replace(
            raw["lineage"][split], digest=whole, parts=parts, rows=len(index)
        )
    found = {"x_train": x[train], "y_train": y[train], "x_test": x[test], "y_test": y[test]}
    return {**found, "lineage": lineage, "test_index": test}


def prepare(raw: Raw, device: torch.device, val_fraction: float, seed: int, resample=False) -> Splits:
    """Hold out a validation slice, normalise with the training split's per-channel statistics;
    with `resample`, from the seed's own partition of the pooled data first."""
    if resample:
        raw = partition(raw, seed)
    x_train, y_train = raw["x_train"], raw["y_train"]
    x_val = y_val = None
    if val_fraction > 0:
        order = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(seed))
        n_val = max(1, int(len(x_train) * val_fraction))
        x_val, y_val = x_train[order[:n_val]], y_train[order[:n_val]]
        x_train, y_train = x_train[order[n_val:]], y_train[order[n_val:]]
    dims = [0] + list(range(2, x_train.dim()))  # every axis but the channel
    # one float copy of each split, normalised in place: the same values as (x - mean) / std, with one
    # 188 MB buffer for Fashion-MNIST's training split where there were four (0.2 s of each job's start)
    train = x_train.to(device, torch.float32, copy=True)  # a copy: the raw tensors stay as cached
    mean = train.mean(dims, keepdim=True)
    std = train.std(dims, keepdim=True).clamp_min(1e-6)

    def norm(x):
        return None if x is None else x.to(device, torch.float32, copy=True).sub_(mean).div_(std)

    def on(y):
        return None if y is None else y.to(device)

    return Splits(
        train.sub_(mean).div_(std),
        on(y_train),
        norm(raw["x_test"]),
        on(raw["y_test"]),
        norm(x_val),
        on(y_val),
        mean,
        std,
        raw.get("lineage"),
        raw.get("test_index"),
    )


_kept: tuple[tuple, Splits] | None = None  # the last job's (key, splits), one dataset at a time


def for_job(source, data_dir: Path, device: torch.device, val_fraction: float, seed: int) -> Splits:
    """prepare(source.load(data_dir), ...), or the last job's splits where it asked for the same.

    The key is everything the splits depend on: the source's settings, the folder, the device and
    the validation split (whose draw depends on the seed). Each job gets its own Splits object
    over the same tensors, which nothing modifies in place (place() swaps in NHWC copies).
    """
    global _kept
    resample = getattr(source, "resample", False)  # dataset.resample=true: the partition is the seed's
    key = (
        type(source).__qualname__,
        # augmentation is applied per batch by the trainer, not to the splits
        repr(sorted((k, v) for k, v in vars(source).items() if k != "augmentation")),
        str(Path(data_dir).resolve()),
        str(device),
        val_fraction,
        seed if val_fraction > 0 or resample else None,
    )
    if _kept is None or _kept[0] != key:
        _kept = None  # the previous dataset goes before the next one is read: one in memory at a time
        raw = source.load(Path(data_dir))
        prepared = prepare(raw, device, val_fraction, seed, resample=resample)
        _kept = (key, dataclasses.replace(prepared, source_digest=identity.data_digest(raw.get("lineage"))))
    return dataclasses.replace(_kept[1])
