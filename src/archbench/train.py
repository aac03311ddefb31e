"""The training loop: an epoch is index slices of a fresh permutation of tensors already on the device.

Nothing here reads the device's numbers back per batch (that would stall CUDA): loss sums and
correct counts accumulate on the device and are read once per epoch, plus one finite-loss check
every `check_every` batches. Returns plain numbers; tracking happens in the caller's callback.
Around the loop, each optional: an lr schedule, early stopping, augmentation of each batch, and the
debug options limit_batches (shorter epochs) and overfit_batches (the same batches every step).
"""

import ctypes
import math
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from hydra.errors import CompactHydraException
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm as _bars
from tqdm.auto import tqdm

from archbench.augment import RandomCropFlip
from archbench.debug import check_overfit, epoch_batches
from archbench.splits import Splits
from archbench.stopping import EarlyStopping

# tqdm guards its bars with a multiprocessing lock: a named semaphore, which only the process's own
# Python exit unlinks. A sweep's workers end without it (exiting.py), and the resource tracker then
# warned of "leaked semaphore objects". One process's bars need only a thread lock.
_bars.set_lock(threading.RLock())


class Diverged(CompactHydraException):
    """The training loss became NaN or infinite."""


class OneHotMSELoss(nn.Module):
    """Mean squared error against one-hot targets (the course's MSE example)."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(output, F.one_hot(target, self.num_classes).to(output.dtype))


@dataclass
class Trainer:
    """What stays fixed over a run: the model, its optimiser and loss, and how batches are run."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    criterion: nn.Module
    batch_size: int
    generator: torch.Generator  # shuffling, kept apart from the global RNG so a resume can restore it
    amp: bool | str = "auto"  # bf16 autocast: auto = on CUDA only, true = wherever supported
    progress: bool = True
    # a job of a parallel sweep: (its line on the terminal, its label): one bar, for its epochs only,
    # so that the jobs running at once each keep a line of their own
    bar: tuple[int, str] | None = None
    check_every: int = 100  # batches between finite-loss checks
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    interval: str = "epoch"  # when the scheduler steps: after every "epoch" or every "batch"
    monitor: str | None = None  # the epoch metric given to scheduler.step() (ReduceLROnPlateau's)
    stopper: EarlyStopping | None = None
    augment: RandomCropFlip | None = None  # applied to each training batch
    limit_batches: int | float | None = None  # batches per epoch: a count, or a fraction of them all
    overfit_batches: int | None = None  # train on the first N batches only, the same every step

    @property
    def module(self) -> nn.Module:
        """The model itself, not its torch.compile wrapper."""
        return getattr(self.model, "_orig_mod", self.model)

    def checkpoint(self, epoch: int) -> dict:
        """Everything needed to continue after `epoch` exactly as if never stopped."""
        return {
            "epoch": epoch,
            "model": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "shuffle_rng": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "early_stopping": self.stopper.state_dict() if self.stopper else None,
            "augment_rng": self.augment.generator.get_state() if self.augment else None,
        }

    def restore(self, state: dict) -> int:
        """Load a checkpoint; returns the epoch it was taken after."""
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["shuffle_rng"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        for part, target in (("scheduler", self.scheduler), ("early_stopping", self.stopper)):
            if target is not None and state.get(part) is not None:
                target.load_state_dict(state[part])
        if self.augment is not None and state.get("augment_rng") is not None:
            self.augment.generator.set_state(state["augment_rng"])
        return state["epoch"]

    def autocast(self, device: torch.device):
        if self.amp is True or (self.amp == "auto" and device.type == "cuda"):
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return nullcontext()

    def batches_per_epoch(self, n: int) -> int:
        """Training steps per epoch over `n` samples, after limit_batches and overfit_batches."""
        return epoch_batches(n, self.batch_size, self.limit_batches, self.overfit_batches)

    def epoch_order(self, n: int, device: torch.device) -> torch.Tensor:
        """The sample indices of one epoch, batch after batch: a fresh permutation, cut short by
        limit_batches; or the first overfit_batches batches in order, cycled, the same every step."""
        size = self.batches_per_epoch(n) * self.batch_size
        if self.overfit_batches:
            fixed = torch.arange(min(n, self.overfit_batches * self.batch_size), device=device)
            return fixed.repeat(-(-size // len(fixed)))[:size]
        # drawn whole even when cut short: the generator moves as in a full epoch
        return torch.randperm(n, device=device, generator=self.generator)[:size]

    def train_one_epoch(self, x: torch.Tensor, y: torch.Tensor, epoch: int) -> tuple[float, float]:
        """One epoch over (x, y) in the order `epoch_order` gives; returns mean loss and accuracy."""
        self.model.train()
        order = self.epoch_order(len(x), x.device)
        # Per batch only what cannot wait: the loss kept as a device tensor, the predictions
        # written into their slot. Both are reduced once, after the epoch.
        losses = []
        predicted = torch.empty_like(order)
        starts = range(0, len(order), self.batch_size)
        for step, start in enumerate(
            tqdm(starts, desc=f"epoch {epoch}", leave=False, disable=True if self.bar else self._quiet)
        ):
            idx = order[start : start + self.batch_size]
            xb, yb = x.index_select(0, idx), y.index_select(0, idx)  # cheaper than x[idx]
            if self.augment is not None:
                xb = self.augment(xb)
            with self.autocast(x.device):
                out = self.model(xb)
                loss = self.criterion(out, yb)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            if self.scheduler is not None and self.interval == "batch":
                self.scheduler.step()
            losses.append(loss.detach())
            torch.argmax(out.detach(), 1, out=predicted[start : start + self.batch_size])
            if step % self.check_every == 0 and not math.isfinite(loss.item()):
                raise Diverged(self._diverged(loss.item(), epoch, step))
        steps = _widened(torch.stack(losses))
        sizes = torch.full((len(losses),), float(self.batch_size), device=x.device, dtype=steps.dtype)
        sizes[-1] = len(order) - self.batch_size * (len(losses) - 1)
        mean_loss = float(steps @ sizes) / len(order)
        if not math.isfinite(mean_loss):
            raise Diverged(self._diverged(mean_loss, epoch, len(starts) - 1))
        return mean_loss, (predicted == y.index_select(0, order)).sum().item() / len(order)

    @torch.inference_mode()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor, batch_size: int = 10_000) -> tuple[float, float]:
        """Mean loss and accuracy over (x, y), in large batches."""
        self.model.eval()
        loss_sum = torch.zeros((), device=x.device)
        correct = torch.zeros((), device=x.device, dtype=torch.long)
        for start in range(0, len(x), batch_size):
            xb, yb = x[start : start + batch_size], y[start : start + batch_size]
            with self.autocast(x.device):
                out = self.model(xb)
                loss_sum += self.criterion(out.float(), yb) * len(xb)
            correct += (out.argmax(1) == yb).sum()
        return loss_sum.item() / len(x), correct.item() / len(x)

    def fit(
        self,
        data: Splits,
        epochs: int,
        start_epoch: int = 1,
        on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
    ) -> dict[str, float]:
        """Train epochs start_epoch..epochs; per-epoch metrics go to `on_epoch_end(epoch, metrics)`.

        Returns the last epoch's test (and validation) loss and accuracy; with early stopping, the
        best epoch's, whose weights the model then has again, with best_epoch and stopped_epoch.
        """
        final: dict[str, float] = {}
        line, label = self.bar or (None, "epochs")
        epoch_bar = tqdm(
            range(start_epoch, epochs + 1), desc=label, position=line, leave=line is None, disable=self._quiet
        )
        for epoch in epoch_bar:
            if self.stopper is not None and self.stopper.stopped:  # also when resumed after the stop
                break
            lr = self.optimizer.param_groups[0]["lr"]  # the lr the epoch starts with
            _sync(data.x_train.device)
            tic = time.perf_counter()
            train_loss, train_acc = self.train_one_epoch(data.x_train, data.y_train, epoch)
            _sync(data.x_train.device)
            metrics = {"train_loss": train_loss, "train_accuracy": train_acc}
            metrics["epoch_time_s"] = time.perf_counter() - tic
            final = self.scores(data)
            metrics.update(final, lr=lr)
            if self.scheduler is not None and self.interval == "epoch":
                if self.monitor:
                    self.scheduler.step(metrics[self.monitor])  # ReduceLROnPlateau
                else:
                    self.scheduler.step()
            if self.stopper is not None:
                self.stopper.update(epoch, final, self.module)
            if on_epoch_end:  # after the scheduler and stopper moved: the checkpoint has them as now
                on_epoch_end(epoch, metrics)
        if self.overfit_batches:  # judged on the samples it trained on, as the model is now
            n = min(len(data.x_train), self.overfit_batches * self.batch_size)
            accuracy = self.evaluate(data.x_train[:n], data.y_train[:n])[1]
            check_overfit(
                accuracy, n, self.overfit_batches, epochs * self.batches_per_epoch(len(data.x_train))
            )
            final["overfit_accuracy"] = accuracy  # the check's own figure, not train_accuracy's mean
        if self.stopper is not None:
            return self.stopper.restore_best(self.module)
        return final or self.scores(data)  # resumed after the last epoch: nothing left to train

    def scores(self, data: Splits) -> dict[str, float]:
        """Test (and validation) loss and accuracy."""
        found = {}
        for split, x, y in (("test", data.x_test, data.y_test), ("val", data.x_val, data.y_val)):
            if x is not None:
                found[f"{split}_loss"], found[f"{split}_accuracy"] = self.evaluate(x, y)
        return found

    @property
    def _quiet(self) -> bool | None:
        return True if not self.progress else None  # None: tqdm shows bars on a terminal only

    def _diverged(self, value: float, epoch: int, step: int) -> str:
        lr = self.optimizer.param_groups[0]["lr"]
        return (
            f"training loss became {value} at epoch {epoch}, batch {step + 1}: "
            f"the run diverged; try a smaller optimizer.lr (now {lr})"
        )

    @torch.inference_mode()
    def predict(self, x: torch.Tensor, batch_size: int = 10_000) -> torch.Tensor:
        """The predicted class of every sample of x, on x's device."""
        self.model.eval()
        with self.autocast(x.device):
            batches = (x[i : i + batch_size] for i in range(0, len(x), batch_size))
            return torch.cat([self.model(xb).argmax(1) for xb in batches])


def place(model: nn.Module, data: Splits, channels_last: bool) -> nn.Module:
    """The model on the data's device; conv nets and their inputs in NHWC if `channels_last`.

    NHWC is what cuDNN's and oneDNN's fast convolution kernels want: on a 2-core Xeon (AVX-512)
    it cut a cnn2 epoch from 8.0 to 6.8 s. MLPs stay as they are (flattening NHWC costs a copy).
    """
    device = data.x_train.device
    if not (channels_last and any(isinstance(m, nn.Conv2d) for m in model.modules())):
        return model.to(device)
    for name in ("x_train", "x_test", "x_val"):
        x = getattr(data, name)
        if x is not None:
            setattr(data, name, x.contiguous(memory_format=torch.channels_last))
    return model.to(device, memory_format=torch.channels_last)


def keep_freed_memory() -> None:
    """Have glibc reuse freed memory for the next batch's tensors instead of returning it to the OS.

    By default glibc serves large blocks (a conv layer's activations, megabytes) with fresh mmaps
    and unmaps them on free, so each batch faults its pages in again, as often as a threshold
    glibc adapts on its own decides. Pinned, a cnn2 epoch on a 2-core Xeon took 4.7 s every time
    instead of anywhere from 4.7 to 7.4 s. A no-op where the C library is not glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 * 2**20)  # M_MMAP_THRESHOLD: blocks under 32 MiB come from the heap
        libc.mallopt(-1, 2**30)  # M_TRIM_THRESHOLD: keep up to 1 GiB of freed heap for reuse
    except (OSError, AttributeError):
        pass


def _widened(values: torch.Tensor) -> torch.Tensor:
    """Losses to sum: bf16 (autocast) and float32 in float32, float64 as it is."""
    return values if values.dtype == torch.float64 else values.float()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
