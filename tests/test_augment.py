"""Augmentation on the device: crops and flips are right, seeded, off by default, NHWC-preserving."""

import itertools

import pytest
import torch
from torch.nn import functional as F

from archbench import app
from archbench.augment import RandomCropFlip, augmentation
from archbench.data import Augmentation
from conftest import all_runs, compose_job
from test_lifecycle import final_metrics

FILL = -9.0


def candidates(image: torch.Tensor, p: int, flip: bool) -> list[torch.Tensor]:
    """Every crop torchvision's RandomCrop(padding=p) (+ RandomHorizontalFlip) could give, one by one."""
    padded = F.pad(image, (p, p, p, p), value=FILL)
    h, w = image.shape[-2:]
    found = []
    offsets = range(2 * p + 1)
    for dy, dx, mirror in itertools.product(offsets, offsets, (False, True) if flip else (False,)):
        crop = padded[..., dy : dy + h, dx : dx + w]
        found.append(crop.flip(-1) if mirror else crop)
    return found


@pytest.mark.parametrize(("p", "flip"), [(1, True), (2, False), (0, True)])
def test_every_output_is_a_padded_crop_and_all_crops_occur(p, flip):
    x = torch.arange(64 * 2 * 3 * 4, dtype=torch.float32).view(64, 2, 3, 4)
    augment = RandomCropFlip(p, flip, torch.full((1, 2, 1, 1), FILL), seed=0)
    seen = set()
    for _ in range(10):
        out = augment(x)
        assert out.shape == x.shape
        for image, result in zip(x, out, strict=True):
            options = candidates(image, p, flip)
            (match,) = [i for i, c in enumerate(options) if torch.equal(c, result)] or [None]
            assert match is not None, f"not a crop of the padded image:\n{result}"
            seen.add(match)
    assert len(seen) == (2 * p + 1) ** 2 * (2 if flip else 1), "some offsets or flips never drawn"


def test_padding_is_each_channels_fill_and_the_layout_is_kept():
    x = torch.randn(32, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    fill = torch.tensor([10.0, 20.0, 30.0]).view(1, 3, 1, 1)
    out = RandomCropFlip(4, True, fill, seed=1)(x)
    assert out.is_contiguous(memory_format=torch.channels_last)
    padded = out[:, 0] == 10.0  # randn never gives exactly 10: these pixels are padding
    assert padded.any() and (out[:, 1][padded] == 20.0).all() and (out[:, 2][padded] == 30.0).all()
    plain = RandomCropFlip(4, True, fill, seed=1)(x.contiguous())
    assert plain.is_contiguous() and torch.equal(plain, out)


def test_seeded_and_apart_from_the_other_random_streams():
    x = torch.randn(16, 1, 6, 6)
    fill = torch.zeros(1, 1, 1, 1)
    global_state = torch.get_rng_state()
    a, b, c = (RandomCropFlip(2, True, fill, seed=s) for s in (0, 0, 1))
    outs = [[f(x) for _ in range(3)] for f in (a, b, c)]
    assert all(torch.equal(u, v) for u, v in zip(outs[0], outs[1], strict=True)), "same seed, same crops"
    assert not all(torch.equal(u, v) for u, v in zip(outs[0], outs[2], strict=True)), "seed 1 differs"
    assert torch.equal(torch.get_rng_state(), global_state), "the global RNG (init, dropout) is untouched"


@pytest.mark.parametrize("dataset", ["fashion_mnist", "mnist", "cifar10", "synthetic"])
def test_off_by_default(tmp_path, dataset):
    cfg = compose_job(tmp_path, f"dataset={dataset}")
    assert cfg.dataset.augment is False
    spec = Augmentation(cfg.dataset.augment, cfg.dataset.crop_padding, cfg.dataset.flip)
    assert augmentation(spec, torch.zeros(1, 1, 1, 1), 0) is None
    assert cfg.dataset.flip is (dataset not in ("mnist", "synthetic"))  # digits are not mirrored


@pytest.mark.slow
def test_a_run_with_augmentation_trains_on_other_images(tmp_path):
    # the same seed, so the same init and batches: only the crops and flips differ (resume tests in
    # test_schedule.py check that an augmented run repeats exactly)
    results = []
    for name in ("true", "false"):
        app.main(compose_job(tmp_path / name, "dataset.train_size=400", f"dataset.augment={name}"))
        (run,) = all_runs(tmp_path / name)
        results.append(final_metrics(tmp_path / name, run.info.run_id))
        assert run.data.params["dataset.augment"] == name.title()
    assert results[0] != results[1]
