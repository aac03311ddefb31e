"""Verdicts that hold together: each configuration against the best, with the chance of any false
verdict held at 5% over every pair of the table and every look a race takes at the data.

At each look, every pair of configurations gets a t-interval for the difference of their means,
paired by seed (Welch's where their seed sets differ), at confidence 1 - alpha_look / m for the
m = k(k-1)/2 pairs (Bonferroni), and the looks split alpha between them by a plan fixed before the
first (Bonferroni again: the alpha_look sum to alpha). Whatever the true means and spreads, all
these intervals hold at once with probability >= 1 - alpha, and then every verdict is true:

- *worse*: another configuration's mean is higher (an interval against it lies below 0);
- *equivalent within +-margin*: mu_i - max_{j != i} mu_j, Hsu's quantity for comparisons with the
  best, lies inside +-margin (its bounds are the smallest pairwise bounds over j, leaving out of
  the lower one any j found to trail a third configuration: it cannot be the max); the interval
  form of TOST;
- *best*: the highest mean, chosen after looking. Every pair is in the family, so choosing it
  costs nothing more; Holm-adjusted tests against the chosen best would ignore that choice.

Hsu's own MCB intervals need one pooled variance and only k-1 comparisons; all pairs cost more
seeds but hold with unequal spreads (a CNN's seed-to-seed sd is not an MLP's), and a strict
"worse" stays false among equals. tests/test_verdicts.py measures both, by simulation.

Everything here works on arrays of many simulated comparisons at once (the first axis), so the
simulations run the very code that gives the report its verdicts.
"""

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats

ALPHA = 0.05  # the family-wise error of a whole comparison or race
MARGIN = 0.005  # accuracy units: half a point, compare.margin's default
GROWTH = 1.6  # a race's seeds per configuration grow by this factor each round: 3, 5, 8, 13, 20

OPEN, WORSE, EQUIVALENT, FAILED = 0, 1, 2, 3  # a configuration's state; the best stays OPEN


@dataclass(frozen=True)
class Plan:
    """When the data are looked at (seeds per configuration at each look), and the error budget."""

    looks: tuple[int, ...]
    alpha: float = ALPHA
    margin: float = MARGIN

    @classmethod
    def race(cls, first: int, max_seeds: int, **budget) -> "Plan":
        """Rounds of `first`, then x GROWTH, up to `max_seeds` seeds per configuration."""
        looks = [min(first, max_seeds)]
        while looks[-1] < max_seeds:
            looks.append(min(max_seeds, max(looks[-1] + 1, math.ceil(looks[-1] * GROWTH))))
        return cls(tuple(looks), **budget)

    def confidence(self, look: int, k: int) -> float:
        """Each pair's interval at `look` (0-based): alpha split evenly over the looks and the pairs."""
        return 1 - self.alpha / len(self.looks) / max(1, k * (k - 1) // 2)


@dataclass
class Outcome:
    """Per comparison (first axis) and configuration (second): its state, the bounds of mu_i minus
    the best other mean at the look that settled it (or the last), and its seeds at that look."""

    state: np.ndarray  # OPEN, WORSE, EQUIVALENT or FAILED; int
    diff: np.ndarray  # estimate of mu_i - max_{j != i} mu_j
    low: np.ndarray
    high: np.ndarray
    seeds: np.ndarray  # seeds per configuration when it was settled or last looked at
    best: np.ndarray  # (draws,): the index of the best configuration
    looks: np.ndarray  # (draws,): looks taken
    paired: np.ndarray  # (draws, k): whether its bounds come from paired intervals only

    @property
    def done(self) -> np.ndarray:
        """Comparisons in which every configuration but the best is settled."""
        others = np.ones_like(self.state, bool)
        others[np.arange(len(self.best)), self.best] = False
        return ((self.state != OPEN) | ~others).all(axis=1)


def pairwise(x: np.ndarray, confidence: float) -> tuple[np.ndarray, ...]:
    """Differences row - column of mean per-seed values and their t-intervals, for every pair.

    x: (draws, k, seeds) values, NaN where a configuration has no value for a seed. Two rows with
    values at the same seeds are paired by seed; otherwise Welch's test on each row's own values.
    Returns estimate, low, high (each draws x k x k, antisymmetric) and a paired flag.
    """
    draws, k, _ = x.shape
    est, low, high = (np.full((draws, k, k), np.nan) for _ in range(3))
    paired = np.ones((draws, k, k), bool)
    rows, cols = np.triu_indices(k, 1)
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # equal values: the interval is the value itself
        d = x[:, rows, :] - x[:, cols, :]  # draws x pairs x seeds
        whole = ~np.isnan(x).any(axis=-1)
        both = whole[:, rows] & whole[:, cols]
        if both.any():
            result = stats.ttest_1samp(d, 0, axis=-1)
            ci = result.confidence_interval(confidence)
            e, lo, hi = d.mean(axis=-1), ci.low, ci.high
        else:
            e, lo, hi = (np.full(d.shape[:2], np.nan) for _ in range(3))
        for g, p in zip(*np.nonzero(~both), strict=True):  # missing seeds: only real runs get here
            e[g, p], lo[g, p], hi[g, p], paired[g, rows[p], cols[p]] = _partial(
                x[g, rows[p]], x[g, cols[p]], confidence
            )
    est[:, rows, cols], low[:, rows, cols], high[:, rows, cols] = e, lo, hi
    est[:, cols, rows], low[:, cols, rows], high[:, cols, rows] = -e, -hi, -lo
    paired[:, cols, rows] = paired[:, rows, cols]
    return est, low, high, paired


def _partial(a: np.ndarray, b: np.ndarray, confidence: float) -> tuple[float, float, float, bool]:
    """One pair with seeds missing: paired on the seeds both ran if they ran the same ones, else Welch."""
    same = np.array_equal(np.isnan(a), np.isnan(b))
    a, b = a[~np.isnan(a)], b[~np.isnan(b)]
    if len(a) < 2 or len(b) < 2:
        return math.nan, math.nan, math.nan, same
    if same and np.ptp(a - b) < 1e-12:  # the same gap on every seed: the interval is the gap
        gap = float(np.mean(a - b))
        return gap, gap, gap, True
    result = stats.ttest_rel(a, b) if same else stats.ttest_ind(a, b, equal_var=False)
    ci = result.confidence_interval(confidence)
    return float(np.mean(a) - np.mean(b)), float(ci.low), float(ci.high), same


def compare(x: np.ndarray, plan: Plan, looks: int | None = None) -> Outcome:
    """The verdicts of a comparison (one look) or a race (several), for each of `draws` comparisons.

    x: (draws, k, seeds) per-seed values in the order seeds were run; NaN where none finished.
    `looks`: how many of the plan's looks were taken (a race stopped early); all by default. In a
    race, a configuration still in play that lacks one of a look's seeds has failed and leaves the
    race; in a one-look comparison, every finished seed counts.
    """
    draws, k, _ = x.shape
    racing = len(plan.looks) > 1
    state = np.full((draws, k), OPEN)
    diff, low, high = (np.full((draws, k), np.nan) for _ in range(3))
    seeds = np.zeros((draws, k), int)
    paired_out = np.ones((draws, k), bool)
    # the latest interval of every pair, from the last look at which both were in play
    est, lo, hi = (np.full((draws, k, k), np.nan) for _ in range(3))
    pair_paired = np.ones((draws, k, k), bool)
    best = np.zeros(draws, int)
    taken = np.zeros(draws, int)
    going = np.ones(draws, bool)
    for look, n in enumerate(plan.looks[:looks]):
        part = x[:, :, :n]
        if racing:
            missing = np.isnan(part).any(axis=-1) & (state == OPEN)
            state[going[:, None] & missing] = FAILED
        finished = (~np.isnan(part)).sum(axis=-1)
        playing = going[:, None] & (state == OPEN) & (finished >= 1)
        if not playing.any():
            break
        e, l_, h, p = pairwise(part, plan.confidence(look, k))
        update = playing[:, :, None] & playing[:, None, :]
        est[update], lo[update], hi[update], pair_paired[update] = e[update], l_[update], h[update], p[update]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # configurations with no finished run
            means = np.where(playing, np.nanmean(part, axis=-1), -np.inf)
        best = np.where(going, means.argmax(axis=1), best)
        # a configuration known to trail some third one cannot be the best of the others: left out of
        # the lower bounds (its interval may be wide and stale, from the look that settled it)
        trails = hi < 0  # [j, k]: mu_j < mu_k
        beaten = (trails.sum(axis=2)[:, None, :] - trails.transpose(0, 2, 1)) > 0  # [i, j]: by a k != i
        d_est, d_high = _versus_others(est), _versus_others(hi)
        d_low = _versus_others(np.where(beaten, np.nan, lo))
        settled_worse = playing & (d_high < 0)
        settled_equal = playing & ~settled_worse & (d_low > -plan.margin) & (d_high < plan.margin)
        is_best = np.zeros_like(playing)
        is_best[np.arange(draws), best] = True
        state[settled_worse & ~is_best] = WORSE
        state[settled_equal & ~is_best] = EQUIVALENT
        now = playing  # what this look saw: the settled ones keep these figures from here on
        diff[now], low[now], high[now] = d_est[now], d_low[now], d_high[now]
        seeds[now] = finished[now]
        paired_out[now] = np.where(np.isnan(est), True, pair_paired).all(axis=2)[now]
        taken = np.where(going, look + 1, taken)
        others_settled = (state != OPEN) | is_best
        going &= ~others_settled.all(axis=1)
    return Outcome(state, diff, low, high, seeds, best, taken, paired_out)


def _versus_others(m: np.ndarray) -> np.ndarray:
    """min over j != i of m[:, i, j], ignoring pairs with no interval: bounds of mu_i - max_{j != i} mu_j."""
    m = m.copy()
    idx = np.arange(m.shape[1])
    m[:, idx, idx] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: a lone configuration
        return np.nanmin(m, axis=2)
