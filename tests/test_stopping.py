"""Early stopping: stops at the right epoch, and the run's model and final figures are its best epoch's."""

import pytest
import torch

from archbench import app
from archbench.config import ConfigError, validate
from archbench.stopping import EarlyStopping
from archbench.train import Trainer
from conftest import all_runs, compose_job, store

# val_accuracy per epoch: epoch 2 is the best; 0.605 is no gain over 0.60 with min_delta 0.01, so
# epochs 3 and 4 are two without one, and patience 2 stops the run after epoch 4 of 7.
VAL = [0.50, 0.60, 0.605, 0.59, 0.61, 0.70, 0.80]
TEST = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]  # scripted too, so the best epoch's figure is unmistakable


def test_stops_after_patience_epochs_and_restores_the_best(tmp_path, monkeypatch):
    snapshots, trainers = [], []
    real = Trainer.scores

    def scores(self, data):
        epoch = len(snapshots)
        snapshots.append({k: v.clone() for k, v in self.module.state_dict().items()})
        trainers.append(self)
        return {**real(self, data), "val_accuracy": VAL[epoch], "test_accuracy": TEST[epoch]}

    monkeypatch.setattr(Trainer, "scores", scores)
    args = ["train.epochs=7", "train.val_fraction=0.1", "train.checkpoint=false", "tracking.log_model=true"]
    patience = ["train.early_stopping.patience=2", "train.early_stopping.min_delta=0.01"]
    returned = app.main(compose_job(tmp_path, *args, *patience))

    assert len(snapshots) == 4, "trained epochs 1-4, then stopped"
    (run,) = all_runs(tmp_path)
    metrics = run.data.metrics
    assert (metrics["best_epoch"], metrics["stopped_epoch"]) == (2, 4)
    assert (metrics["test_accuracy"], metrics["val_accuracy"]) == (0.2, 0.6) == (TEST[1], returned)
    history = store(tmp_path).get_metric_history(run.info.run_id, "epoch_time_s")
    assert sorted(m.step for m in history) == [1, 2, 3, 4]
    # trained, not planned (each to the ms: their sum within 2.5 ms of the total)
    assert metrics["train_time_s"] == pytest.approx(sum(m.value for m in history), abs=0.0025)
    # the logged model carries the run's final figures: MLflow links the metrics at its step
    (output,) = run.outputs.model_outputs
    linked = {m.key: m.value for m in store(tmp_path).get_logged_model(output.model_id).metrics}
    assert (linked["test_accuracy"], linked["val_accuracy"], linked["best_epoch"]) == (0.2, 0.6, 2)
    assert "train_time_s" in linked and "zz_class_accuracy.class0" in linked, sorted(linked)
    weights = trainers[-1].module.state_dict()
    assert all(torch.equal(weights[k], snapshots[1][k]) for k in weights), "the model is epoch 2's"
    assert not all(torch.equal(weights[k], snapshots[3][k]) for k in weights)


def test_early_stopping_unit():
    model = torch.nn.Linear(2, 2)
    stopper = EarlyStopping(patience=3, min_delta=0.0)
    for epoch, accuracy in enumerate([0.5, 0.5, 0.6, 0.6, 0.6], start=1):
        assert not stopper.stopped
        stopper.update(epoch, {"val_accuracy": accuracy}, model)
    assert stopper.stopped is False and stopper.best_epoch == 3  # an equal score is no gain
    stopper.update(6, {"val_accuracy": 0.59}, model)
    assert stopper.stopped and stopper.restore_best(model)["stopped_epoch"] == 6


def test_needs_a_validation_split(tmp_path):
    with pytest.raises(ConfigError) as error:
        validate(compose_job(tmp_path, "train.early_stopping.patience=2"))
    assert str(error.value) == (
        "train.early_stopping.patience=2 watches val_accuracy and needs train.val_fraction > 0, got 0.0"
    )
