"""A comparison per configuration over seeds, from plain tables: the summary with its verdicts, the
labels and title, and the files it writes (table, CSV, charts). No store here: the rows come from
archbench.tracking.tables, so the simulations call the very same functions.
"""

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from archbench.comparing import charts, stats, study_charts, table, tuned
from archbench.comparing.verdicts import MARGIN, Plan


@dataclass
class Comparison:
    runs: pd.DataFrame  # a row per run
    metric: str  # val_accuracy where every finished run held out a validation split, else test_accuracy
    summary: pd.DataFrame  # a row per configuration, best first (stats.summarize)
    labels: dict[str, str]  # configuration -> what sets it apart from the others
    title: str
    plan: Plan  # the looks taken at the data and the error budget (one look, unless a race)
    race: dict | None = None  # a race's record (sweeps.race.RECORD): its looks, rounds, why it stopped
    note: str = ""
    roles: str = ""  # what was tuned per configuration, or held fixed for all (tuning.roles)
    chosen: dict[str, str] | None = None  # a tuned sweep's: configuration -> its chosen values
    tuning: dict | None = None  # a tuned sweep's record (tuning.RECORD), for its charts

    @classmethod
    def of(
        cls, runs: pd.DataFrame, where: str, note="", margin=MARGIN, race=None, correct=None, tuning=None
    ) -> "Comparison":
        """`correct`: the runs' per-example test predictions (`predictions`), or None: seeds only.
        `tuning`: a tuned sweep's record (tuning.RECORD); its tuning runs are not compared."""
        trials = runs[runs.role == "tuning"]
        runs = runs[runs.role != "tuning"]
        done = runs[runs.status == "FINISHED"]
        # every finished run held out a validation split (a search): rank by it; a mix: the test set
        metric = "val_accuracy" if len(done) and done.val_accuracy.notna().all() else "test_accuracy"
        if race:  # a race recorded before alpha spending split it evenly over its looks
            spending = race.get("spending", "bonferroni")  # and one before futility stops had none
            futility = race.get("futility", 0.0)
            plan = Plan(tuple(race["looks"]), race["alpha"], race["margin"], spending, futility)
            summary = stats.summarize(runs, metric, plan, looks=len(race["rounds"]), correct=correct)
        else:
            summary = stats.summarize(runs, metric, margin=margin, correct=correct)
        configs = list(summary.configuration)
        shared = set.intersection(*(set(c.split()) for c in configs)) if len(configs) > 1 else set()
        labels = {c: " ".join(o for o in c.split() if o not in shared) or c for c in configs}
        n = sorted(set(summary.n[summary.n > 0]))
        seeds = f"{n[0]}" if len(n) == 1 else f"{n[0]}-{n[-1]}" if n else "0"
        what = [
            "/".join(sorted(set(done.dataset.dropna()) - {""})) or "?",
            f"{'/'.join(sorted(set(done.epochs.dropna()) - {''}, key=str)) or '?'} epoch(s)",
            f"{seeds} seed{'s' if seeds != '1' else ''} per configuration",
        ]
        plan = summary.attrs["plan"]
        roles, chosen = tuned.roles(done, trials, tuning)
        title = f"{where}: {', '.join(what)}"
        return cls(runs, metric, summary, labels, title, plan, race, note, roles, chosen, tuning)

    @property
    def metric_name(self) -> str:
        return self.metric.replace("_", " ")


def write_all(comp: Comparison, folder: Path, curves: pd.DataFrame) -> list[Path]:
    """comparison.md, comparison.csv, comparison.png, pareto.png and, given its runs' `curves`
    (tracking.tables.histories), curves.png in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "comparison.md").write_text(table.markdown(comp))
    (folder / "comparison.csv").write_text(table.csv_text(comp))
    paths = [folder / "comparison.md", folder / "comparison.csv"]
    paths.append(charts.comparison(comp, folder / "comparison.png"))
    paths.append(charts.pareto(comp, folder / "pareto.png"))
    if len(curves):
        paths.append(charts.curves(comp, curves, folder / "curves.png"))
    if comp.tuning:  # tune=lr: the score against the tuned value, and against the tuning budget
        paths.append(study_charts.sensitivity(comp.tuning, comp.labels, folder / "sensitivity.png"))
        paths.append(study_charts.budget(comp.tuning, comp.labels, folder / "budget.png"))
    return paths
