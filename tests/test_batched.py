"""Seeds trained together (archbench/batched.py) train each seed as it trains alone."""

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from archbench.batched import Stack, TogetherTrainer, member_optimizer_state
from archbench.comparing.stats import summarize
from archbench.models import MLP
from archbench.splits import Splits
from archbench.train import Trainer


class Recorded(nn.Module):
    """Cross-entropy that keeps every value it returns in training."""

    def __init__(self):
        super().__init__()
        self.values: list[float] = []

    def forward(self, out, y):
        loss = nn.functional.cross_entropy(out, y)
        if torch.is_grad_enabled():
            self.values.append(loss.item())
        return loss


def task(n=1000, n_test=500, dim=20, seed=123, dtype=torch.float64, noise=1.5):
    """A synthetic 10-class task whose classes a small network can learn part of."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(10, dim, generator=g, dtype=dtype)
    y = torch.randint(0, 10, (n + n_test,), generator=g)
    x = centres[y] + noise * torch.randn(n + n_test, dim, generator=g, dtype=dtype)
    return Splits(x_train=x[:n], y_train=y[:n], x_test=x[n:], y_test=y[n:])


def network(seed, dtype, dim=20):
    torch.manual_seed(seed)
    return MLP([dim], [32], 10, nn.Tanh).to(dtype)


def trainer(model, optimizer, seed, batch_size, criterion, device="cpu"):
    return Trainer(
        model=model,
        optimizer=optimizer,
        criterion=criterion,
        batch_size=batch_size,
        generator=torch.Generator(device).manual_seed(seed),
        progress=False,
        amp=False,
    )


@pytest.fixture(autouse=True)
def one_thread():
    """Each test on 1 thread, as a sweep's job; the process's count back afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


OPTIMIZERS = {
    "sgd_momentum": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-4),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-3),
}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_each_seed_trains_exactly_as_alone(name):
    """float64, 200 steps (4 epochs of 50 batches): every member's losses, step by step, its epoch
    metrics and its parameters equal its seed's run alone to 1e-10; so does its checkpoint, which
    an alone Trainer loads and continues from."""
    exactly_as_alone(name, torch.device("cpu"))


def exactly_as_alone(name: str, device: torch.device) -> None:
    """The exactness check on `device` (tests/test_cuda.py runs it on CUDA)."""
    seeds, epochs, batch = [0, 1, 2], 4, 20
    data = task()
    for split in ("x_train", "y_train", "x_test", "y_test"):
        setattr(data, split, getattr(data, split).to(device))
    alone = []
    for s in seeds:
        criterion = Recorded()
        model = network(s, torch.float64).to(device)
        t = trainer(model, OPTIMIZERS[name](model.parameters()), s, batch, criterion, device)
        history = []
        t.fit(data, epochs, on_epoch_end=lambda e, m, h=history: h.append(m))
        alone.append((criterion.values, history, model.state_dict(), t.optimizer.state_dict()))

    criterion = Recorded()
    stack = Stack([network(s, torch.float64).to(device) for s in seeds])
    together = TogetherTrainer(
        trainer(stack, OPTIMIZERS[name](stack.parameters()), 0, batch, criterion, device),
        stack,
        [torch.Generator(device).manual_seed(s) for s in seeds],
    )
    histories = [[] for _ in seeds]
    together.fit(data, epochs, on_epoch_end=lambda k, e, m: histories[k].append(m))

    steps = np.array(criterion.values).reshape(-1, len(seeds)).T  # step after step, member by member
    assert steps.shape == (len(seeds), 200)
    for k, (losses, history, params, optimizer) in enumerate(alone):
        np.testing.assert_allclose(steps[k], losses, rtol=0, atol=1e-10)
        for mine, theirs in zip(histories[k], history, strict=True):
            for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "lr"):
                assert abs(mine[key] - theirs[key]) < 1e-10, key
        for key, value in stack.member(k).items():
            torch.testing.assert_close(value, params[key], rtol=0, atol=1e-10)
        state = member_optimizer_state(together.trainer.optimizer, stack, k)
        for i, slot in optimizer["state"].items():
            for key, value in slot.items():
                torch.testing.assert_close(state["state"][i][key], value, rtol=0, atol=1e-10)
    assert not together.failed

    # member 1's checkpoint continues alone, as its run would resume
    state = together.checkpoint(1, epochs, torch.get_rng_state())
    model = network(99, torch.float64).to(device)
    resumed = trainer(model, OPTIMIZERS[name](model.parameters()), 99, batch, nn.CrossEntropyLoss(), device)
    assert resumed.restore(state) == epochs
    torch.testing.assert_close(model.state_dict(), alone[1][2], rtol=0, atol=1e-10)
    assert torch.equal(resumed.generator.get_state(), together.generators[1].get_state())


def test_a_diverged_member_leaves_the_others():
    """A member whose loss stops being finite is failed with Diverged's message; the others train on,
    exactly as alone."""
    seeds, data = [0, 1], task()
    stack = Stack([network(s, torch.float64) for s in seeds])
    with torch.no_grad():
        stack.stacked[0][1].fill_(float("nan"))  # member 1's first weights
    together = TogetherTrainer(
        trainer(stack, torch.optim.SGD(stack.parameters(), lr=0.05), 0, 20, nn.CrossEntropyLoss()),
        stack,
        [torch.Generator().manual_seed(s) for s in seeds],
    )
    logged = []
    together.fit(data, 2, on_epoch_end=lambda k, e, m: logged.append(k))
    assert list(together.failed) == [1] and "diverged" in str(together.failed[1])
    assert logged == [0, 0]
    model = network(0, torch.float64)
    alone = trainer(model, torch.optim.SGD(model.parameters(), lr=0.05), 0, 20, nn.CrossEntropyLoss())
    alone.fit(data, 2)
    for key, value in stack.member(0).items():
        torch.testing.assert_close(value, model.state_dict()[key], rtol=0, atol=1e-10)


def test_twenty_seeds_together_are_twenty_seeds_alone():
    """float32 parity: 20 seeds of two configurations trained together and alone give test accuracies
    whose means are equivalent within half a seed's sd (TOST, statsmodels), and the same verdict."""
    from statsmodels.stats.weightstats import ttost_paired

    data, seeds = task(n=2000, n_test=1000, dim=784, dtype=torch.float32, noise=14.0), list(range(20))
    rows = []
    for activation in (nn.Tanh, nn.Sigmoid):

        def build(s, a=activation):
            torch.manual_seed(s)
            return MLP([784], [100], 10, a)  # the course's mlp

        for s in seeds:
            model = build(s)
            t = trainer(model, torch.optim.SGD(model.parameters(), lr=0.05), s, 50, nn.CrossEntropyLoss())
            rows.append(("alone", activation.__name__, s, t.fit(data, 2)["test_accuracy"]))
        stack = Stack([build(s) for s in seeds])
        together = TogetherTrainer(
            trainer(stack, torch.optim.SGD(stack.parameters(), lr=0.05), 0, 50, nn.CrossEntropyLoss()),
            stack,
            [torch.Generator().manual_seed(s) for s in seeds],
        )
        for s, final in zip(seeds, together.fit(data, 2), strict=True):
            rows.append(("together", activation.__name__, s, final["test_accuracy"]))
    runs = pd.DataFrame(rows, columns=["how", "configuration", "seed", "test_accuracy"])
    for name, group in runs.groupby("configuration"):
        wide = group.pivot(index="seed", columns="how", values="test_accuracy")
        half_sd = wide["alone"].std(ddof=1) / 2
        diff = wide["together"] - wide["alone"]
        if diff.std() == 0:  # float rounding the same batched as alone: equal outright
            assert abs(diff.mean()) < half_sd
            continue
        p, _, _ = ttost_paired(wide["together"].to_numpy(), wide["alone"].to_numpy(), -half_sd, half_sd)
        assert p < 0.05, (name, wide.mean().to_dict(), half_sd)
    runs["status"], runs["train_time_s"], runs["params_total"] = "FINISHED", 1.0, 1
    verdicts = {
        how: summarize(part.drop(columns="how"), "test_accuracy").set_index("configuration").verdict
        for how, part in runs.groupby("how")
    }
    assert verdicts["together"].sort_index().tolist() == verdicts["alone"].sort_index().tolist()


@pytest.mark.slow
def test_a_sweep_trains_its_seeds_together_each_its_own_run(tmp_path):
    """`run.py -m ... seeds=3 train.together=true`: the three seeds of each configuration train as one
    job, and each seed is its own finished run, with what a run alone has (its params, checkpoint,
    predictions, the together tag) and the test accuracy it has alone. Run again, all six are reused."""
    from conftest import all_runs, run_py

    sweep = ["-m", "activation=relu,tanh", "seeds=3", "train.epochs=2", "train.together=true"]
    done = run_py(tmp_path / "together", *sweep)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "6 runs in 2 jobs: seeds of one configuration train together" in done.stdout
    together = all_runs(tmp_path / "together")
    children = [r for r in together if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 6 and {r.info.status for r in children} == {"FINISHED"}
    assert sorted(r.data.tags["archbench.together"] for r in children) == [
        f"{k} of 3 seeds" for k in (1, 1, 2, 2, 3, 3)
    ]
    run = children[0]
    seed = run.data.params["seed"]
    tag = run.data.tags["archbench.overrides"]
    assert f"seed={seed}" in tag.split() and "train.group" not in str(run.data)
    from conftest import store

    client = store(tmp_path / "together")
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"checkpoint", "config.yaml", "model_summary.txt", "test_predictions.csv.gz"} <= names

    alone = run_py(tmp_path / "alone", *sweep[:-1], "train.together=false")
    assert alone.returncode == 0, alone.stderr[-3000:]
    assert "runs in" not in alone.stdout

    def figures(runs, metric):
        return {
            (r.data.tags["activation"], r.data.params["seed"]): r.data.metrics[metric]
            for r in runs
            if "mlflow.parentRunId" in r.data.tags
        }

    # float32: the same up to rounding, which a batched matmul may do in another order on another CPU
    separately = all_runs(tmp_path / "alone")
    assert figures(together, "test_loss") == pytest.approx(figures(separately, "test_loss"), rel=1e-3)
    assert figures(together, "test_accuracy") == pytest.approx(figures(separately, "test_accuracy"), abs=0.02)

    again = run_py(tmp_path / "together", *sweep)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "reusing 6 finished runs, resuming 0, training 0" in again.stdout


def test_together_true_where_seeds_cannot_is_one_line_before_any_job(tmp_path):
    from conftest import all_runs, run_py

    done = run_py(tmp_path, "-m", "model=cnn3", "seeds=2", "train.together=true")
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if "train.together" in line]
    assert lines and "model.batch_norm=true" in lines[-1] and "use auto or false" in lines[-1]
    assert not any("mlflow.parentRunId" in r.data.tags for r in all_runs(tmp_path))

    done = run_py(tmp_path, "train.together=sometimes")
    assert done.returncode != 0
    assert "train.together must be auto, true or false, got 'sometimes'" in done.stderr + done.stdout


def test_the_launcher_groups_seeds_and_hands_each_its_own_result():
    """together.plan groups the jobs that differ only in seed= (up to GROUP_MAX a job), keeps the
    others alone, and expand gives every original job its own result, in order: a seed's run id and
    score, a diverged seed's error, a whole failed group's error for each of its seeds."""
    from hydra.core.utils import JobReturn, JobStatus
    from omegaconf import OmegaConf

    from archbench.config import seed_jobs
    from archbench.sweeps import together

    cfg = OmegaConf.create({"train": {"together": True}, "tune": {"role": None}})
    jobs = [[f"seed={s}", f"activation={a}"] for s in range(3) for a in ("relu", "tanh")]
    jobs.append(["seed=0", "activation=relu", "resume=abc"])  # a resume trains alone
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("archbench.batched.why_not", lambda c: None)
        patch.setattr(together, "GROUP_MAX", 2)
        planned = together.plan(jobs, lambda overrides: cfg)
    assert planned == [
        (["seed=0", "activation=relu", "++train.group=[0,1]"], [0, 2]),
        (["seed=0", "activation=tanh", "++train.group=[0,1]"], [1, 3]),
        (["seed=2", "activation=relu"], [4]),  # a group of one is a job alone
        (["seed=2", "activation=tanh"], [5]),
        (["seed=0", "activation=relu", "resume=abc"], [6]),
    ]
    assert seed_jobs(planned[1][0]) == [["seed=0", "activation=tanh"], ["seed=1", "activation=tanh"]]
    diverged = RuntimeError("diverged")
    results = [
        JobReturn(status=JobStatus.COMPLETED, _return_value={"together": [
            {"seed": 0, "run_id": "r0", "score": 0.8}, {"seed": 1, "run_id": "r1", "error": diverged}]}),
        JobReturn(status=JobStatus.FAILED, _return_value=ValueError("no data")),
        *(JobReturn(overrides=jobs[i], status=JobStatus.COMPLETED, _return_value=v)
          for i, v in ((4, 0.7), (5, 0.6), (6, 0.5))),
    ]  # fmt: skip
    out = together.expand(jobs, planned, results)
    assert [r.overrides for r in out] == jobs
    assert isinstance(out[0], together.TrainedTogether)
    assert (out[0].run_id, out[0].return_value) == ("r0", 0.8)
    assert out[2].status == JobStatus.FAILED and out[2]._return_value is diverged
    assert [out[i]._return_value.args for i in (1, 3)] == [("no data",), ("no data",)]
    assert [out[i].return_value for i in (4, 5, 6)] == [0.7, 0.6, 0.5]


def test_auto_groups_nothing_while_nothing_measured_faster():
    from omegaconf import OmegaConf

    from archbench.sweeps import together

    cfg = OmegaConf.create({"train": {"together": "auto"}, "device": "cuda", "model": {"_target_": "x.MLP"}})
    assert not together.FASTER and not together.chosen(cfg)  # and no device is looked for
