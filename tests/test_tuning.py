"""Fair comparisons (tune=lr): each configuration at its own tuned learning rate.

The simulations run the very code that chooses a configuration's setting (archbench.tuning.choose)
and gives the verdicts (archbench.comparing.verdicts), with no training. Then the flow end to end on
synthetic data, as a user types it, and the refusals.
"""

import itertools
import json

import numpy as np
import pytest
from scipy import stats

from archbench.comparing.tuned import expected_best
from archbench.comparing.verdicts import EQUIVALENT, WORSE, Plan, compare
from archbench.tuning import choose
from conftest import all_runs, run_py, store

DRAWS = 2000
SEED_SD, RUN_SD = 0.0015, 0.0020  # as tests/test_verdicts.py: a seed moves every configuration alike
VAL_SD = 0.0043  # a 6,000-image validation split's own noise at 87% accuracy: sqrt(0.87 x 0.13 / 6000)
MARGIN = 0.005
# Three configurations equally good at their best learning rate, with different best rates and
# different sensitivity to it (grid points 0..5, half-decades): a sharp one, a flat one, a third.
OPTIMUM = np.array([1.0, 2.5, 4.0])
CURVATURE = np.array([0.004, 0.0005, 0.0015])  # accuracy lost per (grid step from the optimum)^2
K = 6
RATES: dict[str, str] = {}


def accuracy(points: np.ndarray) -> np.ndarray:
    """True accuracy of each configuration (axis -2 or the last of OPTIMUM's shape) at grid points."""
    return 0.87 - CURVATURE[:, None] * (points - OPTIMUM[:, None]) ** 2


def false_verdicts(outcome, truth: np.ndarray) -> np.ndarray:
    """Per draw: a verdict that the true means (draws, k) contradict: a "worse" that is not, an
    "equivalent" whose true gap to the best other is the margin or more, or a best called better
    than all that is not."""
    rows = np.arange(len(truth))
    others = np.stack([np.delete(truth, i, axis=1).max(axis=1) for i in range(truth.shape[1])], axis=1)
    gap = truth - others
    wrong_worse = (outcome.state == WORSE) & (gap >= 0)
    wrong_equal = (outcome.state == EQUIVALENT) & (np.abs(gap) >= MARGIN)
    best_low = outcome.low[rows, outcome.best]
    wrong_best = (best_low > 0) & (gap[rows, outcome.best] <= 0)
    return wrong_worse.any(axis=1) | wrong_equal.any(axis=1) | wrong_best


def simulate(rng, tuning_seeds: int, evaluation_seeds: int, reuse: bool, plan: Plan):
    """Tune each configuration on validation over `tuning_seeds`, then evaluate at the chosen point on
    `evaluation_seeds`: fresh seeds, or (reuse) the tuning seeds' own runs first."""
    k = len(OPTIMUM)
    truth = accuracy(np.arange(K, dtype=float))  # (k, K)
    shared = rng.normal(0, SEED_SD, (DRAWS, 1, 1, tuning_seeds))
    own = rng.normal(0, RUN_SD, (DRAWS, k, K, tuning_seeds))  # a run's own luck, in val and test alike
    val = truth[None, :, :, None] + shared + own + rng.normal(0, VAL_SD, own.shape)
    chosen = np.array([[choose(val[d, c]) for c in range(k)] for d in range(DRAWS)])  # (draws, k)
    true_at = truth[np.arange(k)[None, :], chosen]  # the estimand: each configuration as tuned
    fresh = true_at[:, :, None] + rng.normal(0, SEED_SD, (DRAWS, 1, evaluation_seeds))
    fresh = fresh + rng.normal(0, RUN_SD, (DRAWS, k, evaluation_seeds))
    if reuse:  # the first seeds are the tuning seeds: the very runs that won, with their luck
        n = min(tuning_seeds, evaluation_seeds)
        picked = own[np.arange(DRAWS)[:, None], np.arange(k)[None, :], chosen]  # (draws, k, T)
        fresh[:, :, :n] = true_at[:, :, None] + shared[:, 0, :, :n] + picked[:, :, :n]
    return compare(fresh, plan), true_at


def check_rate(name: str, wrong: np.ndarray) -> float:
    rate = wrong.mean()
    RATES[name] = f"{rate:.3f}"
    p = stats.binomtest(int(wrong.sum()), len(wrong), 0.05, alternative="greater").pvalue
    assert p > 0.001, f"{name}: false verdicts in {rate:.1%} of {len(wrong)} comparisons (p = {p:.2g})"
    return rate


def test_choose_takes_the_best_mean_and_rules_out_a_diverged_setting():
    scores = np.array([[0.80, 0.82], [0.90, np.nan], [0.85, 0.86]])
    assert choose(scores) == 2  # 0.90 had a diverged seed: out
    assert choose(np.full((3, 2), np.nan)) == -1


@pytest.mark.parametrize(
    "plan", [Plan((5,)), Plan((10,)), Plan.race(3, 20)], ids=["5 seeds", "10 seeds", "race"]
)
def test_tuned_on_validation_and_evaluated_on_fresh_seeds_holds_five_percent(plan):
    rng = np.random.default_rng(len(plan.looks) * 100 + plan.looks[-1])
    outcome, truth = simulate(rng, tuning_seeds=2, evaluation_seeds=plan.looks[-1], reuse=False, plan=plan)
    check_rate(f"tuned (K={K}, T=2), evaluated on fresh seeds, {plan.looks}", false_verdicts(outcome, truth))
    reused, truth = simulate(rng, tuning_seeds=2, evaluation_seeds=plan.looks[-1], reuse=True, plan=plan)
    RATES[f"tuned (K={K}, T=2), tuning seeds reused for evaluation, {plan.looks}"] = (
        f"{false_verdicts(reused, truth).mean():.3f}"
    )


def test_reusing_the_tuning_seeds_biases_the_chosen_configuration_upward():
    """The winner's curse, measured: with the tuning seeds reused, each configuration's evaluated
    mean exceeds its true accuracy at the chosen rate; on fresh seeds it does not."""
    rng = np.random.default_rng(7)
    k = len(OPTIMUM)
    truth = accuracy(np.arange(K, dtype=float))
    own = rng.normal(0, RUN_SD, (DRAWS, k, K, 3))
    val = truth[None, :, :, None] + own + rng.normal(0, VAL_SD, own.shape)
    chosen = np.array([[choose(val[d, c]) for c in range(k)] for d in range(DRAWS)])
    luck = own[np.arange(DRAWS)[:, None], np.arange(k)[None, :], chosen].mean(axis=-1)  # reused runs' luck
    RATES["mean luck of the chosen runs, reused (accuracy)"] = f"{luck.mean():+.5f}"
    assert stats.ttest_1samp(luck.ravel(), 0, alternative="greater").pvalue < 1e-6


def test_expected_best_is_the_mean_best_over_every_subset_of_that_budget():
    values = np.array([0.80, 0.86, 0.84, 0.87, 0.10])
    for budget in range(1, len(values) + 1):
        subsets = [max(c) for c in itertools.combinations(values, budget)]
        assert expected_best(values, budget) == pytest.approx(np.mean(subsets))
    assert expected_best(values, 1) == pytest.approx(values.mean())
    assert expected_best(values, len(values)) == pytest.approx(values.max())


@pytest.fixture(scope="module", autouse=True)
def _print_rates(request):
    yield
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print(f"\nmeasured by simulation (tests/test_tuning.py, {DRAWS} draws each):")
        for name, rate in RATES.items():
            print(f"  {name}: {rate}")


# ---- as a user types it -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, said",
    [
        (["-m", "optimizer.lr=0.1,0.2", "tune=lr"],
         "error: optimizer.lr is tuned by tune=lr for each configuration"),
        (["-m", "activation=relu,tanh", "tune=lr", "tune.settings=1"],
         "error: tune.settings must be an integer >= 2"),
        (["-m", "activation=relu,tanh", "tune=lr", "seeds=3", "tune.seeds=[2,1000]"],
         "error: tune.seeds must be apart from the evaluation seeds 0..2"),
        (["-m", "activation=relu,tanh", "tune=lr", "tune.params.optimizer.lr.step=1"],
         "error: tune.params.optimizer.lr.step must be a number > 1, got 1"),
    ],
)  # fmt: skip
def test_a_bad_tuned_sweep_is_refused_in_one_line_before_any_run(tmp_path, args, said):
    done = run_py(tmp_path, *args)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith(said), done.stderr[-2000:]
    assert not all_runs(tmp_path) if (tmp_path / "mlruns" / "mlflow.db").exists() else True


def test_sweeping_the_learning_rate_by_hand_gets_a_hint(tmp_path):
    done = run_py(tmp_path, "-m", "optimizer.lr=0.1,0.3")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "hint: optimizer.lr is swept as a configuration of its own; tune=lr" in done.stdout
    assert (
        "Every configuration at" not in done.stdout and "optimizer.lr set by hand (0.1, 0.3)" in done.stdout
    )


@pytest.mark.slow
def test_each_optimizer_is_tuned_in_its_own_range_then_evaluated_on_other_seeds(tmp_path):
    args = ["-m", "optimizer=sgd,adam", "tune=lr", "tune.settings=2", "tune.extend=1", "seeds=2"]
    done = run_py(tmp_path, *args)
    assert done.returncode == 0, done.stderr[-3000:]
    mlflow_client = store(tmp_path)
    jobs = [r for r in all_runs(tmp_path) if "archbench.role" in r.data.tags]
    tuning = [r for r in jobs if r.data.tags["archbench.role"] == "tuning"]
    evaluation = [r for r in jobs if r.data.tags["archbench.role"] == "evaluation"]
    (parent,) = [r for r in all_runs(tmp_path) if r.data.tags.get("archbench.sweep") == "parent"]
    record = json.loads(
        (tmp_path / "outputs" / "sweep" / "tuning.json").read_text()
    )  # also on the parent run
    logged = {a.path for a in mlflow_client.list_artifacts(parent.info.run_id)}
    assert {"tuning.json", "sensitivity.png", "budget.png"} <= logged
    # (the configurations carry the test's shrinking overrides too: dataset=synthetic train.epochs=1)
    studies = {s["configuration"]: s for s in record["studies"]}
    assert sorted(w for name in studies for w in name.split() if w.startswith("optimizer=")) == [
        "optimizer=adam",
        "optimizer=sgd",
    ]
    studies = {("sgd" if "optimizer=sgd" in name else "adam"): study for name, study in studies.items()}
    assert studies["sgd"]["grids"]["optimizer.lr"][:2] != studies["adam"]["grids"]["optimizer.lr"][:2]
    assert (
        min(studies["adam"]["grids"]["optimizer.lr"]) < 0.001 < max(studies["sgd"]["grids"]["optimizer.lr"])
    )
    for study in studies.values():
        name = study["configuration"]
        # the same K for all, extensions aside, each recorded; every setting tried on both tuning seeds
        assert len(study["grids"]["optimizer.lr"]) == 2 + len(study["extended"])
        assert len(study["tried"]) == len(study["grids"]["optimizer.lr"])
        ran = [r for r in tuning if r.data.tags["archbench.study"] == name]
        assert len(ran) == 2 * len(study["tried"])
        assert {r.data.params["train.val_fraction"] for r in ran} == {"0.1"}
        chosen = study["chosen"]["optimizer.lr"]
        mine = [r for r in evaluation if r.data.tags["configuration"] == name]
        assert len(mine) == 2 and {float(r.data.params["optimizer.lr"]) for r in mine} == {chosen}
        assert {r.data.tags["archbench.tuned"] for r in mine} == {"optimizer.lr"}
        assert f"| optimizer.lr={chosen:g} |" in done.stdout  # the table's tuned column
    # 2 settings on synthetic data, where 1 epoch wants the highest lr: a best at the edge, extended
    assert any(study["extended"] for study in studies.values()), studies
    tuning_seeds = {r.data.params["seed"] for r in tuning}
    evaluation_seeds = {r.data.params["seed"] for r in evaluation}
    assert tuning_seeds == {"1000", "1001"} and evaluation_seeds == {"0", "1"}  # disjoint pools
    assert "Each configuration at its own optimizer.lr" in done.stdout
    # run again: the store holds every trial and evaluation, so nothing trains
    again = run_py(tmp_path, *args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (
        "training 0" in again.stdout and "training 1" not in again.stdout and "training 2" not in again.stdout
    )


@pytest.mark.slow
def test_a_diverged_trial_is_a_failed_trial_not_a_failed_sweep(tmp_path):
    # SGD at lr 0.1 and 1e5: the second diverges (NaN loss) on both tuning seeds
    args = ["-m", "activation=relu", "tune=lr", "tune.settings=2", "tune.extend=0",
            "tune.params.optimizer.lr.from.sgd=0.1", "tune.params.optimizer.lr.step=1000000"]  # fmt: skip
    done = run_py(tmp_path, *args)
    assert done.returncode == 0, done.stderr[-3000:]
    (study,) = json.loads((tmp_path / "outputs" / "sweep" / "tuning.json").read_text())["studies"]
    assert study["failed"] == 2 and study["chosen"] == {"optimizer.lr": 0.1}
    (evaluation,) = [r for r in all_runs(tmp_path) if r.data.tags.get("archbench.role") == "evaluation"]
    assert evaluation.info.status == "FINISHED"
    assert "job failed" not in done.stderr
