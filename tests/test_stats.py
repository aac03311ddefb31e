"""The comparison's statistics against values worked out by hand, and its verdicts on known arms.
(Their error rates over many comparisons and races: test_verdicts.py.)"""

import math

import numpy as np
import pandas as pd
import pytest

from archbench.comparing import stats

T_975_2 = 4.302652729749462  # Student's t, 97.5th percentile, 2 degrees of freedom (tables: 4.303)
T_975_4 = 2.7764451051977934  # 4 degrees of freedom (tables: 2.776)


def runs(arms: dict[str, list[float]], seeds: dict[str, list[int]] | None = None, **extra) -> pd.DataFrame:
    rows = []
    for config, values in arms.items():
        for seed, value in zip((seeds or {}).get(config, range(len(values))), values, strict=True):
            rows.append(
                {
                    "configuration": config,
                    "seed": seed,
                    "status": "FINISHED",
                    "test_accuracy": value,
                    "train_time_s": 2.0,
                    "params_total": 100,
                }
            )
    for config, seed, status, value in extra.get("unfinished", []):
        rows.append(
            {
                "configuration": config,
                "seed": seed,
                "status": status,
                "test_accuracy": value,
                "train_time_s": None,
                "params_total": None,
            }
        )
    return pd.DataFrame(rows)


def row(summary, config):
    return summary.set_index("configuration").loc[config]


def test_mean_sd_and_interval_by_hand():
    s = stats.summarize(runs({"a": [0.87, 0.88, 0.86]}), "test_accuracy")
    a = row(s, "a")
    assert a.n == 3 and a["mean"] == pytest.approx(0.87) and a.sd == pytest.approx(0.01)
    half = T_975_2 * 0.01 / math.sqrt(3)  # t * sd / sqrt(n) = 0.024841
    assert (a.ci_low, a.ci_high) == pytest.approx((0.87 - half, 0.87 + half))
    assert a.verdict == "best"


def test_paired_difference_by_hand():
    # b trails a by 0.010, 0.020, 0.015 on seeds 0, 1, 2: mean -0.015, sd 0.005
    s = stats.summarize(runs({"a": [0.87, 0.88, 0.86], "b": [0.86, 0.86, 0.845]}), "test_accuracy")
    b = row(s, "b")
    half = T_975_2 * 0.005 / math.sqrt(3)  # 0.012421
    assert b["diff"] == pytest.approx(-0.015) and b.test == "paired"
    assert (b.diff_low, b.diff_high) == pytest.approx((-0.015 - half, -0.015 + half))
    assert b.verdict == "worse" and pd.isna(b.seeds_needed)
    assert list(s.configuration) == ["a", "b"]  # ranked by mean


def test_mixed_seed_sets_fall_back_to_welch_by_hand():
    # same numbers, but b ran seeds 3, 4, 5: nothing to pair, so Welch's test; with equal variances and
    # sizes its degrees of freedom are 2(n - 1) = 4 and its standard error sqrt(2 * 0.01^2 / 3)
    data = runs({"a": [0.87, 0.88, 0.86], "b": [0.855, 0.865, 0.845]}, seeds={"b": [3, 4, 5]})
    b = row(stats.summarize(data, "test_accuracy"), "b")
    half = T_975_4 * math.sqrt(2 * 0.01**2 / 3)  # 0.022670
    assert b.test == "Welch" and b["diff"] == pytest.approx(-0.015)
    assert (b.diff_low, b.diff_high) == pytest.approx((-0.015 - half, -0.015 + half))
    # the interval holds 0: not called; Cohen's d = 0.015 / 0.01 = 1.5 needs 8.06 -> 9 seeds per arm
    # (and a gap of 0.015 is beyond the 0.005 margin: equivalence is not on the cards)
    assert b.verdict == "not resolved" and b.seeds_needed == 9


def test_seeds_needed_match_the_published_tables():
    # Cohen (1988): d = 0.5, two-sided 5%, 80% power: 64 per group; a paired test at d = 1: 10 pairs
    assert stats.seeds_needed(0.5, paired=False) == 64
    assert stats.seeds_needed(1.0, paired=True) == 10
    assert stats.seeds_needed(0.0, paired=True) is None


def test_seeds_needed_falls_as_the_effect_grows_down_to_two(recwarn):
    # statsmodels' own solver fails (NaN) where 2 or 3 seeds suffice; the answer must not jump there
    effects = [0.05, 0.2, 0.5, 1, 2, 3, 5, 6, 8, 9, 12, 20, 40]
    for paired in (True, False):
        needed = [stats.seeds_needed(d, paired) for d in effects]
        assert needed == sorted(needed, reverse=True) and needed[-1] == 2, (paired, needed)
        assert stats.seeds_needed(-1.0, paired) == stats.seeds_needed(1.0, paired)
    assert stats.seeds_needed(1e-6, paired=True) == stats.MAX_SEEDS + 1  # more than we would run
    assert not [w for w in recwarn if "converge" in str(w.message)]


def test_a_large_gap_on_two_seeds_is_not_resolved_but_needs_few_more():
    # paired, d = 7: the interval on 2 seeds still spans 0 (t = 12.7 on 1 df), 3 seeds would do
    data = runs({"a": [0.900, 0.904], "b": [0.874, 0.872]})  # differences -0.026, -0.032
    b = row(stats.summarize(data, "test_accuracy"), "b")
    assert b.diff_low < 0 < b.diff_high and b.verdict == "not resolved" and b.seeds_needed == 3


def test_the_best_row_bounds_its_lead_over_the_runner_up():
    # the same two arms: the best's row is the other side of the same interval
    s = stats.summarize(runs({"a": [0.85, 0.86, 0.855], "b": [0.87, 0.881, 0.874]}), "test_accuracy")
    a, b = row(s, "a"), row(s, "b")
    assert b.verdict == "best" and b.diff_low > 0 and a.verdict == "worse"
    assert (b.diff_low, b.diff_high) == pytest.approx((-a.diff_high, -a.diff_low))


def test_a_seed_run_twice_counts_once():
    # seeds 0-2 each ran at two thread counts: 3 seeds, not 6; each seed's value is its runs' mean
    twice = runs({"a": [0.870, 0.8702, 0.880, 0.8798, 0.860, 0.8601]}, seeds={"a": [0, 0, 1, 1, 2, 2]})
    a = row(stats.summarize(twice, "test_accuracy"), "a")
    once = pd.Series([0.8701, 0.8799, 0.86005])
    half = T_975_2 * once.std() / math.sqrt(3)  # 2 degrees of freedom, not 5
    assert (a.n, a.runs, a.seeds) == (3, 6, [0, 1, 2])
    assert (a["mean"], a.ci_low, a.ci_high) == pytest.approx(
        (once.mean(), once.mean() - half, once.mean() + half)
    )


def test_more_configurations_widen_every_interval():
    # the same pair of arms, alone and among 3 more: Bonferroni over 1 pair, then over 10
    base = {"a": [0.870, 0.875, 0.868, 0.872], "b": [0.866, 0.872, 0.866, 0.867]}
    alone = row(stats.summarize(runs(base), "test_accuracy"), "b")
    others = {f"c{i}": [0.80 + i / 100] * 4 for i in range(3)}
    among = row(stats.summarize(runs(base | others), "test_accuracy"), "b")
    d = pd.Series(base["b"]) - pd.Series(base["a"])
    for result, pairs in ((alone, 1), (among, 10)):
        t = stats.stats.t.ppf(1 - 0.05 / pairs / 2, 3)  # two-sided, 3 degrees of freedom
        assert result.diff_high == pytest.approx(d.mean() + t * d.std() / 2)  # sqrt(4) seeds


def test_within_the_margin_is_equivalent_and_the_margin_is_a_setting():
    # b trails a by 0.0005 +- 0.0008 over 6 seeds: inside +-0.005, not resolved inside +-0.0005
    a = [0.870, 0.875, 0.868, 0.872, 0.871, 0.869]
    b = [x - 0.0005 + e for x, e in zip(a, [0.0008, -0.0008, 0.0004, 0.0, -0.0004, 0.0008], strict=True)]
    data = runs({"a": a, "b": b})
    assert row(stats.summarize(data, "test_accuracy"), "b").verdict == "equivalent within ±0.005"
    narrow = row(stats.summarize(data, "test_accuracy", margin=0.0005), "b")
    assert narrow.verdict == "not resolved"
    # a gap resolved, and smaller than the margin: both are said
    c = [x - 0.001 + e / 4 for x, e in zip(a, [0.0008, -0.0008, 0.0004, 0.0, -0.0004, 0.0008], strict=True)]
    assert (
        row(stats.summarize(runs({"a": a, "c": c}), "test_accuracy"), "c").verdict == "worse, within ±0.005"
    )


def test_the_pareto_front_by_hand():
    s = pd.DataFrame(
        {
            "mean": [0.90, 0.89, 0.87, 0.86, 0.88],
            "train_time_s": [30.0, 40.0, 2.0, 3.0, 2.0],
            "params_total": [29_000, 30_000, 79_000, 84_000, 79_000],
        }
    )
    # row 1 is beaten by row 0 on all three; row 3 by row 4 (and by row 2); row 2 ties row 4's time
    assert list(stats.pareto(s)) == [True, False, True, False, True]


def test_identical_arms_are_not_called_different():
    rng = np.random.default_rng(7)
    called = 0
    for _ in range(200):
        base = rng.normal(0.87, 0.002, 5)
        data = runs({"a": list(base + rng.normal(0, 0.001, 5)), "b": list(base + rng.normal(0, 0.001, 5))})
        called += "worse" in stats.summarize(data, "test_accuracy").verdict.iloc[1]
    assert called / 200 < 0.1  # a 95% interval misses 0 by chance about 5% of the time, no more


def test_a_clearly_worse_arm_is_called_worse():
    rng = np.random.default_rng(3)
    called = 0
    for _ in range(50):
        base = rng.normal(0.87, 0.002, 5)  # the seed moves both arms alike: what pairing removes
        data = runs(
            {"a": list(base + rng.normal(0, 0.001, 5)), "b": list(base - 0.004 + rng.normal(0, 0.001, 5))}
        )
        s = stats.summarize(data, "test_accuracy")
        called += row(s, "b").verdict.startswith("worse")
    assert called == 50


def test_failed_and_killed_runs_are_left_out():
    unfinished = [("a", 3, "FAILED", None), ("a", 4, "KILLED", 0.10), ("c", 0, "FAILED", None)]
    data = runs({"a": [0.87, 0.88, 0.86], "b": [0.86, 0.86, 0.845]}, unfinished=unfinished)
    s = stats.summarize(data, "test_accuracy")
    a = row(s, "a")
    assert (a.n, a.failed) == (3, 2) and a["mean"] == pytest.approx(0.87)  # the KILLED 0.10 is not in it
    assert a.seeds == [0, 1, 2] and row(s, "b").test == "paired"
    c = row(s, "c")
    assert (c.n, c.failed, c.verdict) == (0, 1, "no finished run") and list(s.configuration)[-1] == "c"


def test_one_seed_says_no_spread_can_be_estimated():
    s = stats.summarize(runs({"a": [0.87], "b": [0.86]}), "test_accuracy")
    assert row(s, "a").verdict == "best mean; n = 1: no spread"
    assert row(s, "b").verdict == "n = 1: no spread"
    assert math.isnan(row(s, "a").sd) and math.isnan(row(s, "b").diff_low)


def test_the_same_numbers_on_every_seed():
    s = stats.summarize(runs({"a": [0.87, 0.88], "b": [0.87, 0.88], "c": [0.86, 0.87]}), "test_accuracy")
    assert row(s, "b").verdict == "equivalent within ±0.005"  # identical on both seeds
    assert row(s, "c").verdict == "worse"  # exactly 0.01 lower on each seed
