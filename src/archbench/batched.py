"""Seeds trained together: K copies of one network as one batched model (issue 34, item 3).

The K members' parameters are stacked along a first dimension (torch.func.stack_module_state), and
one forward pass runs them all (torch.func.vmap over functional_call), each on its own batch: member
k draws its epoch order from its own generator, seeded as its run alone would be. The loss is the
sum of the members' own losses, so each member's gradient is exactly its own; and an elementwise
optimizer (SGD, Adam, AdamW, RMSprop) on the stacked tensors is exactly K optimizers, one per member.
So each member trains as it would alone, up to the rounding of a batched matmul (tests/test_batched.py:
1e-10 in float64 over 200 steps), and yields a checkpoint an alone run can resume.

Small networks gain: per batch, one call does the work of K, where each alone paid the same fixed
cost per operation (benchmarks/batched_seeds.py, docs/speed.md). Large ones do not.

Not here: anything that draws random numbers or keeps buffers in training (dropout, BatchNorm), per
member schedules or stops (ReduceLROnPlateau, early stopping), and per-seed data (a validation split,
resampling, augmentation): `why_not` names what a config has that rules it out.
"""

import copy
import math
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap
from tqdm.auto import tqdm

from archbench.train import Diverged, Trainer, _sync, _widened

# Optimizers whose step treats each element of a parameter on its own: one over stacked tensors is
# one per member. (LBFGS, or any norm over a whole tensor, would mix the members.)
ELEMENTWISE = ("SGD", "Adam", "AdamW", "RMSprop")


class Stack(nn.Module):
    """K networks of one shape as one module: forward takes (K, B, ...) and returns (K, B, classes)."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        params, buffers = stack_module_state(members)
        if buffers:
            raise ValueError(f"a network with buffers (BatchNorm) cannot train together: {sorted(buffers)}")
        if any(isinstance(m, nn.modules.dropout._DropoutNd) for m in members[0].modules()):
            raise ValueError("a network with dropout cannot train together: its masks would not be its own")
        self.names = list(params)
        self.stacked = nn.ParameterList([nn.Parameter(params[n].detach().clone()) for n in self.names])
        self.base = [copy.deepcopy(members[0]).to("meta")]  # a list: not a submodule of the stack
        self.size = len(members)

    def _one(self, params: tuple, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.base[0], dict(zip(self.names, params, strict=True)), (x,))

    def forward(self, x: torch.Tensor, shared: bool = False) -> torch.Tensor:
        """x: a batch per member, (K, B, ...); or, `shared`, one batch (B, ...) that every member sees."""
        return vmap(self._one, in_dims=(0, None if shared else 0))(tuple(self.stacked), x)

    def member(self, k: int) -> dict[str, torch.Tensor]:
        """Member k's state_dict, as its network alone would have it."""
        return {n: p[k].detach().clone() for n, p in zip(self.names, self.stacked, strict=True)}


def member_optimizer_state(optimizer: torch.optim.Optimizer, stack: Stack, k: int) -> dict:
    """Member k's share of the stacked optimizer's state_dict: what its optimizer alone would hold."""
    state = optimizer.state_dict()
    shapes = [p.shape for p in stack.stacked]
    own = {
        i: {key: v[k].clone() if torch.is_tensor(v) and v.shape == shapes[i] else v for key, v in s.items()}
        for i, s in state["state"].items()
    }
    return {"state": own, "param_groups": copy.deepcopy(state["param_groups"])}


class TogetherTrainer:
    """Trains a Stack: each member as `Trainer` would train it alone (its epoch order from its own
    generator), with one optimizer step for all. A member whose loss stops being finite is marked
    failed (its error kept) and leaves the others as they are: its slice of every tensor is its own."""

    def __init__(self, trainer: Trainer, stack: Stack, generators: list[torch.Generator]):
        self.trainer, self.stack, self.generators = trainer, stack, generators
        self.failed: dict[int, Diverged] = {}

    def train_one_epoch(self, x: torch.Tensor, y: torch.Tensor, epoch: int) -> list[tuple[float, float]]:
        t, K = self.trainer, self.stack.size
        self.stack.train()
        orders = []
        for g in self.generators:  # each as Trainer.epoch_order draws it alone
            t.generator = g
            orders.append(t.epoch_order(len(x), x.device))
        order = torch.stack(orders)
        losses, predicted = [], torch.empty_like(order)
        for step, start in enumerate(range(0, order.shape[1], t.batch_size)):
            idx = order[:, start : start + t.batch_size]
            xb = x.index_select(0, idx.reshape(-1)).view(*idx.shape, *x.shape[1:])
            yb = y.index_select(0, idx.reshape(-1)).view(idx.shape)
            with t.autocast(x.device):
                out = self.stack(xb)
                each = torch.stack([t.criterion(out[k], yb[k]) for k in range(K)])
            t.optimizer.zero_grad(set_to_none=True)
            each.sum().backward()
            t.optimizer.step()
            if t.scheduler is not None and t.interval == "batch":
                t.scheduler.step()
            losses.append(each.detach())
            torch.argmax(out.detach(), 2, out=predicted[:, start : start + t.batch_size])
            if step % t.check_every == 0:
                self._check(each, epoch, step)
        n = order.shape[1]
        steps = _widened(torch.stack(losses)).T.contiguous()  # (K, batches)
        sizes = torch.full((len(losses),), float(t.batch_size), device=x.device, dtype=steps.dtype)
        sizes[-1] = n - t.batch_size * (len(losses) - 1)
        # a dot product per member on its own row, as Trainer's: one matmul for all rounds differently
        means = torch.stack([steps[k] @ sizes for k in range(K)]) / n
        self._check(means, epoch, len(losses) - 1)
        correct = (predicted == y[order]).sum(1)
        return [(float(means[k]), correct[k].item() / n) for k in range(K)]

    def _check(self, losses: torch.Tensor, epoch: int, step: int) -> None:
        for k, value in enumerate(losses.tolist()):
            if k not in self.failed and not math.isfinite(value):
                self.failed[k] = Diverged(self.trainer._diverged(value, epoch, step))  # as alone

    @torch.inference_mode()
    def evaluate(
        self, x: torch.Tensor, y: torch.Tensor, batch_size: int = 10_000
    ) -> list[tuple[float, float]]:
        """Each member's mean loss and accuracy over (x, y)."""
        t, K = self.trainer, self.stack.size
        self.stack.eval()
        loss_sum = torch.zeros(K, device=x.device)
        correct = torch.zeros(K, device=x.device, dtype=torch.long)
        for start in range(0, len(x), batch_size):
            xb, yb = x[start : start + batch_size], y[start : start + batch_size]
            with t.autocast(x.device):
                out = self.stack(xb, shared=True)
                loss_sum += torch.stack([t.criterion(out[k].float(), yb) for k in range(K)]) * len(xb)
            correct += (out.argmax(2) == yb).sum(1)
        return [(loss_sum[k].item() / len(x), correct[k].item() / len(x)) for k in range(K)]

    @torch.inference_mode()
    def predict(self, x: torch.Tensor, batch_size: int = 10_000) -> torch.Tensor:
        """(K, N): each member's predicted class of every sample."""
        self.stack.eval()
        with self.trainer.autocast(x.device):
            batches = (x[i : i + batch_size] for i in range(0, len(x), batch_size))
            return torch.cat([self.stack(xb, shared=True).argmax(2) for xb in batches], dim=1)

    def scores(self, data) -> list[dict[str, float]]:
        found = [{} for _ in range(self.stack.size)]
        for split, x, y in (("test", data.x_test, data.y_test), ("val", data.x_val, data.y_val)):
            if x is not None:
                for k, (loss, acc) in enumerate(self.evaluate(x, y)):
                    found[k][f"{split}_loss"], found[k][f"{split}_accuracy"] = loss, acc
        return found

    def checkpoint(self, k: int, epoch: int, torch_rng: torch.Tensor) -> dict:
        """Member k's checkpoint, in Trainer.checkpoint's form: an alone run resumes from it."""
        t = self.trainer
        return {
            "epoch": epoch,
            "model": self.stack.member(k),
            "optimizer": member_optimizer_state(t.optimizer, self.stack, k),
            "shuffle_rng": self.generators[k].get_state(),
            "torch_rng": torch_rng,
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "scheduler": t.scheduler.state_dict() if t.scheduler else None,
            "early_stopping": None,
            "augment_rng": None,
        }

    def fit(
        self, data, epochs: int, on_epoch_end: Callable[[int, int, dict[str, float]], None] | None = None
    ) -> list[dict[str, float]]:
        """Train epochs 1..epochs; member k's metrics go to `on_epoch_end(k, epoch, metrics)` (not a
        failed member's). Returns each member's last test (and validation) figures."""
        t = self.trainer
        final: list[dict[str, float]] = [{} for _ in range(self.stack.size)]
        line, label = t.bar or (None, f"epochs ({self.stack.size} seeds together)")
        bar = tqdm(range(1, epochs + 1), desc=label, position=line, leave=line is None, disable=t._quiet)
        for epoch in bar:
            if len(self.failed) == self.stack.size:
                break
            lr = t.optimizer.param_groups[0]["lr"]
            _sync(data.x_train.device)
            tic = time.perf_counter()
            trained = self.train_one_epoch(data.x_train, data.y_train, epoch)
            _sync(data.x_train.device)
            # the batched epoch's time, shared evenly: what each member cost of it
            spent = (time.perf_counter() - tic) / self.stack.size
            final = self.scores(data)
            if t.scheduler is not None and t.interval == "epoch":
                t.scheduler.step()
            for k, (loss, acc) in enumerate(trained):
                if k in self.failed or on_epoch_end is None:
                    continue
                metrics = {"train_loss": loss, "train_accuracy": acc, "epoch_time_s": spent}
                on_epoch_end(k, epoch, {**metrics, **final[k], "lr": lr})
        return final


def why_not(cfg) -> str | None:
    """What in `cfg` keeps its seeds from training together; None where nothing does."""
    target = str(cfg.model.get("_target_", ""))
    if target.endswith(".CNN") and cfg.model.get("batch_norm"):
        return "model.batch_norm=true (BatchNorm's running statistics)"
    if not target.endswith((".MLP", ".CNN")):
        return f"model {target} is not one of archbench's MLP or CNN (its buffers and randomness unknown)"
    optimizer = str(cfg.optimizer.get("_target_", "")).rsplit(".", 1)[-1]
    if optimizer not in ELEMENTWISE:
        return f"optimizer {optimizer} is not elementwise ({', '.join(ELEMENTWISE)})"
    train = cfg.train
    checks = {
        "train.val_fraction > 0 (a validation split per seed)": train.val_fraction,
        "dataset.resample=true (a partition per seed)": cfg.dataset.get("resample"),
        "dataset.augment (random crops per seed)": cfg.dataset.get("augment"),
        "train.early_stopping (a stop per seed)": train.early_stopping.patience,
        "scheduler=plateau (a schedule per seed)": cfg.scheduler.get("monitor"),
        "train.limit_batches": train.limit_batches,
        "train.overfit_batches": train.overfit_batches,
        "train.compile": train.compile,
        "resume": cfg.get("resume"),
        "mode=inspect": cfg.get("mode") == "inspect",
    }
    return next((what for what, value in checks.items() if value), None)
