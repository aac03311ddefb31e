"""A folder of images as a dataset, in torchvision's ImageFolder layout: one sub-folder per class.

    ROOT/train/<class>/*.png and ROOT/test/<class>/*.png, or ROOT/<class>/*.png with `test_fraction`
    of each class held out (the same images for every run: a sweep's runs share one test set).

The folders and file extensions are ImageFolder's (torchvision.datasets.folder), each image is read
with PIL as ImageFolder reads it, converted to grayscale or RGB and resized with torchvision's
resize; then everything is decoded once into uint8 tensors N x C x H x W, with the cache, atomic
writes and lineage of the built-in sets (data.cached). `settle()` fills in what the config leaves
null (the class names, their count, the image size) from the folder itself. torch is imported where
tensors are made: a sweep's parent settles every job's dataset here, and never needs torch.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf, open_dict

from archbench.config import ConfigError, _number
from archbench.data import Augmentation, DataError, Raw, _check, _lineage, cached, class_names

if TYPE_CHECKING:
    import torch

TARGET = f"{__name__}.ImageFolderSource"
GRAY = {"1", "L", "LA", "I", "I;16", "F"}  # PIL modes read as one channel when input_shape is null


def layout(root: Path) -> tuple[Path, Path | None]:
    """The training folder, and the test folder (None: a fraction of each class is held out)."""
    if (root / "train").is_dir():
        return root / "train", (root / "test" if (root / "test").is_dir() else None)
    return root, None


def class_folders(folder: Path) -> list[str]:
    """The class names, sorted, as ImageFolder numbers them (label = position)."""
    from torchvision.datasets.folder import find_classes

    try:
        return find_classes(str(folder))[0]
    except FileNotFoundError as e:
        raise DataError(
            f"{folder}: no class folders; ImageFolder's layout is a folder of images per class"
        ) from e


def images_in(folder: Path, index: dict[str, int]) -> list[tuple[Path, int]]:
    """(image, label) for every image in the class folders `index` names; one line if a class has none."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    found = make_dataset(str(folder), index, extensions=IMG_EXTENSIONS, allow_empty=True)
    labels = {label for _, label in found}
    for name, label in index.items():
        if label not in labels:
            kinds = " ".join(IMG_EXTENSIONS)
            raise DataError(f"{folder / name}: no images ({kinds}); every class folder needs some")
    return [(Path(path), label) for path, label in found]


def settle(node: DictConfig) -> None:
    """An image folder's keys left null, from the folder: classes (its sub-folders), num_classes, and
    the first image's size and channels as input_shape (then resize=false: every image must be that
    size). Checks the settings it reads; a no-op for any other dataset."""
    if node.get("_target_") != TARGET:
        return
    if node.root is None:
        raise ConfigError("dataset=image_folder needs dataset.root=PATH: a folder of images per class in it")
    root = Path(str(node.root)).expanduser()
    if not root.is_dir():
        raise ConfigError(f"dataset.root={node.root}: no such folder")
    train, test = layout(root)
    if test is None:  # then a fraction of each class is held out
        _number(OmegaConf.create({"dataset": node}), "dataset.test_fraction", low=0, low_open=True, high=1)
    shape = OmegaConf.to_container(node.input_shape) if node.input_shape is not None else None
    if shape is not None and not (
        len(shape) == 3 and shape[0] in (1, 3) and all(isinstance(s, int) and s >= 1 for s in shape)
    ):
        allowed = "null or [C, H, W] with C 1 (grayscale) or 3 (RGB)"
        raise ConfigError(f"dataset.input_shape must be {allowed}, got {shape}")
    if node.resize is not None and not isinstance(node.resize, bool):
        raise ConfigError(f"dataset.resize must be null, true or false, got {node.resize!r}")
    names = class_folders(train)
    if node.num_classes not in (None, len(names)):
        found = f"{train} has {len(names)} class folders"
        raise ConfigError(f"dataset.num_classes={node.num_classes}, but {found}; leave it null")
    with open_dict(node):
        if node.resize is None:
            node.resize = shape is not None
        if shape is None:
            (first, _), *_ = images_in(train, {names[0]: 0})
            node.input_shape = _shape_of(first)
        node.num_classes = len(names)
        if node.classes is None:
            node.classes = names


def _shape_of(path: Path) -> list[int]:
    from PIL import Image

    try:
        with Image.open(path) as image:  # reads the header only
            return [1 if image.mode in GRAY else 3, image.height, image.width]
    except Exception as e:
        raise DataError(f"{path}: damaged or not an image ({type(e).__name__}: {e})") from e


class ImageFolderSource:
    """Images in ImageFolder's layout, decoded once into uint8 tensors of `input_shape`."""

    def __init__(
        self,
        name,
        root,
        input_shape,
        resize,
        num_classes,
        classes=None,
        test_fraction=0.2,
        seed=0,
        augment=False,
        crop_padding=0,
        flip=False,
        resample=False,
    ):
        self.name, self.root = name, Path(str(root)).expanduser()
        self.resample = resample
        self.input_shape, self.resize, self.num_classes = tuple(input_shape), resize, num_classes
        self.classes = class_names(classes, num_classes)
        self.test_fraction, self.seed = test_fraction, seed
        self.augmentation = Augmentation(augment, crop_padding, flip)

    def files(self) -> dict[str, list[tuple[Path, int]]]:
        """Each split's images with their labels."""
        train, test = layout(self.root)
        names = class_folders(train)
        index = {name: label for label, name in enumerate(names)}
        if test is None:
            return self.hold_out(images_in(train, index))
        if class_folders(test) != names:
            raise DataError(
                f"{test} has class folders {class_folders(test)}, {train} has {names}: both need the same"
            )
        return {"train": images_in(train, index), "test": images_in(test, index)}

    def hold_out(self, images: list[tuple[Path, int]]) -> dict[str, list[tuple[Path, int]]]:
        """`test_fraction` of each class (one image at least, where it has two), drawn from `seed` and
        the class's name alone: a class's split moves only when its own files change."""
        import torch

        by_class = defaultdict(list)
        for path, label in images:
            by_class[label].append((path, label))
        split = {"train": [], "test": []}
        for label, members in sorted(by_class.items()):
            n_test = min(len(members) - 1, max(1, round(len(members) * self.test_fraction)))
            key = hashlib.sha256(f"{self.seed}/{self.classes[label]}".encode()).digest()[:7]
            order = torch.randperm(len(members), generator=torch.Generator().manual_seed(int.from_bytes(key)))
            held = set(order[:n_test].tolist())
            for i, member in enumerate(members):
                split["test" if i in held else "train"].append(member)
        if not split["test"]:
            raise DataError(f"{self.root}: every class has a single image, so none can be held out to test")
        return split

    def load(self, data_dir: Path) -> Raw:
        split = self.files()
        settings = [str(self.root.resolve()), list(self.input_shape), self.resize, self.test_fraction]
        key = hashlib.sha256(json.dumps([*settings, self.seed]).encode()).hexdigest()[:12]  # one per size

        def decode() -> Raw:
            import torch

            raw = {}
            for name, members in split.items():
                raw[f"x_{name}"] = torch.stack([self.read(path) for path, _ in members])
                raw[f"y_{name}"] = torch.tensor([label for _, label in members], dtype=torch.long)
            return raw

        files = {name: [path for path, _ in members] for name, members in split.items()}
        raw, digests = cached(data_dir / "cache" / f"{self.name}-{key}.pt", files, decode, root=self.root)
        raw = _check(self.name, raw, self.input_shape, self.num_classes)
        parts = {name: self.per_class(digests[name], members) for name, members in split.items()}
        return {**raw, "lineage": _lineage(self.name, parts, str(self.root.resolve()), raw, self.classes)}

    def per_class(self, digests: dict[str, str], members: list[tuple[Path, int]]) -> dict[str, str]:
        """Class name -> sha256 of its images' `sha256sum` lines (sorted by path): one entry per class
        in the dataset record, not one per file."""
        lines = defaultdict(list)
        for path, label in members:
            relative = path.relative_to(self.root).as_posix()
            lines[self.classes[label]].append(f"{digests[relative]}  {relative}\n")
        return {c: hashlib.sha256("".join(sorted(lines[c])).encode()).hexdigest() for c in sorted(lines)}

    def read(self, path: Path) -> torch.Tensor:
        """One image as uint8 C x H x W: converted to C channels, resized to H x W if `resize`."""
        from PIL import Image
        from torchvision.transforms.v2 import functional as F

        try:
            with Image.open(path) as image:
                pixels = F.pil_to_tensor(image.convert("L" if self.input_shape[0] == 1 else "RGB"))
        except Exception as e:  # whatever PIL raises for a damaged file (OSError, SyntaxError, zlib.error...)
            raise DataError(f"{path}: damaged or not an image ({type(e).__name__}: {e})") from e
        size = list(self.input_shape[1:])
        if list(pixels.shape[1:]) == size:
            return pixels
        if not self.resize:
            h, w = pixels.shape[1:]
            raise DataError(
                f"{path} is {h}x{w} pixels, not the {size[0]}x{size[1]} of dataset.input_shape, and "
                "dataset.resize is false (the folder mixes sizes): set dataset.input_shape=[C,H,W] to "
                "resize every image to one size"
            )
        return F.resize(pixels, size, antialias=True)  # torchvision's Resize: bilinear, antialiased
