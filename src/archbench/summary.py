"""The course's view of a network: torchinfo's summary and a parameter breakdown."""

import re

import torchinfo
from torch import nn


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Weights, biases, nodes (one per bias, as the course counts them), trainable and not."""
    biases = sum(p.numel() for name, p in model.named_parameters() if name.endswith("bias"))
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "weights": total - biases,
        "biases": biases,
        "nodes": biases,
        "total": total,
        "trainable": trainable,
        "non_trainable": total - trainable,
    }


def model_summary(model: nn.Module, input_shape, batch_size: int = 1, device="cpu") -> str:
    """torchinfo's table for a batch of `input_shape`, run in eval mode (BatchNorm stats untouched)."""
    stats = torchinfo.summary(
        model,
        input_size=(batch_size, *input_shape),
        device=device,
        mode="eval",
        col_width=16,
        col_names=("input_size", "output_size", "num_params", "mult_adds"),
        verbose=0,
    )
    # torchinfo 1.8 formats its unit enum with str(), which Python 3.11 turned from "M" into
    # "Units.MEGABYTES": the line read "Total mult-adds (Units.MEGABYTES): 7.95". Written anew
    # from the number, in torchinfo's own units, whatever its version prints.
    unit, value = _unit(stats.total_mult_adds)
    return re.sub(
        r"^Total mult-adds.*$", f"Total mult-adds ({unit}): {value:.2f}", str(stats), count=1, flags=re.M
    )


def mult_adds(model: nn.Module, input_shape, device="cpu") -> int:
    """Multiply-adds of one forward pass of one sample (torchinfo's count), in eval mode."""
    stats = torchinfo.summary(model, input_size=(1, *input_shape), device=device, mode="eval", verbose=0)
    return int(stats.total_mult_adds)


def _unit(count: int) -> tuple[str, float]:
    """torchinfo's display units: millions, billions (G) or trillions (T)."""
    for unit, size in (("T", 1e12), ("G", 1e9)):
        if count >= size:
            return unit, count / size
    return "M", count / 1e6


def breakdown(model: nn.Module) -> str:
    counts = parameter_counts(model)
    width = max(len(k) for k in counts)
    return "\n".join(f"{k.replace('_', '-'):<{width}}  {v:>12,}" for k, v in counts.items())
