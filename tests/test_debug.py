"""Debug presets and limits: +debug=fast, +debug=overfit, train.limit_batches; all tagged as debug."""

import logging

import pytest
import torch
from hydra import compose, initialize

from archbench import app
from archbench.debug import epoch_batches
from archbench.train import Trainer
from conftest import all_runs, compose_job, store


@pytest.mark.parametrize(
    ("limit", "overfit", "steps"),
    [
        (None, None, 20),  # 2,000 samples in batches of 100
        (2, None, 2),
        (50, None, 20),  # never more than there are
        (0.1, None, 2),
        (0.01, None, 1),  # at least one
        (1.0, None, 20),  # a fraction: all of them (the integer 1 is one batch)
        (None, 2, 2),
        (500, 1, 500),  # the fixed batch, cycled
    ],
)
def test_steps_per_epoch(limit, overfit, steps):
    assert epoch_batches(2000, 100, limit, overfit) == steps


def trainer(**kw) -> Trainer:
    model = torch.nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return Trainer(model, opt, torch.nn.MSELoss(), 100, torch.Generator().manual_seed(0), **kw)


@pytest.mark.parametrize("bar", [None, (0, "#0")], ids=["a run", "a job of a parallel sweep"])
def test_batch_bars_show_on_a_terminal_only_and_never_in_a_parallel_sweep(capsys, bar):
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    fit = Trainer(model, opt, torch.nn.CrossEntropyLoss(), 100, torch.Generator().manual_seed(0), bar=bar)
    fit.train_one_epoch(torch.randn(300, 4), torch.randint(0, 3, (300,)), 1)
    assert "epoch 1" not in capsys.readouterr().err  # captured: not a terminal, so no bar either way


def test_limited_epochs_start_as_full_ones_and_overfit_repeats_one_batch():
    full, limited = trainer(), trainer(limit_batches=3)
    for _ in range(2):  # the second epoch too: a limited epoch moves the shuffle generator as a full one
        assert torch.equal(limited.epoch_order(2000, "cpu"), full.epoch_order(2000, "cpu")[:300])
    order = trainer(overfit_batches=1, limit_batches=5).epoch_order(2000, "cpu")
    assert torch.equal(order, torch.arange(100).repeat(5))


def test_fast_preset(tmp_path, monkeypatch):
    steps = []
    real = torch.optim.SGD.step
    monkeypatch.setattr(torch.optim.SGD, "step", lambda self, *a: (steps.append(1), real(self, *a))[1])
    with initialize(version_base="1.3", config_path="../conf"):
        preset = compose("config", overrides=["+debug=fast"]).train
    assert (preset.epochs, preset.limit_batches, preset.checkpoint) == (1, 2, False)
    app.main(compose_job(tmp_path, "+debug=fast"))
    (run,) = all_runs(tmp_path)
    assert run.info.status == "FINISHED" and run.data.tags["archbench.debug"] == "fast"
    assert len(steps) == 2
    assert {a.path for a in store(tmp_path).list_artifacts(run.info.run_id)}.isdisjoint({"checkpoint"})


def test_limit_batches_alone_is_tagged(tmp_path):
    app.main(compose_job(tmp_path, "train.limit_batches=3"))
    (run,) = all_runs(tmp_path)
    assert run.data.tags["archbench.debug"] == "limit_batches=3"


def test_real_runs_carry_no_debug_tag(tmp_path):
    app.main(compose_job(tmp_path))
    (run,) = all_runs(tmp_path)
    assert "archbench.debug" not in run.data.tags


def test_overfit_preset_learns_its_batch(tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        app.main(compose_job(tmp_path, "+debug=overfit"))
    (run,) = all_runs(tmp_path)
    assert run.info.status == "FINISHED" and run.data.tags["archbench.debug"] == "overfit"
    assert "overfit check passed: accuracy 1.000 on the 100 samples" in caplog.text
    # the check's own figure on the record, not train_accuracy (the mean over all 500 steps)
    assert run.data.metrics["overfit_accuracy"] == 1.0 > run.data.metrics["train_accuracy"]
    assert "after 500 steps" in caplog.text


def test_overfit_preset_fails_a_model_that_cannot_learn(tmp_path):
    with pytest.raises(SystemExit) as error:
        app.main(compose_job(tmp_path, "+debug=overfit", "optimizer.lr=1e-6", "train.limit_batches=20"))
    message = str(error.value)
    assert message.startswith("error: overfit check failed: accuracy 0.") and "\n" not in message
    assert "on the 100 samples of train.overfit_batches=1 after 20 steps (needs 0.99)" in message
    assert "optimizer.lr far too small or too large" in message and "train.limit_batches=2000" in message
    (run,) = all_runs(tmp_path)
    assert run.info.status == "FAILED" and "overfit check failed" in run.data.tags["archbench.error"]
    reached = run.data.metrics["overfit_accuracy"]
    assert reached < 0.99 and f"accuracy {reached:.3f} on the 100 samples" in message
