"""The course's networks: an MLP and a small CNN family, sized from the dataset's input shape."""

import math
from collections.abc import Callable, Sequence

from torch import nn


class ShapeError(ValueError):
    """A layer would receive an input smaller than it can handle."""


def conv_out(size: int, kernel: int, padding: int = 0, stride: int = 1) -> int:
    """The course's formula: O = (I - F + 2P) / S + 1."""
    return (size - kernel + 2 * padding) // stride + 1


def cnn_shapes(
    input_shape: Sequence[int],
    channels: Sequence[int],
    kernel_size: int,
    padding: int,
    pool: int | None,
) -> list[tuple[str, tuple[int, int, int]]]:
    """Each conv/pool layer's name and output shape (C, H, W); ShapeError if one falls below 1x1."""
    c, h, w = input_shape
    shapes = []
    for i, out_c in enumerate(channels, 1):
        steps = [(f"conv{i}", kernel_size, padding, 1)]
        if pool:
            steps.append((f"pool{i}", pool, 0, pool))
        for name, k, p, s in steps:
            new_h, new_w = conv_out(h, k, p, s), conv_out(w, k, p, s)
            if new_h < 1 or new_w < 1:
                raise ShapeError(
                    f"{name} (kernel {k}, padding {p}, stride {s}) gets {c}x{h}x{w} and would give "
                    f"{new_h}x{new_w} by O = (I - F + 2P)/S + 1; use fewer layers, "
                    "more padding or a larger input"
                )
            c, h, w = out_c, new_h, new_w
            shapes.append((name, (c, h, w)))
    return shapes


def head_layers(head: str | None) -> list[nn.Module]:
    """What ends the network: nothing (logits), softmax or log-softmax, as the loss expects."""
    return {None: [], "softmax": [nn.Softmax(dim=1)], "log_softmax": [nn.LogSoftmax(dim=1)]}[head]


class MLP(nn.Sequential):
    """Flatten -> (Linear -> activation) per hidden size -> Linear -> head."""

    def __init__(
        self,
        input_shape: Sequence[int],
        hidden_sizes: Sequence[int],
        num_classes: int,
        activation: Callable[[], nn.Module],
        head: str | None = None,
    ):
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for size in hidden_sizes:
            layers += [nn.Linear(width, size), activation()]
            width = size
        layers += [nn.Linear(width, num_classes), *head_layers(head)]
        super().__init__(*layers)
        self.input_shape = tuple(input_shape)


class CNN(nn.Sequential):
    """(Conv -> BatchNorm? -> activation -> MaxPool?) per channel count -> Flatten -> Linear -> head."""

    def __init__(
        self,
        input_shape: Sequence[int],
        channels: Sequence[int],
        kernel_size: int,
        padding: int,
        pool: int | None,
        batch_norm: bool,
        num_classes: int,
        activation: Callable[[], nn.Module],
        head: str | None = None,
    ):
        final_c, final_h, final_w = cnn_shapes(input_shape, channels, kernel_size, padding, pool)[-1][1]
        layers: list[nn.Module] = []
        in_c = input_shape[0]
        for out_c in channels:
            layers.append(nn.Conv2d(in_c, out_c, kernel_size, padding=padding))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_c))
            layers.append(activation())
            if pool:
                layers.append(nn.MaxPool2d(pool))
            in_c = out_c
        layers += [nn.Flatten(), nn.Linear(final_c * final_h * final_w, num_classes)]
        super().__init__(*layers, *head_layers(head))
        self.input_shape = tuple(input_shape)
