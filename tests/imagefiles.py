"""Small image folders in torchvision's ImageFolder layout, written by the tests: generated shapes as PNGs."""

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle")


def shape_image(kind: str, rng: np.random.Generator, size: tuple[int, int] = (28, 28), mode: str = "L"):
    """One white-ish `kind` on a dark noisy background, at a random place and size: learnable, not trivial."""
    h, w = size
    background = rng.integers(0, 60, (h, w, 3)).astype(np.uint8)
    image = Image.fromarray(background, "RGB")
    draw = ImageDraw.Draw(image)
    r = rng.uniform(0.2, 0.4) * min(h, w)
    cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
    colour = tuple(int(c) for c in rng.integers(150, 256, 3))
    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif kind == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=colour)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    return image.convert(mode)


def write_image_folder(
    root: Path,
    per_class: int = 80,
    test_per_class: int | None = 20,
    classes=SHAPES,
    size: tuple[int, int] = (28, 28),
    mode: str = "L",
    seed: int = 0,
) -> dict[str, list[Path]]:
    """ROOT/train/<class>/NNN.png and ROOT/test/<class>/NNN.png; with test_per_class=None, ROOT/<class>/
    only (a test fraction is then held out). Returns the files written per split."""
    rng = np.random.default_rng(seed)
    splits = {"train": per_class} if test_per_class is None else {"train": per_class, "test": test_per_class}
    written: dict[str, list[Path]] = {}
    for split, n in splits.items():
        base = root if test_per_class is None else root / split
        for kind in classes:
            (base / kind).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                path = base / kind / f"{i:03d}.png"
                shape_image(kind, rng, size, mode).save(path)
                written.setdefault(split, []).append(path)
    return written
