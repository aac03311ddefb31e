"""Early stopping on validation accuracy, keeping the best epoch's weights (Keras' EarlyStopping with
restore_best_weights, always restored: the run's final figures and model are its best epoch's)."""

import logging
import math

import torch
from torch import nn

log = logging.getLogger(__name__)

STATE = ("best", "best_epoch", "best_scores", "best_weights", "waited", "last_epoch")  # the checkpoint's


class EarlyStopping:
    """Stop once val_accuracy has not gained more than `min_delta` for `patience` epochs in a row."""

    def __init__(self, patience: int, min_delta: float = 0.0):
        self.patience, self.min_delta = patience, min_delta
        self.best = -math.inf  # val_accuracy of the best epoch
        self.best_epoch = 0
        self.best_scores: dict[str, float] = {}  # that epoch's test and validation figures
        self.best_weights: dict[str, torch.Tensor] | None = None
        self.waited = 0  # epochs since the best one
        self.last_epoch = 0

    @property
    def stopped(self) -> bool:
        return self.waited >= self.patience

    def update(self, epoch: int, scores: dict[str, float], model: nn.Module) -> None:
        """Judge the epoch that just ended by its scores; keep a copy of its weights if it is the best."""
        self.last_epoch = epoch
        if scores["val_accuracy"] > self.best + self.min_delta:
            self.best, self.best_epoch, self.best_scores = scores["val_accuracy"], epoch, dict(scores)
            self.best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
            self.waited = 0
            return
        self.waited += 1
        if self.stopped:
            gain = f"val_accuracy has not gained more than {self.min_delta:g} for {self.waited} epochs"
            log.info("early stopping after epoch %d: %s", epoch, gain)

    def restore_best(self, model: nn.Module) -> dict[str, float]:
        """Put the best epoch's weights back; returns its figures with best_epoch and stopped_epoch."""
        model.load_state_dict(self.best_weights)
        best = f"epoch {self.best_epoch}'s (val_accuracy {self.best:.4f})"
        log.info("the model is %s, the best of %d epochs", best, self.last_epoch)
        return {**self.best_scores, "best_epoch": self.best_epoch, "stopped_epoch": self.last_epoch}

    def state_dict(self) -> dict:
        return {key: getattr(self, key) for key in STATE}

    def load_state_dict(self, state: dict) -> None:
        for key in STATE:
            setattr(self, key, state[key])
