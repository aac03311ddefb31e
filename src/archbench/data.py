"""Find a dataset's files, decode them once into tensors (cached on disk), keep them on the device.

Each source's `load()` returns uint8 or float tensors shaped (N, C, H, W) plus int64 labels, and
under "lineage" what each split was read from (MLflow's dataset records); splits.py turns them
into normalised tensors on the training device.

torch is imported where tensors are made, not above: a sweep's parent names each job's data by its
files' digests (`split_digests`, read beside the cache) to find runs it can reuse, and never needs
torch (1.5 s of its start).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import math
import os
import pickle
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hydra.errors import CompactHydraException

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

CACHE_FORMAT = 2  # bump when the cached layout changes (2: with the source files' sha256)


class DataError(CompactHydraException):
    """Data missing or unreadable; Hydra prints it as one line."""


Raw = dict  # x_train, y_train, x_test, y_test (tensors) and lineage ({split: Lineage})


@dataclass
class Lineage:
    """What one split was read from, for MLflow's dataset records (the UI's Datasets column)."""

    name: str
    digest: str  # 16 hex digits of sha256 over the files' own sha256 (or the generating parameters)
    source: str  # the folder the files are in, or how the data was generated
    parts: dict[str, str]  # file name -> sha256 (as sha256sum prints it), or parameter -> value
    rows: int
    shape: list[int]
    dtype: str  # as read, before normalisation: uint8, float32
    classes: list[str]


def class_names(classes, num_classes: int) -> list[str]:
    """The dataset's class names; class0, class1, ... where it names none."""
    return [str(c) for c in classes] if classes else [f"class{i}" for i in range(num_classes)]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def split_digest(parts: dict[str, str]) -> str:
    """A split's Lineage.digest: 16 hex digits over its files' digests (or its generating parameters)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _lineage(name, digests: dict[str, dict[str, str]], source: str, raw: Raw, classes) -> dict:
    """One Lineage per split, from each split's file digests."""
    found = {}
    for split, parts in digests.items():
        x = raw[f"x_{split}"]
        dtype = str(x.dtype).removeprefix("torch.")
        shape = list(x.shape[1:])
        found[split] = Lineage(name, split_digest(parts), source, parts, len(x), shape, dtype, classes)
    return found


@dataclass(frozen=True)
class Augmentation:
    """How a dataset's training batches may be augmented: the `augment`, `crop_padding` and `flip`
    keys of its YAML (archbench.augment does it)."""

    augment: bool = False
    crop_padding: int = 0
    flip: bool = False


def read_idx(path: Path) -> torch.Tensor:
    """Decode one IDX file of unsigned bytes (optionally gzipped), checking it is whole."""
    import torch

    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
        raise DataError(f"{path}: corrupt or truncated ({e}); delete it to fetch it again") from e
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":
        raise DataError(f"{path}: not an IDX file of unsigned bytes (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", data[4:header]) if len(data) >= header else ()
    if len(dims) != ndim or len(data) - header != math.prod(dims):
        raise DataError(
            f"{path}: truncated or corrupt IDX file: its header promises {math.prod(dims)} bytes "
            f"of data, the file holds {max(len(data) - header, 0)}"
        )
    return torch.frombuffer(bytearray(data), dtype=torch.uint8, offset=header).reshape(dims)


def cached(
    cache: Path, files: dict[str, list[Path]], decode, root: Path | None = None
) -> tuple[Raw, dict[str, dict[str, str]]]:
    """`decode()` once; later runs read the tensors back unless a source file changed.

    Also returns each split's files' sha256, hashed with the decoding (0.1 s for Fashion-MNIST's
    30 MB) and cached beside the tensors, so later runs name their data without reading it again;
    keyed by file name, or by the path under `root` (an image folder's cat/1.png and dog/1.png).
    The digests are also written beside the cache (`known_digests` reads them without torch).
    """
    import torch

    stamp = _stamp(files)
    try:
        blob = torch.load(cache, weights_only=True)
        if blob.get("stamp") == stamp:
            if _read_digests(cache, stamp) != blob["digests"]:  # a cache written before the side file
                _write_digests(cache, stamp, blob["digests"])
            return blob["tensors"], blob["digests"]
    except FileNotFoundError:
        pass
    except Exception as e:  # unreadable cache: decode again and replace it
        log.warning("ignoring unreadable cache %s (%s)", cache, e)
    first = next(p for paths in files.values() for p in paths)
    log.info("decoding %s into %s (once; later runs read the cache)", first.parent, cache)
    tensors = decode()
    key = lambda p: p.relative_to(root).as_posix() if root else p.name  # noqa: E731
    digests = {split: {key(p): sha256(p) for p in paths} for split, paths in files.items()}
    tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"stamp": stamp, "tensors": tensors, "digests": digests}, tmp)
        os.replace(tmp, cache)  # atomic: a crash leaves the old cache or none, never half a file
    except OSError as e:
        log.warning("could not write the cache %s (%s); decoding again next time", cache, e)
        tmp.unlink(missing_ok=True)
        return tensors, digests
    _write_digests(cache, stamp, digests)
    return tensors, digests


def _stamp(files: dict[str, list[Path]]) -> list:
    """What the cache was decoded from: the format, and each source file's path, size and mtime."""
    sources = [p for paths in files.values() for p in paths]
    return [CACHE_FORMAT] + [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in sources]


def _digests_file(cache: Path) -> Path:
    return cache.with_name(f"{cache.name}.digests.json")


def _write_digests(cache: Path, stamp: list, digests: dict) -> None:
    """The files' digests beside the cache, with its stamp, written whole or not at all."""
    side = _digests_file(cache)
    tmp = side.with_name(f"{side.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps({"stamp": stamp, "digests": digests}))
        os.replace(tmp, side)
    except OSError as e:  # the cache still holds them: only a sweep's reuse check reads this file
        log.warning("could not write %s (%s)", side, e)
        tmp.unlink(missing_ok=True)


def known_digests(cache: Path, files: dict[str, list[Path]]) -> dict[str, str] | None:
    """Each split's Lineage.digest from the file digests `cached` wrote beside the cache, where the
    files are unchanged since; None where they changed or no cache was written."""
    digests = _read_digests(cache, _stamp(files))
    return {split: split_digest(parts) for split, parts in digests.items()} if digests else None


def _read_digests(cache: Path, stamp: list) -> dict[str, dict[str, str]] | None:
    """The file digests beside the cache, where they were written for `stamp`'s files."""
    try:
        blob = json.loads(_digests_file(cache).read_text())
        if blob["stamp"] == json.loads(json.dumps(stamp)):  # JSON gives (path, size, mtime) back as lists
            return blob["digests"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _check(name: str, raw: Raw, input_shape, num_classes: int) -> Raw:
    for split in ("train", "test"):
        x, y = raw[f"x_{split}"], raw[f"y_{split}"]
        if tuple(x.shape[1:]) != tuple(input_shape) or len(x) != len(y):
            raise DataError(
                f"dataset={name}: {split} split has images {tuple(x.shape)} and {len(y)} labels; "
                f"expected N x {tuple(input_shape)} with one label each"
            )
        if len(y) and (y.min() < 0 or y.max() >= num_classes):
            raise DataError(f"dataset={name}: {split} labels outside 0..{num_classes - 1}")
    return raw


def _download_failed(name: str, looked: list[Path], error: Exception, how: str) -> DataError:
    where = " and ".join(str(p) for p in looked)
    reason = " ".join(str(error).split())  # torchvision's message spans lines
    return DataError(
        f"dataset={name}: no data found in {where}, and torchvision's download failed "
        f"({type(error).__name__}: {reason}). To get it: {how}"
    )


class IdxSource:
    """MNIST-style IDX files: the project's data folder, a system package, then torchvision."""

    FILES = {
        "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    }

    def __init__(
        self,
        name,
        torchvision_class,
        system_dir,
        input_shape,
        num_classes,
        classes=None,
        augment=False,
        crop_padding=0,
        flip=False,
        resample=False,
    ):
        self.name, self.tv_class, self.system_dir = name, torchvision_class, system_dir
        self.resample = resample  # splits.partition: train and test pooled, split again per seed
        self.input_shape, self.num_classes = tuple(input_shape), num_classes
        self.classes = class_names(classes, num_classes)
        self.augmentation = Augmentation(augment, crop_padding, flip)

    def find(self, data_dir: Path) -> dict[str, Path] | None:
        """The four files in the first folder that has them all (.gz or extracted)."""
        folders = [data_dir / self.tv_class / "raw"] + ([Path(self.system_dir)] if self.system_dir else [])
        for folder in folders:
            found = {}
            for base in sum(self.FILES.values(), ()):
                path = next((p for p in (folder / f"{base}.gz", folder / base) if p.is_file()), None)
                if path is None:
                    break
                found[base] = path
            else:
                return found
        return None

    def download(self, data_dir: Path) -> dict[str, Path]:
        import torchvision

        try:
            getattr(torchvision.datasets, self.tv_class)(root=str(data_dir), download=True)
        except Exception as e:
            looked = [data_dir / self.tv_class / "raw"] + ([Path(self.system_dir)] if self.system_dir else [])
            how = f"copy the four IDX .gz files into {data_dir / self.tv_class / 'raw'}"
            if self.name == "fashion_mnist":
                how = f"sudo apt-get install dataset-fashion-mnist, or {how}"
            raise _download_failed(self.name, looked, e, how + ", or run once with internet access") from e
        found = self.find(data_dir)
        if found is None:
            raise DataError(f"dataset={self.name}: torchvision's download left no IDX files in {data_dir}")
        return found

    def load(self, data_dir: Path) -> Raw:
        files = self.find(data_dir) or self.download(data_dir)
        log.info("dataset=%s from %s", self.name, next(iter(files.values())).parent)

        def decode() -> Raw:
            raw = {}
            for split, (images, labels) in self.FILES.items():
                raw[f"x_{split}"] = read_idx(files[images]).unsqueeze(1)  # N x 1 x H x W
                raw[f"y_{split}"] = read_idx(files[labels]).long()
            return raw

        raw, digests = cached(data_dir / "cache" / f"{self.name}.pt", self._splits(files), decode)
        raw = _check(self.name, raw, self.input_shape, self.num_classes)
        folder = str(next(iter(files.values())).parent.resolve())
        return {**raw, "lineage": _lineage(self.name, digests, folder, raw, self.classes)}

    def _splits(self, files: dict[str, Path]) -> dict[str, list[Path]]:
        return {split: [files[base] for base in bases] for split, bases in self.FILES.items()}

    def split_digests(self, data_dir: Path) -> dict[str, str] | None:
        """Each split's Lineage.digest as `load` would give it, where known without decoding; else None."""
        files = self.find(data_dir)
        return known_digests(data_dir / "cache" / f"{self.name}.pt", self._splits(files)) if files else None


class CifarSource:
    """CIFAR-10's python batches from the project's data folder, else torchvision's download."""

    FOLDER = "cifar-10-batches-py"
    TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
    TEST = ["test_batch"]

    def __init__(
        self,
        name,
        input_shape,
        num_classes,
        classes=None,
        augment=False,
        crop_padding=0,
        flip=False,
        resample=False,
    ):
        self.name, self.input_shape, self.num_classes = name, tuple(input_shape), num_classes
        self.resample = resample
        self.classes = class_names(classes, num_classes)
        self.augmentation = Augmentation(augment, crop_padding, flip)

    def load(self, data_dir: Path) -> Raw:
        folder = data_dir / self.FOLDER
        if not all((folder / f).is_file() for f in self.TRAIN + self.TEST):
            import torchvision

            try:
                torchvision.datasets.CIFAR10(root=str(data_dir), download=True)
            except Exception as e:
                how = f"unpack cifar-10-python.tar.gz into {data_dir}, or run once with internet access"
                raise _download_failed(self.name, [folder], e, how) from e
        files = self._files(folder)

        def decode() -> Raw:
            import torch

            train = [self._read(folder / f) for f in self.TRAIN]
            x_test, y_test = self._read(folder / self.TEST[0])
            return {
                "x_train": torch.cat([x for x, _ in train]),
                "y_train": torch.cat([y for _, y in train]),
                "x_test": x_test,
                "y_test": y_test,
            }

        raw, digests = cached(data_dir / "cache" / f"{self.name}.pt", files, decode)
        raw = _check(self.name, raw, self.input_shape, self.num_classes)
        return {**raw, "lineage": _lineage(self.name, digests, str(folder.resolve()), raw, self.classes)}

    def _files(self, folder: Path) -> dict[str, list[Path]]:
        return {"train": [folder / f for f in self.TRAIN], "test": [folder / f for f in self.TEST]}

    def split_digests(self, data_dir: Path) -> dict[str, str] | None:
        """Each split's Lineage.digest as `load` would give it, where known without decoding; else None."""
        folder = data_dir / self.FOLDER
        if not all((folder / f).is_file() for f in self.TRAIN + self.TEST):
            return None
        return known_digests(data_dir / "cache" / f"{self.name}.pt", self._files(folder))

    @staticmethod
    def _read(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        try:
            with open(path, "rb") as f:
                batch = pickle.load(f, encoding="latin1")  # Python 2 pickles, read as torchvision does
            x = torch.tensor(bytearray(batch["data"].tobytes()), dtype=torch.uint8)
            return x.reshape(-1, 3, 32, 32), torch.tensor(batch["labels"], dtype=torch.long)
        except (OSError, EOFError, pickle.UnpicklingError, KeyError, AttributeError, RuntimeError) as e:
            raise DataError(f"{path}: corrupt or truncated CIFAR batch ({type(e).__name__}: {e})") from e


class SyntheticSource:
    """One random prototype image per class plus Gaussian noise: small, in memory, learnable."""

    def __init__(
        self,
        name,
        input_shape,
        num_classes,
        train_size,
        test_size,
        noise,
        seed,
        classes=None,
        augment=False,
        crop_padding=0,
        flip=False,
        resample=False,
    ):
        self.name, self.input_shape, self.num_classes = name, tuple(input_shape), num_classes
        self.resample = resample
        self.sizes, self.noise, self.seed = (train_size, test_size), noise, seed
        self.classes = class_names(classes, num_classes)
        self.augmentation = Augmentation(augment, crop_padding, flip)

    def load(self, data_dir: Path) -> Raw:
        import torch

        g = torch.Generator().manual_seed(self.seed)
        prototypes = torch.randn(self.num_classes, *self.input_shape, generator=g)
        raw = {}
        for split, n in zip(("train", "test"), self.sizes, strict=True):
            y = torch.randint(self.num_classes, (n,), generator=g)
            raw[f"x_{split}"] = prototypes[y] + self.noise * torch.randn(n, *self.input_shape, generator=g)
            raw[f"y_{split}"] = y
        source = f"{type(self).__module__}.{type(self).__name__}"
        return {**raw, "lineage": _lineage(self.name, self._splits(), source, raw, self.classes)}

    def _splits(self) -> dict[str, dict[str, str]]:
        # named by what generates it: the same parameters give the same data, so the same digest
        made = {"input_shape": list(self.input_shape), "num_classes": self.num_classes, "noise": self.noise,
                "seed": self.seed, "train_size": self.sizes[0], "test_size": self.sizes[1]}  # fmt: skip
        made = {k: json.dumps(v) for k, v in made.items()}
        return {split: {**made, "split": split} for split in ("train", "test")}  # one digest each

    def split_digests(self, data_dir: Path) -> dict[str, str]:
        """Each split's Lineage.digest as `load` gives it."""
        return {split: split_digest(parts) for split, parts in self._splits().items()}
