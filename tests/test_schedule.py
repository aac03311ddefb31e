"""Learning-rate schedules: the logged `lr` is what PyTorch's own scheduler gives, resume stays exact."""

import pytest
import torch
from torch.optim import lr_scheduler

from archbench import app
from archbench.config import ConfigError, validate
from archbench.train import Trainer
from conftest import all_runs, compose_job, store
from test_lifecycle import final_metrics, only_run, stop_at_epoch

EPOCHS, BATCHES = 4, 20  # synthetic: 2,000 training samples in batches of 100


def logged(tmp_path, key="lr") -> list[float]:
    (run,) = all_runs(tmp_path)
    history = store(tmp_path).get_metric_history(run.info.run_id, key)
    return [m.value for m in sorted(history, key=lambda m: m.step)]


def pytorch_lrs(make, per_batch: bool, epochs=EPOCHS, batches=BATCHES, monitored=None) -> list[float]:
    """The lr each epoch starts with under PyTorch's scheduler `make(optimizer)`, stepped as run."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    schedule, lrs = make(optimizer), []
    for epoch in range(epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        for _ in range(batches):
            optimizer.step()
            if per_batch:
                schedule.step()
        if not per_batch:
            schedule.step(*([monitored[epoch]] if monitored else []))
    return lrs


@pytest.mark.parametrize(
    ("name", "make", "per_batch"),
    [
        ("none", lambda o: lr_scheduler.LambdaLR(o, lambda _: 1.0), False),
        ("step", lambda o: lr_scheduler.StepLR(o, step_size=2, gamma=0.5), False),
        ("cosine", lambda o: lr_scheduler.CosineAnnealingLR(o, T_max=EPOCHS), False),
        (
            "onecycle",
            lambda o: lr_scheduler.OneCycleLR(
                o, max_lr=0.1, epochs=EPOCHS, steps_per_epoch=BATCHES, cycle_momentum=False
            ),
            True,
        ),
    ],
    ids=["none", "step", "cosine", "onecycle"],
)
def test_logged_lr_is_pytorchs_schedule(tmp_path, name, make, per_batch):
    app.main(compose_job(tmp_path, f"scheduler={name}", f"train.epochs={EPOCHS}"))
    expected = pytorch_lrs(make, per_batch)
    assert logged(tmp_path) == pytest.approx(expected, rel=1e-12)
    assert name == "none" or len(set(expected)) > 1, "a schedule that never moves proves nothing"
    (run,) = all_runs(tmp_path)
    assert run.data.tags["scheduler"] == name


def test_onecycle_length_follows_limit_batches(tmp_path):
    # 2 of 20 batches per epoch: OneCycleLR is built for 2 x 3 steps (it raises when stepped past them)
    app.main(compose_job(tmp_path, "scheduler=onecycle", "train.epochs=3", "train.limit_batches=0.1"))
    (run,) = all_runs(tmp_path)
    assert run.info.status == "FINISHED" and run.data.tags["archbench.debug"] == "limit_batches=0.1"
    make = lambda o: lr_scheduler.OneCycleLR(o, 0.1, epochs=3, steps_per_epoch=2, cycle_momentum=False)  # noqa: E731
    assert logged(tmp_path) == pytest.approx(pytorch_lrs(make, True, epochs=3, batches=2), rel=1e-12)


def test_plateau_follows_the_validation_loss(tmp_path, monkeypatch):
    # val_loss never improves after epoch 1: ReduceLROnPlateau (patience 2) halves the lr after epoch 4
    val_losses = [1.0] * 5
    scripted, real = iter(val_losses), Trainer.scores
    monkeypatch.setattr(Trainer, "scores", lambda self, d: {**real(self, d), "val_loss": next(scripted)})
    app.main(compose_job(tmp_path, "scheduler=plateau", "train.val_fraction=0.1", "train.epochs=5"))
    assert logged(tmp_path, "val_loss") == val_losses
    make = lambda o: lr_scheduler.ReduceLROnPlateau(o, mode="min", factor=0.5, patience=2)  # noqa: E731
    expected = pytorch_lrs(make, per_batch=False, epochs=5, monitored=val_losses)
    assert logged(tmp_path) == pytest.approx(expected) and expected[-1] == 0.05


def test_plateau_needs_a_validation_split(tmp_path):
    with pytest.raises(ConfigError) as error:
        validate(compose_job(tmp_path, "scheduler=plateau"))
    assert str(error.value) == "scheduler=plateau watches val_loss and needs train.val_fraction > 0, got 0.0"


@pytest.mark.slow
@pytest.mark.parametrize(
    "args",
    [
        ("scheduler=onecycle", "dataset.augment=true", "model=cnn2"),  # per batch, NHWC augmentation
        ("scheduler=plateau", "train.val_fraction=0.1", "train.early_stopping.patience=5"),
    ],
    ids=["onecycle-augment", "plateau-early-stopping"],
)
def test_resume_with_a_schedule_equals_an_uninterrupted_run(tmp_path, monkeypatch, args):
    args = ("train.epochs=3", "dataset.train_size=400", *args)
    app.main(compose_job(tmp_path / "a", *args))
    stop_at_epoch(monkeypatch, 3, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        app.main(compose_job(tmp_path / "b", *args))
    monkeypatch.undo()
    app.main(compose_job(tmp_path / "b", f"resume={only_run(tmp_path / 'b').info.run_id}"))
    a, b = only_run(tmp_path / "a").info.run_id, only_run(tmp_path / "b").info.run_id
    assert final_metrics(tmp_path / "b", b) == final_metrics(tmp_path / "a", a)
    assert logged(tmp_path / "b") == logged(tmp_path / "a")  # the lr of every epoch, as uninterrupted
