"""The course's view of a network: torchinfo's summary and a parameter breakdown."""

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
    return str(stats)


def breakdown(model: nn.Module) -> str:
    counts = parameter_counts(model)
    width = max(len(k) for k in counts)
    return "\n".join(f"{k.replace('_', '-'):<{width}}  {v:>12,}" for k, v in counts.items())
