"""Debug runs: shorter epochs (train.limit_batches), the overfit check (train.overfit_batches) and
the tag that keeps both from being taken for results. The presets are conf/debug/*.yaml."""

import logging
import math

from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from omegaconf import DictConfig

log = logging.getLogger(__name__)

OVERFIT_TARGET = 0.99  # accuracy on the fixed batches that counts as learnt: ~100%, one slip in 100


class CannotOverfit(CompactHydraException):
    """train.overfit_batches: the model did not learn the few batches it saw over and over."""

    def __init__(self, message: str, accuracy: float):
        super().__init__(message)
        self.accuracy = accuracy  # logged as overfit_accuracy: the failed run's record shows it


def epoch_batches(n: int, batch_size: int, limit: int | float | None, overfit: int | None) -> int:
    """Steps per epoch over `n` samples: all their batches, or overfit's; `limit` of them (a count, or
    a fraction). With overfit_batches the fixed batches are cycled, so an int limit may exceed them."""
    available = overfit or math.ceil(n / batch_size)
    if limit is None:
        return available
    if isinstance(limit, float):
        return max(1, int(limit * available))
    return limit if overfit else min(limit, available)


def check_overfit(accuracy: float, samples: int, overfit_batches: int, steps: int) -> None:
    """Fail the run unless `accuracy` on the `samples` it was trained on over and over is ~100%."""
    seen = f"accuracy {accuracy:.3f} on the {samples} samples of train.overfit_batches={overfit_batches}"
    if accuracy < OVERFIT_TARGET:
        raise CannotOverfit(
            f"overfit check failed: {seen} after {steps} steps (needs {OVERFIT_TARGET}): a network "
            "that cannot memorise a few batches usually has a bug (a head that does not fit the loss, "
            "layers not connected to the output) or an optimizer.lr far too small or too large; slow "
            "learners (deep sigmoid nets, loss=mse) may only need more steps: train.limit_batches=2000",
            accuracy,
        )
    log.info("overfit check passed: %s after %d steps", seen, steps)


def debug_tag(cfg: DictConfig) -> dict[str, str]:
    """{archbench.debug: what shrank the run} (the +debug preset, or the keys), or {} for a real run."""
    preset = HydraConfig.get().runtime.choices.get("debug")
    keys = [f"{k}={cfg.train[k]}" for k in ("limit_batches", "overfit_batches") if cfg.train[k] is not None]
    return {"archbench.debug": str(preset or " ".join(keys))} if preset or keys else {}
