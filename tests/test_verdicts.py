"""The comparison's error rates and power, measured by simulation on the very code that gives the
report its verdicts (archbench.comparing.verdicts), with no training: many comparisons at once.

Noise model (as measured on Fashion-MNIST, 5-epoch mlp): a seed moves every configuration alike by
N(0, 0.0015) (same initial weights, same batches), and each run adds its own N(0, 0.0020); in the
unequal-spread cases some configurations' own noise is 0.001 and others' 0.004. (The paired
differences of ../shared/data/seed-study.csv spread less than this model's, about 0.0012 for relu
against tanh: the model is the harder case.)

A false verdict, among configurations whose true means are equal: any "worse", or a best whose
interval over the others lies above 0 ("better than every other"). The family-wise rate may not
exceed 5%: a rate is accepted unless a binomial test says it is above 5% at the 0.1% level, which
allows for the Monte Carlo error of 2,000 draws (about +-1 point).
"""

import numpy as np
import pytest
from scipy import stats

from archbench.comparing.verdicts import EQUIVALENT, WORSE, Plan, compare

DRAWS = 2000
SEED_SD, RUN_SD = 0.0015, 0.0020
SIGMOID_GAP = -0.019  # sigmoid against relu, 5 epochs (docs/results.md)
RATES: dict[str, str] = {}  # printed at the end of the module


def draw(rng, gaps, seeds, run_sd=RUN_SD):
    """(DRAWS, configurations, seeds) accuracies: a shared per-seed effect plus each run's noise."""
    gaps = np.asarray(gaps, float)
    run_sd = np.broadcast_to(np.asarray(run_sd, float), gaps.shape)
    shared = rng.normal(0, SEED_SD, (DRAWS, 1, seeds))
    own = rng.normal(0, 1, (DRAWS, len(gaps), seeds)) * run_sd[None, :, None]
    return 0.87 + gaps[None, :, None] + shared + own


def false_verdicts(outcome) -> np.ndarray:
    """Per draw: any configuration called worse, or the best called better than all (all equal)."""
    worse = (outcome.state == WORSE).any(axis=1)
    best_low = outcome.low[np.arange(len(outcome.best)), outcome.best]
    return worse | (best_low > 0)


def check_rate(name: str, wrong: np.ndarray) -> None:
    rate = wrong.mean()
    RATES[name] = f"{rate:.3f}"
    p = stats.binomtest(int(wrong.sum()), len(wrong), 0.05, alternative="greater").pvalue
    assert p > 0.001, f"{name}: false verdicts in {rate:.1%} of {len(wrong)} comparisons (p = {p:.2g})"


@pytest.mark.parametrize("k", [2, 3, 5, 8])
def test_equal_configurations_are_rarely_called_different(k):
    rng = np.random.default_rng(k)
    for seeds in (3, 5, 10):
        outcome = compare(draw(rng, [0.0] * k, seeds), Plan((seeds,)))
        check_rate(f"{k} equal, one look at {seeds} seeds", false_verdicts(outcome))
    race = compare(draw(rng, [0.0] * k, 20), Plan.race(3, 20))
    check_rate(f"{k} equal, race to 20 seeds", false_verdicts(race))


@pytest.mark.parametrize("k", [3, 5, 8])
def test_unequal_spreads_do_not_break_it(k):
    rng = np.random.default_rng(10 + k)
    spreads = [0.001 if i % 2 else 0.004 for i in range(k)]  # a CNN's spread beside an MLP's
    for seeds in (3, 5, 10):
        outcome = compare(draw(rng, [0.0] * k, seeds, spreads), Plan((seeds,)))
        check_rate(f"{k} equal, unequal spreads, one look at {seeds} seeds", false_verdicts(outcome))
    race = compare(draw(rng, [0.0] * k, 20, spreads), Plan.race(3, 20))
    check_rate(f"{k} equal, unequal spreads, race to 20 seeds", false_verdicts(race))


def test_a_tied_best_is_never_the_loser_when_others_are_worse():
    # two equal leaders and three clearly worse: the race drops the three, then must not split the two
    rng = np.random.default_rng(20)
    race = compare(draw(rng, [0, 0, -0.01, -0.02, -0.03], 20), Plan.race(3, 20))
    check_rate("2 equal leaders among 5, race", (race.state[:, :2] == WORSE).any(axis=1))
    assert (race.state[:, 2:] == WORSE).all(axis=1).mean() > 0.95


def test_a_gap_of_the_margin_is_rarely_called_equivalent():
    # "equivalent within +-0.005" is a claim too: false where the true gap is 0.005 or more
    rng = np.random.default_rng(25)
    for gaps in ([0, -0.005], [0, -0.005, -0.03, -0.03]):
        race = compare(draw(rng, gaps, 20), Plan.race(3, 20))
        check_rate(
            f"gap of the margin among {len(gaps)}, race: called equivalent", race.state[:, 1] == EQUIVALENT
        )
        one = compare(draw(rng, gaps, 10), Plan((10,)))
        check_rate(
            f"gap of the margin among {len(gaps)}, 10 seeds: called equivalent", one.state[:, 1] == EQUIVALENT
        )


def test_sigmoid_is_called_worse_within_five_seeds():
    rng = np.random.default_rng(30)
    race = compare(draw(rng, [0, 0, SIGMOID_GAP], 20), Plan.race(3, 20))  # relu, tanh, sigmoid
    called = (race.state[:, 2] == WORSE) & (race.seeds[:, 2] <= 5)
    RATES["sigmoid (-0.019) called worse within 5 seeds, race"] = f"{called.mean():.3f}"
    assert called.mean() >= 0.95


def test_two_equal_configurations_are_found_equivalent():
    rng = np.random.default_rng(40)
    race = compare(draw(rng, [0, 0], 20), Plan.race(3, 20))
    equivalent = (race.state == EQUIVALENT).any(axis=1)
    RATES["2 equal: equivalent within +-0.005 by 20 seeds, race"] = f"{equivalent.mean():.3f}"
    RATES["2 equal: mean seeds per configuration, race"] = f"{race.seeds.max(axis=1).mean():.1f}"
    assert equivalent.mean() > 0.9


def test_the_power_given_up_against_uncorrected_tests():
    """Uncorrected: each pair's interval at 95% on its own, one look: it calls equals "worse" far
    more than 5% of the time (the issue's 25% for 5 configurations); the price of the correction is
    paid in power against real gaps."""
    rng = np.random.default_rng(50)
    pairs = 5 * 4 // 2
    uncorrected = Plan((5,), alpha=0.05 * pairs)  # every pair at 95%
    equal = draw(rng, [0.0] * 5, 5)
    wrong = false_verdicts(compare(equal, uncorrected)).mean()
    RATES["5 equal, 5 seeds, uncorrected: false verdicts"] = f"{wrong:.3f}"
    assert wrong > 0.15
    for gap, seeds in ((-0.004, 5), (-0.004, 10), (SIGMOID_GAP, 3)):
        x = draw(rng, [0, 0, 0, 0, gap], seeds)
        found = {}
        for name, plan in (
            ("simultaneous", Plan((seeds,))),
            ("uncorrected", Plan((seeds,), alpha=0.05 * pairs)),
        ):
            found[name] = (compare(x, plan).state[:, 4] == WORSE).mean()
        RATES[f"5 configs, one {gap:+.3f}, {seeds} seeds: power simultaneous / uncorrected"] = (
            f"{found['simultaneous']:.3f} / {found['uncorrected']:.3f}"
        )
        assert found["simultaneous"] <= found["uncorrected"]


@pytest.fixture(scope="module", autouse=True)
def _print_rates(request):
    yield
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print(f"\nmeasured by simulation (tests/test_verdicts.py, {DRAWS} draws each):")
        for name, rate in RATES.items():
            print(f"  {name}: {rate}")
