"""A comparison as people read it: the Markdown table with its verdicts and what they mean, the CSV,
and the few figures a sweep's parent run carries as metrics."""

import re

import pandas as pd

SHORT = {"not resolved": "open", "no finished run": "no run"}  # verdicts as a table cell shows them


def _fmt(value, digits=4, signed=False) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _verdict_cell(r, margin: float) -> str:
    if r.verdict == "not resolved":
        return f"open: ~{int(r.seeds_needed)} seeds" if pd.notna(r.seeds_needed) else "open"
    if r.verdict.startswith("equivalent"):
        return f"equivalent (±{margin:g})"
    if r.verdict.startswith("worse,"):
        return f"worse (within ±{margin:g})"
    return SHORT.get(r.verdict, r.verdict)


def markdown(comp) -> str:
    """The table with short verdicts, what they mean under it, then the runs left out of it."""
    s, plan = comp.summary, comp.plan
    lines = [
        f"**{comp.title}**",
        "",
        "| # | configuration | n | mean | sd | 95% CI | vs best [simultaneous 95%] | verdict | time (s) "
        "| params | front |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    shrunk = set(comp.runs.configuration[comp.runs.debug.fillna("") != ""])
    for i, r in s.iterrows():
        n = f"{r.n}" + (f" (+{r.failed} failed)" if r.failed else "")
        vs = "-"
        if pd.notna(r.diff_low):
            low, high = _fmt(r.diff_low, signed=True), _fmt(r.diff_high, signed=True)
            vs = f"{_fmt(r['diff'], signed=True)} [{low}, {high}]"
        cells = [
            str(i + 1),
            comp.labels[r.configuration] + (" (debug)" if r.configuration in shrunk else ""),
            n,
            _fmt(r["mean"]),
            _fmt(r.sd),
            f"[{_fmt(r.ci_low)}, {_fmt(r.ci_high)}]" if r.n >= 2 else "-",
            vs,
            _verdict_cell(r, plan.margin),
            _fmt(r.train_time_s, 2),
            "-" if pd.isna(r.params_total) else f"{int(r.params_total):,}",
            "yes" if r.front else "",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *_legend(comp)]
    if shrunk:
        names = sorted(comp.labels.get(c, c) for c in shrunk)
        why = "shrunk by +debug or train.limit_batches"
        lines += ["", f"**Debug runs, not results** ({', '.join(names)}): {why}."]
    failed = comp.runs[comp.runs.status != "FINISHED"]
    if len(failed):
        lines += ["", "Not in the statistics (did not finish):"]
        for _, r in failed.iterrows():
            label = comp.labels.get(r.configuration, r.configuration)
            lines.append(f"- {label} seed={r.seed}: {r.status}" + (f": {r.error}" if r.error else ""))
    if comp.note:
        lines += ["", comp.note]
    return "\n".join(lines) + "\n"


def _legend(comp) -> list[str]:
    """What the columns and verdicts mean, and how the intervals were made."""
    s, plan = comp.summary, comp.plan
    k, looks = len(s), len(plan.looks)
    per_pair = 1 - plan.confidence(0, k)
    family = f"all {k * (k - 1) // 2} pairs" if k > 2 else "the one pair"
    if looks > 1:
        family += f" at each of the race's {looks} planned looks ({', '.join(map(str, plan.looks))} seeds)"
    tests = "paired by seed"
    if not s.test.eq("paired").all():
        tests += " where both ran the same seeds, else Welch's"
    lines = [
        f"{comp.metric_name.capitalize()} per configuration over n distinct seeds: mean, sd, 95% t-interval.",
        f"*vs best*: the configuration's mean minus the best mean among the others (the best's row: its lead "
        f"over the runner-up), with an interval that holds for the whole table at once: t-intervals {tests}, "
        f"for {family}, each at {100 * (1 - per_pair):.3g}% (Bonferroni: 5% shared among them), bounding "
        "Hsu's comparison with the best.",
        f"*worse*: another configuration is better. *equivalent*: within ±{plan.margin:g} of the best "
        "(compare.margin). *open: ~K seeds*: neither yet; about K seeds per configuration would likely "
        "settle it (80%)" + ("" if comp.race else ": `seeds=auto` races until it is settled") + ".",
        "*front*: no other configuration has a higher mean, a shorter training time and fewer parameters.",
    ]
    repeats = int((s.runs - s.n).sum())
    if repeats:
        extra = f"{repeats} extra run{'s' if repeats > 1 else ''} here"
        lines.append(f"Seeds that ran more than once count once, as the mean of their runs ({extra}).")
    if comp.race:
        rounds = comp.race["rounds"]
        seeds = ", ".join(str(r["seeds"]) for r in rounds) or "none"
        stopped = comp.race["stopped"] or "running"
        lines.append(f"Race: {len(rounds)} round(s) ({seeds} seeds per configuration), stopped: {stopped}.")
    return [f"- {line}" for line in lines]


def csv_text(comp) -> str:
    table = comp.summary.assign(label=comp.summary.configuration.map(comp.labels), metric=comp.metric)
    table.insert(0, "rank", range(1, len(table) + 1))
    return table.assign(seeds=table.seeds.map(lambda s: " ".join(map(str, s)))).to_csv(index=False)


def headline(comp) -> dict[str, float]:
    """The figures a parent run carries as metrics: the best, and each configuration's mean."""
    s = comp.summary
    best = s.iloc[0]
    figures = {"configurations": len(s), "seeds": int(s.n.max())}
    figures["resolved_worse"] = int((s.verdict == "worse").sum())
    figures |= {"best_mean": best["mean"], "best_ci_low": best.ci_low, "best_ci_high": best.ci_high}
    for _, r in s.iterrows():
        name = re.sub(r"[^/\w.\- :]", "_", comp.labels[r.configuration])  # what MLflow allows in a name
        figures[f"mean/{name}"] = r["mean"]
    return {k: round(float(v), 4) for k, v in figures.items() if not pd.isna(v)}
