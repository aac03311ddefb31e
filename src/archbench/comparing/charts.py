"""The comparison's two charts: accuracy with its interval per configuration, and learning curves.

Axes are zoomed to the data: the configurations compared differ in the third decimal, which a
0-to-1 axis hides. Seeds are drawn as dots beside their mean, so the spread is visible.
"""

import sys
from pathlib import Path

import pandas as pd
from scipy import stats

COLORS = {
    "best": "#1f5fa8",
    "worse": "#b0413e",
    "equivalent": "#3f8f4f",
    "open": "#d08a1e",
    "none": "#9a9a9a",
}
NAMES = ["best", "worse", "equivalent to the best", "not resolved", "no finished run"]


def _pyplot():
    import matplotlib

    if "ipykernel" not in sys.modules:  # a notebook's kernel keeps its own backend for the user's plots
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _kind(row) -> str:
    """The verdict's colour: best, worse, equivalent, open (not resolved) or none."""
    if row.n == 0 or row.verdict in ("failed", "no finished run"):
        return "none"
    return next((k for k in ("best", "worse", "equivalent") if row.verdict.startswith(k)), "open")


def comparison(comp, path: Path) -> Path:
    """Mean with its 95% CI and each seed's value per configuration (best at the top), and training time."""
    plt = _pyplot()
    s = comp.summary.iloc[::-1].reset_index(drop=True)  # best at the top
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(12, 1.6 + 0.5 * len(s)), sharey=True, gridspec_kw={"width_ratios": [3, 1.2]}
    )
    for y, row in s.iterrows():
        color = COLORS[_kind(row)]
        seeds = comp.runs[(comp.runs.configuration == row.configuration) & (comp.runs.status == "FINISHED")]
        left.scatter(seeds[comp.metric], [y - 0.18] * len(seeds), s=12, color=color, alpha=0.45, lw=0)
        if row.n == 0:
            where = ("axes fraction", "data")
            left.annotate("no finished run", (0, y), xycoords=where, va="center", fontsize=9)
            continue
        err = [[row["mean"] - row.ci_low], [row.ci_high - row["mean"]]] if row.n >= 2 else None
        left.errorbar(row["mean"], y, xerr=err, fmt="o", color=color, capsize=4, ms=6)
        right.barh(y, row.train_time_s, color=color, alpha=0.8)
        right.annotate(
            f"{row.train_time_s:.3g}",
            (row.train_time_s, y),
            xytext=(3, 0),
            textcoords="offset points",
            va="center",
            fontsize=8,
        )
    best = comp.summary.iloc[0]
    if best.n >= 2:
        left.axvspan(best.ci_low, best.ci_high, color=COLORS["best"], alpha=0.08, lw=0)
    left.set_yticks(range(len(s)), [comp.labels[c] for c in s.configuration])
    left.set_xlabel(f"{comp.metric_name}: mean with 95% CI (dots: seeds)")
    right.set_xlabel("training time per run (s)")
    right.margins(x=0.25)
    for ax in (left, right):
        ax.spines[["top", "right"]].set_visible(False)
    _legend(plt, left)
    fig.suptitle(comp.title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def curves(comp, history: pd.DataFrame, path: Path) -> Path:
    """Per-epoch mean and 95% band over seeds, per configuration: the metric, and the training loss."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for ax, key in zip(axes, (comp.metric, "train_loss"), strict=True):
        for config in comp.summary.configuration:
            points = history[(history.configuration == config) & (history.key == key)]
            if points.empty:
                continue
            by_epoch = points.groupby("epoch").value.agg(["mean", "sem", "count"])
            line = ax.plot(by_epoch.index, by_epoch["mean"], marker=".", label=comp.labels[config])[0]
            spread = by_epoch[by_epoch["count"] >= 2]
            if len(spread):
                df, loc, scale = spread["count"] - 1, spread["mean"], spread["sem"]
                low, high = stats.t.interval(0.95, df, loc=loc, scale=scale)
                ax.fill_between(spread.index, low, high, color=line.get_color(), alpha=0.15, lw=0)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(key.replace("_", " "))
        ax.spines[["top", "right"]].set_visible(False)
    axes[0].legend(fontsize=8, frameon=False)
    fig.suptitle(f"{comp.title} (mean and 95% band over seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def pareto(comp, path: Path) -> Path:
    """Mean accuracy with its 95% CI against training time (log scale), point size by parameters; the
    front (no other configuration more accurate, faster and smaller at once) joined by a line."""
    plt = _pyplot()
    s = comp.summary[comp.summary.n > 0]
    fig, ax = plt.subplots(figsize=(8, 5.5))
    biggest = s.params_total.max()
    for _, row in s.iterrows():
        color = COLORS[_kind(row)]
        err = [[row["mean"] - row.ci_low], [row.ci_high - row["mean"]]] if row.n >= 2 else None
        ax.errorbar(row.train_time_s, row["mean"], yerr=err, fmt="none", ecolor=color, capsize=3, lw=1)
        size = 40 + 400 * row.params_total / biggest
        ax.scatter(row.train_time_s, row["mean"], s=size, color=color, alpha=0.6, edgecolor="black", lw=0.5)
        label = f"{comp.labels[row.configuration]} ({int(row.params_total):,} params)"
        where = (row.train_time_s, row["mean"])
        ax.annotate(label, where, xytext=(8, 4), textcoords="offset points", fontsize=8)
    front = s[s.front].sort_values("train_time_s")
    ax.plot(front.train_time_s, front["mean"], color="black", lw=1, ls="--", label="front")
    ax.set_xscale("log")
    ax.set_xlabel("training time per run (s, log scale)")
    ax.set_ylabel(f"{comp.metric_name}: mean with 95% CI")
    ax.spines[["top", "right"]].set_visible(False)
    _legend(plt, ax, extra=[(plt.Line2D([], [], color="black", ls="--"), "front")])
    fig.suptitle(f"{comp.title}\naccuracy against training time; point area by parameters", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _legend(plt, ax, extra=()) -> None:
    handles = [plt.Line2D([], [], color=c, marker="o", ls="") for c in COLORS.values()]
    labels = [*NAMES, *(name for _, name in extra)]
    handles += [h for h, _ in extra]
    ax.legend(handles, labels, loc="lower left", bbox_to_anchor=(0, 1.0), ncol=3, frameon=False, fontsize=8)
