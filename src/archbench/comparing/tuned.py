"""What a comparison held fixed and what it tuned per configuration: the line that says how far its
verdicts reach, and each configuration's chosen values (tune=lr, archbench/tuning.py)."""

import numpy as np
import pandas as pd
from scipy.special import comb

from archbench.config import configuration


def roles(done: pd.DataFrame, trials: pd.DataFrame, record: dict | None) -> tuple[str, dict[str, str]]:
    """The roles line, and configuration -> its chosen values ("optimizer.lr=0.316"; none untuned).

    done: the compared runs that finished; trials: a tuned sweep's tuning runs; record: its tuning.json.
    """
    if not record:
        return _fixed(done), {}
    keys = record["keys"]
    chosen = {}
    for study in record["studies"]:
        name = configuration(study["configuration"].split(), keys)
        chosen[name] = " ".join(f"{k}={v:g}" for k, v in study["chosen"].items())
    spans = []
    for key in keys:
        values = [v for study in record["studies"] for v in study["grids"][key]]
        spans.append(f"{key} tuned over {min(values):g}-{max(values):g}")
    extended = sum(len(study["extended"]) for study in record["studies"])
    cost = f"{record['trials']} tuning runs"
    if len(trials) and trials.train_time_s.notna().any():
        cost += f", {trials.train_time_s.sum():.0f} s of training"
    line = (
        f"Each configuration at its own {', '.join(keys)}: {'; '.join(spans)} "
        f"({record['settings']} settings x {len(record['seeds'])} seeds each, on a validation split of "
        f"{record['val_fraction']:.0%} of the training set; {cost}"
        + (f"; {extended} grid extension(s) past an edge" if extended else "")
        + f"). Evaluated on seeds apart from the tuning seeds ({', '.join(map(str, record['seeds']))})."
    )
    return line, chosen


def _fixed(done: pd.DataFrame) -> str:
    """Untuned: the learning rate every configuration shared, or that it was set by hand."""
    lrs = sorted({lr for lr in done.lr.dropna() if lr != ""}, key=float)
    if len(lrs) == 1:
        return (
            f"Every configuration at optimizer.lr={lrs[0]}: `tune=lr` gives each its own, tuned on a "
            "validation split."
        )
    if lrs:
        return (
            f"optimizer.lr set by hand ({', '.join(lrs)}), not tuned per configuration: `tune=lr` compares "
            "each configuration at its own best."
        )
    return ""


def settings_table(record: dict) -> pd.DataFrame:
    """A tuned sweep's trials as rows: configuration, the first key's value, mean and spread of the
    score over the tuning seeds (NaN where a trial failed), and whether the setting was chosen."""
    key = record["keys"][0]
    rows = []
    for study in record["studies"]:
        for tried in study["tried"]:
            scores = np.array(tried["scores"], float)
            value = tried["setting"][0]
            failed = np.isnan(scores).any()
            rows.append({
                "configuration": study["configuration"], key: value,
                "mean": np.nan if failed else scores.mean(),
                "low": np.nanmin(scores) if not np.isnan(scores).all() else np.nan,
                "high": np.nanmax(scores) if not np.isnan(scores).all() else np.nan,
                "chosen": study["chosen"].get(key) == value,
            })  # fmt: skip
    return pd.DataFrame(rows)


def expected_best(values: np.ndarray, budget: int) -> float:
    """The expected best of `budget` settings drawn at random, without replacement, from those tried:
    Tang et al. (2020)'s unbiased form of Dodge et al. (2019)'s expected validation performance
    (Dodge's own, with replacement, is biased). The i-th smallest of K values is the best of a draw
    with probability C(i-1, budget-1) / C(K, budget). A failed setting counts as the worst."""
    v = np.sort(np.where(np.isnan(values), -np.inf, values))
    weights = comb(np.arange(len(v)), budget - 1) / comb(len(v), budget)
    finite = np.isfinite(v)
    return float(weights[finite] @ v[finite]) if finite.all() else float(weights @ np.where(finite, v, 0.0))
