"""A comparison as people read it: the Markdown table with its verdicts and what they mean, the CSV,
and the few figures a sweep's parent run carries as metrics."""

import re

import pandas as pd

from archbench.comparing.stats import RESAMPLED

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


COLUMNS = ("#", "configuration", "n", "mean", "sd", "95% CI", "vs best [simultaneous 95%]", "verdict",
           "time (s)", "params", "front")  # fmt: skip
PLAIN = tuple(c for c in COLUMNS if c not in ("95% CI", "params"))  # the description's: narrower


def _columns(comp, columns: tuple[str, ...]) -> tuple[str, ...]:
    """`columns`, with a tuned sweep's chosen values after the configuration."""
    if not comp.chosen:
        return columns
    at = columns.index("configuration") + 1
    return (*columns[:at], "tuned", *columns[at:])


def _cells(comp, rank: int, r, shrunk: set[str]) -> dict[str, str]:
    """One configuration's row, by column."""
    vs = "-"
    if pd.notna(r.diff_low):
        low, high = _fmt(r.diff_low, signed=True), _fmt(r.diff_high, signed=True)
        vs = f"{_fmt(r['diff'], signed=True)} [{low}, {high}]"
    return {
        "#": str(rank),
        "configuration": comp.labels[r.configuration] + (" (debug)" if r.configuration in shrunk else ""),
        "n": f"{r.n}" + (f" (+{r.failed} failed)" if r.failed else ""),
        "mean": _fmt(r["mean"]),
        "sd": _fmt(r.sd),
        "95% CI": f"[{_fmt(r.ci_low)}, {_fmt(r.ci_high)}]" if r.n >= 2 else "-",
        "vs best [simultaneous 95%]": vs,
        "verdict": _verdict_cell(r, comp.plan.margin),
        "time (s)": _fmt(r.train_time_s, 2),
        "params": "-" if pd.isna(r.params_total) else f"{int(r.params_total):,}",
        "front": "yes" if r.front else "",
        "tuned": (comp.chosen or {}).get(r.configuration, "-"),
    }


def _rows(comp) -> list[dict[str, str]]:
    shrunk = set(comp.runs.configuration[comp.runs.debug.fillna("") != ""])
    return [_cells(comp, i + 1, r, shrunk) for i, r in comp.summary.iterrows()]


def markdown(comp) -> str:
    """The table with short verdicts, what they mean under it, then the runs left out of it."""
    columns = _columns(comp, COLUMNS)
    lines = [f"**{comp.title}**", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row[c] for c in columns) + " |" for row in _rows(comp)]
    return "\n".join([*lines, "", *_legend(comp), *_left_out(comp)]) + "\n"


# a notebook's table (archbench.api): the verdict first, as people look for it first
HTML_COLUMNS = ("verdict", *(c for c in COLUMNS if c != "verdict"))


def html(comp) -> str:
    """The comparison as a notebook shows it: title, the table with its verdicts first, what they mean."""
    import html as escape

    def inline(text: str) -> str:  # the legend's Markdown: *emphasis* and `code`
        text = re.sub(r"`([^`]+)`", r"<code>\1</code>", escape.escape(text, quote=False))
        return re.sub(r"\*\*([^*]+)\*\*|\*([^*]+)\*", lambda m: f"<em>{m[1] or m[2]}</em>", text)

    columns = _columns(comp, HTML_COLUMNS)
    head = "".join(f"<th>{escape.escape(c)}</th>" for c in columns)
    cells = ("".join(f"<td>{escape.escape(row[c])}</td>" for c in columns) for row in _rows(comp))
    body = "".join(f"<tr>{row}</tr>" for row in cells)
    notes = [line.removeprefix("- ") for line in [*_legend(comp), *_left_out(comp)] if line.strip()]
    return (
        f"<p><strong>{escape.escape(comp.title)}</strong></p>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        "<ul>" + "".join(f"<li>{inline(n)}</li>" for n in notes) + "</ul>"
    )


def description(comp) -> str:
    """The comparison as MLflow's run description renders it (showdown, with every table style
    stripped, so a Markdown table's cells run together): the verdicts first, a line each, as the
    Overview shows only the first lines before "Show more"; the table as aligned plain text."""
    lines = [f"**{comp.title}**", ""]
    for _, r in comp.summary.iterrows():
        ci = f" [{_fmt(r.ci_low)}, {_fmt(r.ci_high)}]" if r.n >= 2 else ""
        verdict = r.verdict
        if verdict == "not resolved" and pd.notna(r.seeds_needed):
            verdict += f" (~{int(r.seeds_needed)} seeds would likely settle it)"
        lines.append(f"- **{comp.labels[r.configuration]}**: {verdict}, {_fmt(r['mean'])}{ci}, n = {r.n}")
    plain = _columns(comp, PLAIN)
    table = [dict(zip(plain, plain, strict=True)), *_rows(comp)]
    widths = {c: max(len(row[c]) for row in table) for c in plain}
    text = ["  ".join(row[c].ljust(widths[c]) for c in plain).rstrip() for row in table]
    lines += ["", "```text", *text, "```", "", *_legend(comp), *_left_out(comp)]
    lines += [
        "",
        "The table with each configuration's 95% CI and parameters: comparison.md and .csv (Artifacts).",
    ]
    return "\n".join(lines) + "\n"


def _left_out(comp) -> list[str]:
    """Debug runs, runs that did not finish, and the comparison's own note."""
    lines = []
    shrunk = sorted(
        {comp.labels.get(c, c) for c in comp.runs.configuration[comp.runs.debug.fillna("") != ""]}
    )
    if shrunk:
        why = "shrunk by +debug or train.limit_batches"
        lines += ["", f"**Debug runs, not results** ({', '.join(shrunk)}): {why}."]
    failed = comp.runs[comp.runs.status != "FINISHED"]
    if len(failed):
        lines += ["", "Not in the statistics (did not finish):"]
        for _, r in failed.iterrows():
            label = comp.labels.get(r.configuration, r.configuration)
            lines.append(f"- {label} seed={r.seed}: {r.status}" + (f": {r.error}" if r.error else ""))
    if comp.note:
        lines += ["", comp.note]
    return lines


def _legend(comp) -> list[str]:
    """What the columns and verdicts mean, and how the intervals were made."""
    s, plan = comp.summary, comp.plan
    k, looks = len(s), len(plan.looks)
    per_pair = 1 - plan.confidence(0, k)
    family = f"all {k * (k - 1) // 2} pairs" if k > 2 else "the one pair"
    level = f"each at {100 * (1 - per_pair):.3g}% (Bonferroni: 5% shared among them)"
    if looks > 1:
        family += f" at each of the race's {looks} planned looks ({', '.join(map(str, plan.looks))} seeds)"
        last = 100 * plan.confidence(looks - 1, k)
        level = (
            f"the looks sharing 5% by {plan.spending} alpha spending and the pairs each look's share "
            f"(Bonferroni): each at {100 * (1 - per_pair):.4g}% at the first look, {last:.4g}% at the last"
        )
    tests = "paired by seed"
    if not s.test.eq("paired").all():
        tests += " where both ran the same seeds, else Welch's"
    lines = [comp.roles] if comp.roles else []  # first: how far the verdicts reach
    lines += [
        f"{comp.metric_name.capitalize()} per configuration over n distinct seeds: mean, sd, 95% t-interval.",
        f"*vs best*: the configuration's mean minus the best mean among the others (the best's row: its lead "
        f"over the runner-up), with an interval that holds for the whole table at once: t-intervals {tests}, "
        f"for {family}, {level}, bounding Hsu's comparison with the best.",
        _sources(comp),
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


def _sources(comp) -> str:
    """Which noise the intervals cover: seeds and the test sample, or for some rows, seeds only."""
    s = comp.summary
    covered = s.sources.eq("seeds + test sample").all()
    both = (
        "the intervals cover seeds and the test sample (each run's per-example test predictions, "
        "seeds and examples crossed): the verdicts are about the task, not only this test set"
    )
    if covered:
        return f"*Sources*: {both}."
    if s.sources.eq(RESAMPLED).all():
        return (
            "*Sources*: seeds, each with its own stratified train/test partition of the pooled data "
            "(dataset.resample=true): the seeds carry the test and training samples' noise, and the "
            "verdicts are about the task. Its accuracies are not those of the official test split."
        )
    only = [comp.labels.get(c, c) for c in s.configuration[s.sources.ne("seeds + test sample")]]
    return (
        "*Sources*: seeds only for every row (runs without test predictions): the intervals speak for "
        "this test set, whose own noise they leave out."
        if len(only) == len(s)
        else f"*Sources*: {both}; seeds only for {', '.join(only)} (runs without test predictions)."
    )


def csv_text(comp) -> str:
    table = comp.summary.assign(label=comp.summary.configuration.map(comp.labels), metric=comp.metric)
    if comp.chosen:
        table = table.assign(tuned=table.configuration.map(comp.chosen))
    table.insert(0, "rank", range(1, len(table) + 1))
    return table.assign(seeds=table.seeds.map(lambda s: " ".join(map(str, s)))).to_csv(index=False)


def headline(comp) -> dict[str, float]:
    """The figures a parent run carries as metrics, rounded as the table shows them: the best's mean
    and interval, and how many configurations, seeds and verdicts. Per configuration, the table and
    the CSV say it (as `mean/<configuration>` metrics they made a section that the experiment's chart
    view showed before all others)."""
    s = comp.summary
    best = s.iloc[0]
    figures = {"configurations": len(s), "seeds": int(s.n.max())}
    figures["resolved_worse"] = int(s.verdict.str.startswith("worse").sum())
    figures["resolved_equivalent"] = int(s.verdict.str.startswith("equivalent").sum())
    figures |= {"best_mean": best["mean"], "best_ci_low": best.ci_low, "best_ci_high": best.ci_high}
    return {k: round(float(v), 4) for k, v in figures.items() if not pd.isna(v)}
