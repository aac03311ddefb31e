"""Per-configuration statistics over seeds, and each configuration's verdict against the best.

n counts distinct seeds: where a seed ran more than once (a sweep over train.threads, a sweep run
again into the same experiment), its finished runs are averaged into one value first, since two
runs of one seed differ only in float rounding and are not independent evidence. The verdicts are
verdicts.py's: simultaneous over the whole table, and over every look of a race. Where the runs
recorded their test predictions, each pair's interval also covers the test sample's own noise
(crossed.py); a configuration with a finished seed that has none falls back to the seeds alone,
and its row says so. Every statistic comes from scipy.stats or statsmodels; pandas does the grouping.
"""

import bisect
import functools
import math

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.power import TTestIndPower, TTestPower

from archbench.comparing import crossed
from archbench.comparing.verdicts import EQUIVALENT, FAILED, FLOOR, FUTILE, MARGIN, WORSE, Plan, compare

CONFIDENCE = 0.95  # each configuration's own interval of its mean
POWER = 0.8  # "seeds that would likely settle it": an 80% chance, the usual planning figure
MAX_SEEDS = 10_000  # beyond this, "seeds needed" is reported as more than this
MIN_SEEDS = 2  # a t-test needs two values per arm


def per_seed(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One value per configuration and seed: the mean of its finished runs, and how many there were."""
    done = runs[(runs.status == "FINISHED") & runs[metric].notna()]
    return done.groupby(["configuration", "seed"], sort=False)[metric].agg(value="mean", runs="count")


def test_parts(table: pd.DataFrame, correct: dict | None):
    """The test sample's part of each pair's variance at a look of n seeds, from the runs' per-example
    predictions: a function of n for verdicts.compare, or None where no run has predictions.

    table: configuration x seed values (NaN: no finished run); correct: (configuration, seed) ->
    0/1 per test example, for the finished runs that recorded predictions (one array per seed: a
    seed that ran more than once keeps its first run's).
    """
    if not correct:
        return None
    configs, seeds = list(table.index), list(table.columns)
    k = len(configs)

    @functools.cache  # the last look's is asked for twice: by compare and by summarize's sources
    def at(n: int) -> tuple[np.ndarray, np.ndarray]:
        rows = []
        for config in configs:
            done = [s for s in seeds[:n] if pd.notna(table.at[config, s])]
            have = [correct.get((config, s)) for s in done]
            full = bool(done) and all(a is not None for a in have) and len({len(a) for a in have}) == 1
            rows.append(np.stack(have) if full else None)
        var, df = np.full((1, k, k), np.nan), np.full((1, k, k), np.nan)
        for a in range(k):
            for b in range(a + 1, k):
                if rows[a] is not None and rows[b] is not None and rows[a].shape[1] == rows[b].shape[1]:
                    var[0, a, b], df[0, a, b] = crossed.test_variance(rows[a], rows[b])
                    var[0, b, a], df[0, b, a] = var[0, a, b], df[0, a, b]
        return var, df

    return at


RESAMPLED = "seeds, each its own partition"  # the sources of a row whose runs ran with dataset.resample=true


def summarize(
    runs: pd.DataFrame,
    metric: str,
    plan: Plan | None = None,
    looks: int | None = None,
    margin=MARGIN,
    correct: dict | None = None,
) -> pd.DataFrame:
    """One row per configuration, the best first, with its verdict; the plan used in `.attrs["plan"]`.

    `runs` has a row per run: configuration, seed, status, `metric`, train_time_s, params_total.
    `plan` is the race's (its first `looks` looks were taken); None: one look at every finished seed.
    `correct`: the runs' per-example test predictions, as `test_parts` takes them.
    """
    values = per_seed(runs, metric)
    configs = list(dict.fromkeys(runs.configuration))
    table = values.value.unstack("seed").reindex(configs)  # configuration x seed, NaN where none finished
    table = table.reindex(columns=sorted(table.columns))
    rows = []
    for config, group in runs.groupby("configuration", sort=False):
        done = group[(group.status == "FINISHED") & group[metric].notna()]
        seeds = table.loc[config].dropna()
        low, high = _interval(seeds)
        rows.append(
            {
                "configuration": config,
                "n": len(seeds),
                "runs": len(done),
                "failed": len(group) - len(done),
                "mean": seeds.mean(),
                "sd": seeds.std(),  # ddof=1; NaN for one seed
                "ci_low": low,
                "ci_high": high,
                "train_time_s": done.train_time_s.mean(),
                "params_total": done.params_total.max(),
                "seeds": [int(s) for s in seeds.index],
            }
        )
    summary = pd.DataFrame(rows).set_index("configuration").loc[configs].reset_index()
    plan = plan or Plan((max(1, table.shape[1]),), margin=margin)
    test = test_parts(table, correct)
    outcome = compare(table.to_numpy()[None], plan, **({"looks": looks} if looks else {}), test=test)
    summary = pd.concat([summary, _verdicts(summary, table, outcome, plan)], axis=1)
    # a row's intervals cover the test sample where every pair it is in had predictions on both sides
    last = test(table.shape[1])[0][0].copy() if test else np.full((len(summary),) * 2, np.nan)
    np.fill_diagonal(last, 0)
    covered = np.isfinite(last).all(axis=1) & (len(summary) > 1)
    # dataset.resample=true: each seed its own partition, so the seeds carry the test sample themselves
    done = runs[runs.status == "FINISHED"]
    own = done.groupby("configuration").resampled.all() if "resampled" in done else pd.Series(dtype=bool)
    resampled = summary.configuration.map(own).fillna(False).astype(bool).to_numpy()
    summary["sources"] = np.where(
        covered, "seeds + test sample", np.where(resampled, RESAMPLED, "seeds only")
    )
    order = [int(outcome.best[0])] + [i for i in summary["mean"].sort_values(ascending=False).index]
    summary = summary.loc[list(dict.fromkeys(order))].reset_index(drop=True)
    summary["front"] = pareto(summary)
    summary.attrs["plan"] = plan
    return summary


def _interval(values: pd.Series) -> tuple[float, float]:
    """The t interval of the mean; NaN for fewer than two values."""
    if len(values) < 2:
        return math.nan, math.nan
    if values.nunique() == 1:  # no spread: the interval is the value itself
        return float(values.iloc[0]), float(values.iloc[0])
    ci = stats.ttest_1samp(values, 0).confidence_interval(CONFIDENCE)
    return float(ci.low), float(ci.high)


def _verdicts(summary: pd.DataFrame, table: pd.DataFrame, outcome, plan: Plan) -> pd.DataFrame:
    """Each configuration's verdict, the bounds of its mean minus the best other one, and for the
    unsettled, the seeds that would likely settle it."""
    best = int(outcome.best[0])
    alpha = 1 - plan.confidence(len(plan.looks) - 1, len(summary))  # each pair's, at the last look
    rows = []
    for i, r in summary.iterrows():
        state, n = int(outcome.state[0, i]), int(outcome.seeds[0, i])
        row = {
            "diff": outcome.diff[0, i],
            "diff_low": outcome.low[0, i],
            "diff_high": outcome.high[0, i],
            "test": "paired" if outcome.paired[0, i] else "Welch",
            "decided_at": n,
            "seeds_needed": None,
        }
        if r.n == 0:
            row["verdict"] = "no finished run"
        elif state == FAILED:
            row["verdict"] = "failed"
        elif r.n == 1:
            row["verdict"] = "best mean; n = 1: no spread" if i == best else "n = 1: no spread"
        elif i == best:
            row["verdict"] = "best"
        elif state == WORSE:  # resolved; and perhaps also too small a gap to matter
            small = row["diff_low"] > -plan.margin
            row["verdict"] = f"worse, within ±{plan.margin:g}" if small else "worse"
        elif state == EQUIVALENT:
            row["verdict"] = f"equivalent within ±{plan.margin:g}"
        elif state == FLOOR:  # more seeds cannot settle it on this test set
            row["verdict"] = (
                f"open: this test set cannot settle ±{plan.margin:g} (its own noise "
                f"±{outcome.floor[0, i]:.4f}); dataset.resample=true or a larger test set can"
            )
        elif state == FUTILE:  # the race's last look would likely not settle it either
            row["verdict"] = (
                f"open: stopped at {n} seeds, as {plan.looks[-1]} would likely not settle it "
                f"(race.futility={plan.futility:g})"
            )
        else:
            gaps = (table.iloc[i] - table.iloc[best]).dropna()
            paired = row["test"] == "paired"
            # the paired differences' sd, or Cohen's d's pooled sd where the seed sets differ
            spread = gaps.std() if paired else math.sqrt((r.sd**2 + summary.sd[best] ** 2) / 2)
            needed = settle(row["diff"], spread, plan.margin, alpha, paired=paired)
            row |= {"verdict": "not resolved", "seeds_needed": needed}
        rows.append(row)
    return pd.DataFrame(rows, index=summary.index)


def pareto(summary: pd.DataFrame) -> pd.Series:
    """On the accuracy / training time / size front: no other configuration has a higher mean, a lower
    mean training time and fewer parameters, all three."""
    s = summary[["mean", "train_time_s", "params_total"]].to_numpy(float)
    known = ~np.isnan(s).any(axis=1)
    higher, faster, smaller = (
        (s[None, :, 0] > s[:, None, 0]),
        (s[None, :, 1] < s[:, None, 1]),
        (s[None, :, 2] < s[:, None, 2]),
    )
    beaten = higher & faster & smaller  # [i, j]: j beats i on all three
    return pd.Series(known & ~(beaten & known[None, :]).any(axis=1), index=summary.index)


def settle(diff: float, sd: float, margin: float, alpha: float, paired: bool = True) -> int | None:
    """Seeds per configuration that would likely (80%) settle a gap `diff` of spread `sd` with
    intervals at confidence 1 - alpha: one that excludes 0 (worse), or one inside +-margin
    (equivalent; the power of the one-sided test against the nearer margin)."""
    if not (math.isfinite(diff) and math.isfinite(sd)) or sd <= 0:
        return None
    options = [seeds_needed(abs(diff) / sd, paired, alpha)]
    if abs(diff) < margin:
        options.append(seeds_needed((margin - abs(diff)) / sd, paired, alpha / 2, "larger"))
    found = [n for n in options if n is not None]
    return min(found) if found else None


def seeds_needed(
    effect: float, paired: bool, alpha: float = 1 - CONFIDENCE, alternative: str = "two-sided"
) -> int | None:
    """Seeds per configuration for an 80%-power t-test at `alpha` to resolve `effect` (Cohen's d):
    the fewest with statsmodels' power >= 80% (power grows with n, so a bisection finds it).

    Not statsmodels' solve_power: it fails (a warning and NaN) when the answer is 2 or 3 seeds.
    """
    if effect == 0 or not math.isfinite(effect):
        return None
    calc = TTestPower() if paired else TTestIndPower()

    def power(n: int) -> float:
        # Large effects make statsmodels' noncentral t NaN: first the far tail's (~0 then), so the
        # near tail alone is the power; that too only at noncentrality >= 36 (found on a grid of
        # d up to 30, n up to 10,000), far past any critical t (<= 12.7), where the power is 1.
        p = calc.power(abs(effect), n, alpha, alternative=alternative)
        if not math.isfinite(p) and alternative == "two-sided":
            p = calc.power(abs(effect), n, alpha / 2, alternative="larger")
        return float(p) if math.isfinite(p) else 1.0

    seeds = range(MIN_SEEDS, MAX_SEEDS + 1)
    found = bisect.bisect_left(seeds, True, key=lambda n: power(n) >= POWER)
    return seeds[found] if found < len(seeds) else MAX_SEEDS + 1
