"""A tuned sweep's two charts (tune=lr): how each configuration's validation score depends on the
tuned value, and what each would reach on a smaller tuning budget (Dodge et al. 2019): a ranking that
changes along that curve depends on how much tuning each configuration got."""

from pathlib import Path

import numpy as np

from archbench.comparing.charts import _pyplot
from archbench.comparing.tuned import expected_best, settings_table
from archbench.config import configuration


def sensitivity(record: dict, labels: dict[str, str], path: Path) -> Path:
    """Mean validation score against the tuned value per configuration, a band from the lowest to the
    highest tuning seed, the chosen value marked."""
    plt = _pyplot()
    key, table = record["keys"][0], settings_table(record)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, rows in table.groupby("configuration", sort=False):
        rows = rows.sort_values(key)
        line = ax.plot(rows[key], rows["mean"], "o-", ms=4, label=_label(labels, name))[0]
        ax.fill_between(rows[key], rows["low"], rows["high"], color=line.get_color(), alpha=0.15, lw=0)
        best = rows[rows.chosen]
        ax.scatter(best[key], best["mean"], s=140, marker="*", color=line.get_color(), zorder=3)
    ax.set_xscale("log")
    ax.set_xlabel(f"{key} (log scale; ★ chosen)")
    ax.set_ylabel(f"validation accuracy, mean of {len(record['seeds'])} tuning seeds")
    finite = table["mean"].dropna()
    if len(finite):  # zoomed to the useful part: far-off settings would flatten the rest
        top = finite.max()
        ax.set_ylim(max(finite.min(), top - 0.1) - 0.005, top + 0.005)
    return _save(plt, fig, ax, "Sensitivity: each configuration's score against the tuned value", path)


def budget(record: dict, labels: dict[str, str], path: Path) -> Path:
    """Expected best validation score against the number of settings tried, per configuration."""
    plt = _pyplot()
    table = settings_table(record)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, rows in table.groupby("configuration", sort=False):
        means = rows["mean"].to_numpy(float)
        n = np.arange(1, len(means) + 1)
        ax.plot(n, [expected_best(means, b) for b in n], "o-", ms=4, label=_label(labels, name))
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("settings tried (tuning budget)")
    ax.set_ylabel("expected best validation accuracy")
    return _save(
        plt, fig, ax, "Expected best against budget (Dodge et al. 2019; unbiased, Tang et al. 2020)", path
    )


def _save(plt, fig, ax, title: str, path: Path) -> Path:
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _label(labels: dict[str, str], name: str) -> str:
    """The table's label of a study's configuration (a record from before names were shortened: its own)."""
    return labels.get(name) or labels.get(configuration(name.split())) or name
