"""Random crop and horizontal flip of a whole training batch at once, on the tensors' own device.

What torchvision's RandomCrop(size, padding) + RandomHorizontalFlip do per PIL image, done for the
batch with two gathers: no PIL, no DataLoader, no Python loop over samples. The padding is a raw 0
(black) pixel, normalised like the data, as torchvision pads before its Normalize.
"""

import torch

# XORed into the run's seed: the augmentation's stream is not the shuffle's (seeded with the seed
# itself), so switching augmentation on leaves init, batch order and validation split as they were.
STREAM = 0x5EED_A116


class RandomCropFlip:
    """Pad each image by `padding` pixels of `fill`, crop it back at a random offset, mirror half."""

    def __init__(self, padding: int, flip: bool, fill: torch.Tensor, seed: int):
        self.padding, self.flip = padding, flip
        self.fill = fill  # per channel, shaped (1, C, 1, 1): the normalised value of a raw 0 pixel
        self.generator = torch.Generator(fill.device).manual_seed(seed ^ STREAM)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        p = self.padding
        # Per sample, the padded image's row and column that each output pixel comes from: a random
        # offset in 0..2p plus 0..size-1, the columns reversed for the samples that are mirrored.
        rows = self._offsets(n, p, x.device) + torch.arange(h, device=x.device)
        cols = torch.arange(w, device=x.device).expand(n, w)
        if self.flip:
            mirrored = torch.rand((n, 1), device=x.device, generator=self.generator) < 0.5
            cols = torch.where(mirrored, cols.flip(1), cols)
        cols = cols + self._offsets(n, p, x.device)
        padded = self.fill.to(x.dtype).expand(n, c, h + 2 * p, w + 2 * p).clone()
        padded[:, :, p : p + h, p : p + w] = x
        out = padded.gather(2, rows.view(n, 1, h, 1).expand(n, c, h, w + 2 * p))
        out = out.gather(3, cols.view(n, 1, 1, w).expand(n, c, h, w))
        # conv nets train in NHWC (train.channels_last): hand the batch back in the layout it came in
        nhwc = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        return out.contiguous(memory_format=torch.channels_last if nhwc else torch.contiguous_format)

    def _offsets(self, n: int, p: int, device: torch.device) -> torch.Tensor:
        return torch.randint(0, 2 * p + 1, (n, 1), device=device, generator=self.generator)


def augmentation(spec, fill: torch.Tensor, seed: int) -> RandomCropFlip | None:
    """The dataset's augmentation (its YAML's augment, crop_padding and flip keys), or None when off."""
    return RandomCropFlip(spec.crop_padding, spec.flip, fill, seed) if spec.augment else None
