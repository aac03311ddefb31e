"""Small but real dataset files, written by the tests: IDX (.gz) and CIFAR-10 python batches."""

import gzip
import hashlib
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np

IDX_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def idx_bytes(array: np.ndarray) -> bytes:
    array = np.ascontiguousarray(array, dtype=np.uint8)
    return (
        b"\x00\x00\x08" + bytes([array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    )


def write_idx_set(folder: Path, n_train=60, n_test=20, seed=0, fill=None) -> dict[str, np.ndarray]:
    """The four gzipped IDX files of an MNIST-style set; returns the arrays written."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, (n, 28, 28)) if fill is None else np.full((n, 28, 28), fill)
        labels = rng.integers(0, 10, n)
        for name, array in zip(IDX_NAMES[split], (images, labels), strict=True):
            (folder / f"{name}.gz").write_bytes(gzip.compress(idx_bytes(array)))
            arrays[name] = array.astype(np.uint8)
    return arrays


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def write_cifar_batches(folder: Path, per_batch=10, seed=0) -> dict[str, np.ndarray]:
    """cifar-10-batches-py with five small training batches, a test batch and the meta file."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072)).astype(np.uint8)
        labels = rng.integers(0, 10, per_batch).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels}, f, protocol=2)
        written[name] = data
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)
    return written


def cifar_tarball(folder: Path, target: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    target.write_bytes(buffer.getvalue())
