"""Per-configuration statistics over seeds, and each configuration against the best one.

A difference is called only where its 95% interval excludes 0. Where it does not, we say so and
estimate how many seeds would resolve a difference of the size seen. Every statistic comes from
scipy.stats or statsmodels; pandas does the grouping.
"""

import bisect
import math

import pandas as pd
from scipy import stats
from statsmodels.stats.power import TTestIndPower, TTestPower

CONFIDENCE = 0.95
POWER = 0.8  # "seeds needed": an 80% chance that the interval excludes 0, the usual planning figure
MAX_SEEDS = 10_000  # beyond this, "seeds needed" is reported as more than this
MIN_SEEDS = 2  # a t-test needs two values per arm


def summarize(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per configuration, best mean first; runs that did not finish count as failed only.

    `runs` has a row per run: configuration, seed, status, `metric`, train_time_s, params_total.
    """
    rows = []
    for config, group in runs.groupby("configuration", sort=False):
        done = group[(group.status == "FINISHED") & group[metric].notna()]
        values = done[metric]
        low, high = _interval(values)
        rows.append(
            {
                "configuration": config,
                "n": len(values),
                "failed": len(group) - len(values),
                "mean": values.mean(),
                "sd": values.std(),  # ddof=1; NaN for one run
                "ci_low": low,
                "ci_high": high,
                "train_time_s": done.train_time_s.mean(),
                "params_total": done.params_total.max(),
                "seeds": sorted(int(s) for s in done.seed),
            }
        )
    summary = pd.DataFrame(rows).sort_values("mean", ascending=False, na_position="last", kind="stable")
    summary = summary.reset_index(drop=True)
    finished = runs[(runs.status == "FINISHED") & runs[metric].notna()]
    by_seed = {c: g.set_index("seed")[metric] for c, g in finished.groupby("configuration", sort=False)}
    best = summary.configuration.iloc[0]
    verdicts = [
        versus(by_seed.get(best), by_seed.get(c)) if i else _best(summary.n.iloc[0])
        for i, c in enumerate(summary.configuration)
    ]
    return pd.concat([summary, pd.DataFrame(verdicts)], axis=1)


def _interval(values: pd.Series) -> tuple[float, float]:
    """The t interval of the mean; NaN for fewer than two values."""
    if len(values) < 2:
        return math.nan, math.nan
    if values.nunique() == 1:  # no spread: the interval is the value itself
        return float(values.iloc[0]), float(values.iloc[0])
    ci = stats.ttest_1samp(values, 0).confidence_interval(CONFIDENCE)
    return float(ci.low), float(ci.high)


def _best(n: int) -> dict:
    note = "best" if n >= 2 else "best mean; n = 1: no spread can be estimated" if n else "no finished run"
    return {
        "diff": math.nan,
        "diff_low": math.nan,
        "diff_high": math.nan,
        "test": "",
        "verdict": note,
        "seeds_needed": None,
    }


def versus(best: pd.Series | None, other: pd.Series | None) -> dict:
    """`other - best` (values indexed by seed): paired by seed when both ran the same seeds, else Welch."""
    out = {"diff": math.nan, "diff_low": math.nan, "diff_high": math.nan, "test": "", "seeds_needed": None}
    if other is None or len(other) == 0:
        return out | {"verdict": "no finished run"}
    if best is None or len(best) < 2 or len(other) < 2:
        return out | {"verdict": "n = 1: no spread can be estimated; run more seeds (-m ... seeds=5)"}
    paired = set(best.index) == set(other.index) and best.index.is_unique and other.index.is_unique
    if paired:
        other = other.loc[best.index]
        spread, n = (other.to_numpy() - best.to_numpy()).std(ddof=1), f"{len(other)} seeds"
    else:
        spread = math.sqrt((other.var() + best.var()) / 2)  # Cohen's d's pooled sd, for the power estimate
        n = f"{len(other)} vs {len(best)} seeds"
    diff = other.mean() - best.mean()
    if spread < 1e-12:  # the same gap on every seed (to rounding): the interval is the gap itself
        spread, low, high = 0.0, diff, diff
    else:
        result = stats.ttest_rel(other, best) if paired else stats.ttest_ind(other, best, equal_var=False)
        low, high = result.confidence_interval(CONFIDENCE)
    out |= {"diff": diff, "diff_low": float(low), "diff_high": float(high)}
    out["test"] = "paired" if paired else "Welch"
    if spread == 0 and abs(diff) < 1e-12:
        return out | {"verdict": f"no difference: identical on all {n}"}
    if high < 0:
        return out | {"verdict": f"worse ({n}, {out['test']})"}
    if low > 0:  # only where `best` is not the highest mean, i.e. outside the report's use
        return out | {"verdict": f"better ({n}, {out['test']})"}
    out["seeds_needed"] = seeds_needed(abs(diff) / spread, paired) if spread else None
    needed = (
        "the means are equal: no difference to resolve"
        if out["seeds_needed"] is None
        else f"~{out['seeds_needed']} seeds would resolve a difference of this size"
    )
    return out | {"verdict": f"not resolved with {n}; {needed}"}


def seeds_needed(effect: float, paired: bool) -> int | None:
    """Seeds per configuration for an 80%-power two-sided t-test at 5% to resolve `effect` (Cohen's d):
    the fewest with statsmodels' power >= 80% (power grows with n, so a bisection finds it).

    Not statsmodels' solve_power: it fails (a warning and NaN) when the answer is 2 or 3 seeds.
    """
    if effect == 0 or not math.isfinite(effect):
        return None
    calc = TTestPower() if paired else TTestIndPower()
    alpha = 1 - CONFIDENCE

    def power(n: int) -> float:
        # Large effects make statsmodels' noncentral t NaN: first the far tail's (~0 then), so the
        # near tail alone is the power; that too only at noncentrality >= 36 (found on a grid of
        # d up to 30, n up to 10,000), far past any critical t (<= 12.7), where the power is 1.
        p = calc.power(abs(effect), n, alpha, alternative="two-sided")
        if not math.isfinite(p):
            p = calc.power(abs(effect), n, alpha / 2, alternative="larger")
        return float(p) if math.isfinite(p) else 1.0

    seeds = range(MIN_SEEDS, MAX_SEEDS + 1)
    found = bisect.bisect_left(seeds, True, key=lambda n: power(n) >= POWER)
    return seeds[found] if found < len(seeds) else MAX_SEEDS + 1
