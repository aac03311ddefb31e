"""The documentation's commands are promises: every `python run.py …` and `make …` line of the ```bash
blocks of the README and of every page of the site (docs/*.md, in mkdocs.yml's nav order) runs here as a
user types it, with overrides appended that shrink it, and leaves what it promises.

A section is a heading: its blocks run top to bottom on a fresh store, as a user would type them (so
`make compare` sees the sweeps above it); two sections run side by side. A section that the README and
a page both show (the newcomer's path, on the README and on "Getting started") is one section: a
command it shows twice runs once. The sections from LATER on run in tests/test_readme_later.py, the
same test in a file of its own. A command the documentation gains must get a promise below, or a
reason to skip, the day it is written: `test_every_readme_command_has_a_promise` fails until it has one.
"""

import functools
import json
import os
import re
import shlex
import signal
import sqlite3
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from conftest import ROOT, all_runs, patience, small, store, wait_for
from imagefiles import write_image_folder
from test_lifecycle import SLOW

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Promise:
    jobs: int = 0  # job runs the command adds, every one FINISHED; a sweep's: with those it reused
    sweeps: int = 0  # sweep parent runs it adds, FINISHED, each with its jobs as children
    names: tuple[str, ...] = ()  # the added jobs' run names, sorted, where the page names them
    output: tuple[str, ...] = ()  # what its standard output shows
    resumes: bool = False  # continues the killed run it is given as <run_id>
    params: tuple[tuple[str, str], ...] = ()  # (param, value) every job it trained logged
    metrics: frozenset[str] = frozenset()  # metrics every added job logged
    parent_files: tuple[str, ...] = ()  # artifacts on the sweep's parent run
    sweep_dir: tuple[str, ...] = ()  # what the sweep's folder holds (a launcher's own records)
    raced: bool = False  # seeds=auto: as many jobs as the race's record says, names among `names`
    tags: tuple[str, ...] = ()  # tags every added job carries


def seeded(names, seeds=(0,)) -> tuple[str, ...]:
    """Run names as archbench gives them: the choices, then the seed (`mlp-relu-sgd-s3`)."""
    return tuple(f"{n}-s{s}" for n in names for s in seeds)


ACTIVATIONS = tuple(f"mlp-{a}-sgd" for a in ("relu", "sigmoid", "tanh"))
ARCHITECTURES = tuple(f"{m}-relu-sgd" for m in ("cnn1", "cnn2", "cnn3", "mlp", "mlp_deep"))
CARD = ("cnn3-relu-sgd", "cnn3-tanh-sgd")
RECORD = frozenset(
    ("train_loss", "train_accuracy", "test_accuracy", "test_loss", "epoch_time_s", "train_time_s")
    + ("params_total", "params_trainable", "mult_adds")
)

PROMISES = {
    "make run": Promise(jobs=1, names=seeded(["mlp-relu-sgd"])),
    "make sweep-activations": Promise(jobs=15, sweeps=1, names=seeded(ACTIVATIONS, range(5))),
    "python run.py": Promise(jobs=1, names=seeded(["mlp-relu-sgd"])),
    "python run.py model=cnn3 activation=tanh train.epochs=10": Promise(
        jobs=1, names=seeded(["cnn3-tanh-sgd"])
    ),
    # the design card's line, verbatim (the README and "Getting started")
    "python run.py model=cnn3 -m activation=relu,tanh": Promise(jobs=2, sweeps=1, names=seeded(CARD)),
    'make run ARGS="model=cnn3 -m activation=relu,tanh"': Promise(jobs=2, sweeps=1, names=seeded(CARD)),
    "python run.py model=cnn3 -m activation=relu,tanh seeds=3": Promise(
        jobs=6, sweeps=1, names=seeded(CARD, range(3))
    ),
    "python run.py +experiment=activations 'seed=range(5,10)'": Promise(
        jobs=15, sweeps=1, names=seeded(ACTIVATIONS, range(5, 10))
    ),
    # every job run of the experiment by configuration: the two sweeps above it, seeds 0-4 and 5-9
    'make compare ARGS="--experiment archbench"': Promise(
        output=("experiment archbench", "10 seeds per configuration", "activation=sigmoid")
    ),
    # the presets repeat every configuration over seeds: 5 for activations, 3 for architectures
    "python run.py +experiment=activations": Promise(jobs=15, sweeps=1, names=seeded(ACTIVATIONS, range(5))),
    "python run.py +experiment=activations seeds=auto": Promise(
        sweeps=1, names=ACTIVATIONS, raced=True, parent_files=("pareto.png", "race.json")
    ),
    "python run.py model=cnn2,cnn3 -m seeds=auto race.max_minutes=30": Promise(
        sweeps=1, names=("cnn2-relu-sgd", "cnn3-relu-sgd"), raced=True
    ),
    "python run.py +experiment=architectures": Promise(
        jobs=15, sweeps=1, names=seeded(ARCHITECTURES, range(3))
    ),
    "python run.py +experiment=activations optimizer=adam train.epochs=1": Promise(
        jobs=15, sweeps=1, names=seeded([n.replace("sgd", "adam") for n in ACTIVATIONS], range(5))
    ),
    "python run.py model=dummynet mode=inspect": Promise(output=("total", "2,512", "Conv2d")),
    # tuned (shrunk to 2 settings x 2 tuning seeds 1000 and 1001), then evaluated on seeds 0-1
    "python run.py +experiment=activations tune=lr": Promise(
        jobs=3 * 2 * 2 + 3 * 2,
        sweeps=1,
        names=seeded(ACTIVATIONS, range(2)) + 2 * seeded(ACTIVATIONS, (1000, 1001)),
        parent_files=("tuning.json", "sensitivity.png", "budget.png"),
        tags=("archbench.role",),
        output=("Each configuration at its own optimizer.lr", "| tuned |"),
    ),
    "python run.py -m optimizer=sgd,adam tune=lr": Promise(
        jobs=2 * 2 * 2 + 2 * 2,
        sweeps=1,
        names=seeded(["mlp-relu-sgd", "mlp-relu-adam"], range(2))
        + 2 * seeded(["mlp-relu-sgd", "mlp-relu-adam"], (1000, 1001)),
        parent_files=("tuning.json",),
        tags=("archbench.role", "archbench.study"),
    ),
    # the latest sweep: the activations preset (Adam, in "Running experiments")
    "make compare": Promise(
        output=(
            "activation=relu",
            "activation=tanh",
            "activation=sigmoid",
            "5 seeds per configuration",
            "curves.png",
        )
    ),
    "python run.py resume=<run_id>": Promise(resumes=True),
    # 15 jobs four at a time into a fresh store, and the comparison from the launching process
    "python run.py +experiment=architectures hydra/launcher=joblib hydra.launcher.n_jobs=4": Promise(
        jobs=15,
        sweeps=1,
        names=seeded(ARCHITECTURES, range(3)),
        params=(("train.threads", "1"),),  # jobs x threads <= cores: 1 thread each below 8 cores
        metrics=RECORD,
        parent_files=("comparison.md", "comparison.csv", "comparison.png", "curves.png"),
    ),
    # Stopping and starting again: the same sweep with more seeds, then all again
    "python run.py -m activation=relu,tanh seeds=2": Promise(
        jobs=4,
        sweeps=1,
        names=seeded(["mlp-relu-sgd", "mlp-tanh-sgd"], range(2)),
        output=("reusing 0 finished runs, resuming 0, training 4 (sweep.reuse=false trains all)",),
    ),
    "python run.py -m activation=relu,tanh seeds=4": Promise(  # 4 reused, 4 trained
        jobs=8,
        sweeps=1,
        names=seeded(["mlp-relu-sgd", "mlp-tanh-sgd"], range(4)),
        output=("reusing 4 finished runs, resuming 0, training 4", "4 runs reused from earlier sweeps"),
    ),
    "python run.py -m activation=relu,tanh seeds=4 sweep.reuse=false": Promise(
        jobs=8,
        sweeps=1,
        names=seeded(["mlp-relu-sgd", "mlp-tanh-sgd"], range(4)),
        output=("sweep.reuse=false: training all 8 runs",),
    ),
    "python run.py -m activation=relu,tanh hydra/launcher=basic": Promise(
        jobs=2, sweeps=1, names=seeded(["mlp-relu-sgd", "mlp-tanh-sgd"])
    ),
    "python run.py -m model=cnn2,cnn3 train.threads=2": Promise(
        jobs=2, sweeps=1, names=seeded(["cnn2-relu-sgd", "cnn3-relu-sgd"]), params=(("train.threads", "2"),)
    ),
    "python run.py -m hydra/launcher=submitit_local activation=relu,tanh": Promise(
        jobs=2, sweeps=1, names=seeded(["mlp-relu-sgd", "mlp-tanh-sgd"]), sweep_dir=(".submitit",)
    ),
    # on the tests' one-node Slurm cluster (tests/slurmcluster.py), with the preset's defaults
    "python run.py -m hydra/launcher=slurm activation=relu,tanh": Promise(
        jobs=2,
        sweeps=1,
        names=seeded(["mlp-relu-sgd", "mlp-tanh-sgd"]),
        sweep_dir=(".submitit",),
        tags=("slurm_job_id",),
    ),
    "python run.py -m hydra/launcher=slurm activation=relu,tanh seeds=auto": Promise(
        sweeps=1, names=("mlp-relu-sgd", "mlp-tanh-sgd"), raced=True, tags=("slurm_job_id",)
    ),
    "python run.py model=cnn3 -m activation=relu,tanh hydra/launcher=slurm hydra.launcher.cpus_per_task=2 "
    "hydra.launcher.mem_gb=8": Promise(
        jobs=2, sweeps=1, names=seeded(CARD), params=(("train.threads", "2"),), tags=("slurm_job_id",)
    ),  # train.threads follows the CPUs asked for
    "python run.py +search=lr_batch model=cnn2 hydra.sweeper.n_trials=30": Promise(jobs=3, sweeps=1),
    "python run.py +search=lr_batch 'activation=choice(relu,tanh,sigmoid)'": Promise(jobs=3, sweeps=1),
    "python run.py model=cnn2 scheduler=onecycle train.epochs=10": Promise(
        jobs=1, names=seeded(["cnn2-relu-sgd"])
    ),
    "python run.py +search=lr_batch model=cnn2 train.early_stopping.patience=2": Promise(jobs=3, sweeps=1),
    "python run.py +debug=fast": Promise(jobs=1, names=seeded(["mlp-relu-sgd"])),
    "python run.py +debug=overfit": Promise(
        jobs=1, names=seeded(["mlp-relu-sgd"]), output=("overfit check passed: accuracy 1.000",)
    ),
    "python run.py tracking.register=fashion-mlp tracking.system_metrics=true": Promise(
        jobs=1, names=seeded(["mlp-relu-sgd"])
    ),
    # a module and a config folder of one's own (~/mywork, written from docs/own.md's own blocks)
    "python run.py --config-dir ~/mywork/conf model=lenet mode=inspect": Promise(
        output=("LeNet", "Total params: 61,706")
    ),
    "python run.py --config-dir ~/mywork/conf model=lenet": Promise(
        jobs=1, names=seeded(["lenet-sgd"]), metrics=RECORD
    ),
    # a folder of images (~/mywork/shapes: three classes of generated 32x32 RGB PNGs, made 1x28x28)
    "python run.py --config-dir ~/mywork/conf -m model=lenet,cnn2 seeds=3 dataset=image_folder "
    "dataset.root=$HOME/mywork/shapes 'dataset.input_shape=[1,28,28]'": Promise(
        jobs=6,
        sweeps=1,
        names=seeded(["lenet-sgd", "cnn2-relu-sgd"], range(3)),
        output=("| model=cnn2 |", "| model=lenet |", "image_folder, 1 epoch(s), 3 seeds per configuration"),
        params=(("dataset.input_shape", "[1, 28, 28]"),),
        metrics=RECORD | {f"zz_class_accuracy.{c}" for c in ("circle", "square", "triangle")},
        parent_files=("comparison.md", "comparison.csv"),
    ),
}

# Commands that cannot run here, each with the reason; all are covered elsewhere where they can be.
SKIPS = {
    ("Two commands", "make test"): "this test runs inside it",
    ("Compare in three steps", "make ui"): "serves until stopped; tests/test_ui.py drives the UI in Chromium",
    ("Running experiments", "make ui"): "serves until stopped; tests/test_ui.py drives the UI in Chromium",
    ("Where to go next", "make docs"): "serves until stopped; tests/test_docs.py builds the site with "
    "--strict and opens it in Chromium",
    (
        "Slurm clusters",
        "python run.py +experiment=architectures hydra/launcher=slurm device=cuda "
        "hydra.launcher.partition=gpu hydra.launcher.timeout_min=60",
    ): "needs a GPU partition; in tests/test_slurm.py the CPU-only node refuses device=cuda's GPU",
    (
        "A team MLflow server",
        'make server HOST=0.0.0.0 ARGS="--allowed-hosts mlflow-host:5000"',
    ): "needs PostgreSQL at db-host; test_server.py starts one, with the basic-auth app",
    ("A team MLflow server", "make sweep-architectures"): "tracks to the team server at mlflow-host "
    "exported above",
    ("A team MLflow server", "make compare"): "reads the team server at mlflow-host exported above",
    # a ```python block, by its first line
    ("The notebook and the Python API", "import archbench"): "tests/test_api.py runs it, each call with "
    "the shrinking overrides appended, and checks what each line promises",
    (
        "A team MLflow server",
        "from mlflow.server import get_app_client  # run with MLFLOW_TRACKING_USERNAME=admin and "
        "its password",
    ): "needs the team server at mlflow-host; tests/test_server.py adds users and grants EDIT "
    "with get_app_client",
}

TRAINING_TARGETS = {"run", "sweep-activations", "sweep-architectures", "search"}


def pages() -> list[Path]:
    """The documentation a user reads, in order: the README, then the site's pages as mkdocs.yml's nav
    lists them (a page left out of the nav fails `mkdocs build --strict` in tests/test_docs.py)."""
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]
    return [ROOT / "README.md", *(ROOT / "docs" / page for entry in nav for page in entry.values())]


def readme_commands() -> list[tuple[str, str]]:
    """(section, command) for every `python run.py`/`make` line of the documentation's bash blocks, in
    order; a section's command shown again (on the README and a page) counts once."""
    return [(section, command) for section, command, _ in _readme_lines()]


def readme_exports(section: str, command: str) -> dict[str, str]:
    """The `export NAME=VALUE` lines above `command` in its section, as typed: one shell session per
    section, as a user would type it."""
    return next(exports for s, c, exports in _readme_lines() if (s, c) == (section, command))


@functools.cache  # the pages as the session found them: part() and steps() ask for them per command
def _readme_lines() -> tuple[tuple[str, str, dict[str, str]], ...]:
    found = {}  # (section, command) -> exports: the first time a section shows a command
    for page in pages():
        for section, command, exports in _page_lines(page):
            found.setdefault((section, command), exports)
    return tuple((section, command, exports) for (section, command), exports in found.items())


def _page_lines(page: Path) -> list[tuple[str, str, dict[str, str]]]:
    """(section, command, exports) for every `python run.py`/`make` line of one page's bash blocks."""
    found, section, block, other, exports = [], "", None, False, {}
    for line in page.read_text().splitlines():
        if block is None:
            if other or (line.strip().startswith("```") and line.strip() != "```bash"):
                other = not (other and line.strip() == "```")  # a python or yaml block: not headings
            elif line.startswith("#"):
                section, exports = line.lstrip("#").strip(), {}
            elif line.strip() == "```bash":
                block = ""
            continue
        if line.strip() == "```":
            block = None
            continue
        block += line[:-1] + " " if line.endswith("\\") else line + "\n"  # join continued lines
        if not line.endswith("\\"):
            for part in block.split("&&"):
                words = shlex.split(part, comments=True)
                if words[:1] == ["export"] and "=" in words[1]:
                    exports = {**exports, **dict([words[1].split("=", 1)])}
                if words[:2] == ["python", "run.py"] or words[:1] == ["make"]:
                    typed = re.sub(r"\s+#.*$", "", part.strip())  # as shown, without its comment
                    found.append((section, re.sub(r"\s+", " ", typed), exports))
            block = ""
    return found


def readme_python_blocks() -> list[tuple[str, str]]:
    """(section, code) for every ```python block of the documentation, dedented (they sit in list items)."""
    found, section, block = [], "", None
    for line in "\n".join(page.read_text() for page in pages()).splitlines():
        if block is None:
            if line.startswith("#"):
                section = line.lstrip("#").strip()
            elif line.strip() == "```python":
                block, indent = [], len(line) - len(line.lstrip())
            continue
        if line.strip() == "```":
            found.append((section, "\n".join(block)))
            block = None
            continue
        block.append(line[indent:])
    return found


def readme_python() -> list[tuple[str, str]]:
    """The python blocks to run: not a file for the user to write (`# ~/path`: readme_files), nor a
    block that SKIPS names by its first line."""
    return [
        (s, code)
        for s, code in readme_python_blocks()
        if not code.startswith("# ~/") and (s, code.splitlines()[0]) not in SKIPS
    ]


def readme_files() -> dict[str, str]:
    """The documentation's files for a user to write: each code block whose first line is `# ~/path`."""
    text = "\n".join(page.read_text() for page in pages())
    blocks = re.findall(r"^( *)```(?:python|yaml)\n((?:\1.*\n)*?)\1```$", text, re.M)
    found = {}
    for _, body in blocks:
        body = textwrap.dedent(body)
        first = body.partition("\n")[0]
        if first.startswith("# ~/"):
            found[first[2:].strip()] = body
    return found


def own_work(home: Path) -> None:
    """What "Your own network and data" asks a user to make in ~/mywork: the page's files, written as
    shown, and a folder of images (three classes of generated PNGs, 80 + 20 each, another size and
    mode than the input_shape the page asks for)."""
    for path, text in readme_files().items():
        (home / path[2:]).parent.mkdir(parents=True, exist_ok=True)
        (home / path[2:]).write_text(text)
    write_image_folder(home / "mywork" / "shapes", per_class=80, test_per_class=20, size=(32, 32), mode="RGB")


SETUP = {"Your own network and data": own_work}  # section -> what a user makes before its commands


def as_bash(word: str, env: dict[str, str]) -> str:
    """A word as bash expands it: `~` at its start, and $NAME."""
    word = env["HOME"] + word[1:] if word == "~" or word.startswith("~/") else word
    return re.sub(r"\$(\w+)|\$\{(\w+)\}", lambda m: env.get(m.group(1) or m.group(2), ""), word)


def test_every_readme_command_has_a_promise():
    commands = readme_commands()
    assert "python run.py model=cnn3 -m activation=relu,tanh" in [c for _, c in commands]  # the card's
    unknown = [c for s, c in commands if c not in PROMISES and (s, c) not in SKIPS]
    assert not unknown, f"documented commands with no promise in tests/test_readme.py: {unknown}"
    stale = set(PROMISES) - {c for _, c in commands}
    firsts = [(s, code.splitlines()[0]) for s, code in readme_python_blocks()]
    stale |= {k for k in SKIPS if k not in commands and k not in firsts}
    assert not stale, f"promises for commands the documentation no longer has: {stale}"
    # every section runs in one of the two files: the ones above LATER here, the rest there
    assert LATER in {s for s, _ in commands}, f"no section {LATER!r} for test_readme_later.py"
    here, there = ({p.values[0] for p in sections(x)} for x in (False, True))
    assert here and there and not here & there, (here, there)


def shrunk(words: list[str], tmp: Path, n: int, model: bool = False) -> list[str]:
    """The typed command plus what shrinks it: synthetic data (unless it names a dataset: its own
    small one), 1 epoch, output under tmp; the thread count as the command gets it (the lease); the
    MLflow model only where the section uses it (`model`) or the command registers it."""
    own_data = any(w.startswith("dataset=") for w in words)
    model = model or any(w.startswith("tracking.register=") for w in words)
    keep = ("tracking.uri=", "hydra.sweep.dir=", "train.threads=", *(("dataset=",) if own_data else ()))
    keep += ("tracking.log_model=",) if model else ()
    shrink = [o for o in small(tmp) if not o.startswith(keep)] + [
        f"hydra.sweep.dir={tmp}/outputs/sweep-{n}",
        *(() if own_data else ("dataset.train_size=500",)),
    ]
    if any(w.startswith("+search=") for w in words):
        shrink.append("hydra.sweeper.n_trials=3")
    if "seeds=auto" in words:
        shrink.append("race.max_seeds=5")  # two rounds at most: 3 and 5 seeds
    if "tune=lr" in words:  # 2 settings a configuration, no extension, 2 seeds: the flow, not the search
        shrink += ["tune.settings=2", "tune.extend=0", "seeds=2"]
    if words[0] == "python":
        return [*words, *shrink]
    target, assigned = words[1], dict(w.split("=", 1) for w in words[2:] if "=" in w)
    if target in TRAINING_TARGETS:
        assigned["ARGS"] = " ".join([assigned.get("ARGS", ""), *shrink]).strip()
    if target == "compare":
        assigned["ARGS"] = " ".join([assigned.get("ARGS", ""), f"--out {tmp}/comparison"]).strip()
    return ["make", target, *(f"{k}={v}" for k, v in assigned.items())]


def killed_run(tmp: Path, env: dict) -> str:
    """A run stopped by SIGTERM after its first epoch, with a checkpoint: what `resume=` is for."""
    before = {r.info.run_id for r in all_runs(tmp)} if (tmp / "mlruns").exists() else set()
    cmd = ["python", "run.py", *small(tmp), *SLOW]  # SLOW last: its epochs, not small's 1 (the last wins)
    process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    run_id = wait_for(lambda: _first_epoch_done(tmp, before), "the first epoch in the store", 120, process)
    process.send_signal(signal.SIGTERM)  # epochs from its end: it cannot have finished
    assert process.wait(timeout=patience(60)) == 143
    return run_id


def _first_epoch_done(tmp: Path, before: set[str]) -> str | None:
    """The id of a run not in `before` that has logged its first epoch. Read with sqlite3, read-only and
    at once: the run is killed after its first epoch, and a slower look could miss that window."""
    try:
        with sqlite3.connect(f"file:{tmp}/mlruns/mlflow.db?mode=ro", uri=True) as conn:
            rows = conn.execute("SELECT DISTINCT run_uuid FROM metrics WHERE key = 'train_loss'").fetchall()
    except sqlite3.OperationalError:  # no database or no table yet
        return None
    return next((run_id for (run_id,) in rows if run_id not in before), None)


SLURM = " (Slurm)"  # a section's commands for a Slurm cluster: a test of their own, on the tests' cluster


# A long section split where its commands need nothing of the ones before (each part gets a fresh
# store and runs beside the others): the command that starts a part, and the part's name
SPLITS = {("Running experiments", "python run.py +experiment=architectures"): "Running experiments (presets)"}


def part(section: str, command: str) -> str:
    """The test a command runs in: its section's (or the part of it that SPLITS starts), or that
    one's Slurm part."""
    name = section
    for s, c in readme_commands():
        if s == section and (s, c) in SPLITS:
            name = SPLITS[(s, c)]
        if (s, c) == (section, command):
            break
    return name + SLURM if "hydra/launcher=slurm" in command.split() else name


# The documentation's sections from this one on (in pages()' order) run in tests/test_readme_later.py.
# With --dist loadfile a file runs on one pytest-xdist worker: as two files, the two halves (about equal:
# 2 minutes each alone on 2 cores, where the one file took 4.3) can run on both workers at once, not one
# after the other on one. A test per step (command or python block) says which one failed, and puts both
# files early in xdist's queue, which hands out the files with the most tests first: the longest files
# start first. The Optuna searches of "Comparisons" go with the later half: the two halves side by side
# on a shared 2-core machine took 320 s and 205 s with the searches in the first, 392 s and 302 s (a
# busier machine) with them in the later
LATER = "Hyperparameter search"


def later(section: str) -> bool:
    """Whether a section runs in tests/test_readme_later.py: it is LATER or below it (in pages())."""
    text = "\n".join(re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S) for page in pages())
    headings = re.findall(r"^#+\s*(.*?)\s*$", text, re.M)  # not a code block's comments
    assert LATER in headings, f"test_readme.LATER: no section {LATER!r} in the documentation"
    return headings.index(section) >= headings.index(LATER)


def steps(name: str) -> list[str]:
    """What a part runs, in order: its commands, then its section's python blocks (on their runs)."""
    commands = [c for s, c in readme_commands() if part(s, c) == name and (s, c) not in SKIPS]
    return commands + [code for s, code in readme_python() if s == name]


def sections(in_later: bool = False) -> list:
    """(part, step) for every step of the parts this file tests, in the documentation's order, a test each;
    `in_later`: those of tests/test_readme_later.py."""
    seen = []
    for section, command in readme_commands() + readme_python():
        if (section, command) in SKIPS or later(section) != in_later:
            continue
        if part(section, command) not in seen:
            seen.append(part(section, command))
    return [
        pytest.param(
            s, n, id=f"{s}: {step.splitlines()[0]}", marks=[pytest.mark.slurm] if s.endswith(SLURM) else []
        )
        for s in seen
        for n, step in enumerate(steps(s))
    ]


@pytest.fixture(scope="module")
def section_runs(request, tmp_path_factory):
    """The sections of the requesting file's selected tests (this file or tests/test_readme_later.py),
    started two at a time as soon as the first one's test starts: a section is mostly single-threaded
    start-up (Python, Hydra, MLflow), so on 2 cores two of them side by side take little longer than
    one. Each keeps its own store and folder. Slurm parts submit to conftest's one-node cluster;
    where it cannot start, they skip (or fail, in CI). Each section: (its future or why it cannot
    run, the list of its steps passed)."""
    wanted = list(
        dict.fromkeys(
            item.callspec.params["section"]
            for item in request.session.items
            if getattr(item, "originalname", None) == "test_readme_commands_do_what_they_promise"
            and item.module is request.module  # a worker collects both files; it runs only its own
        )
    )
    cluster: dict | BaseException = {}
    if any(s.endswith(SLURM) for s in wanted):
        try:
            cluster = {"SLURM_CONF": request.getfixturevalue("slurm_cluster").env["SLURM_CONF"]}
        except (pytest.skip.Exception, pytest.fail.Exception) as e:
            cluster = e
    pool = ThreadPoolExecutor(max_workers=2)
    runs = {}
    size = lambda s: -sum(part(x, c) == s for x, c in readme_commands())  # noqa: E731
    for s in sorted(wanted, key=size):  # the longest first: the pair of them ends nearer together
        passed = []
        if not s.endswith(SLURM):
            runs[s] = pool.submit(run_section, s, tmp_path_factory.mktemp("readme"), None, passed), passed
        elif isinstance(cluster, dict):
            runs[s] = pool.submit(run_section, s, tmp_path_factory.mktemp("readme"), cluster, passed), passed
        else:
            runs[s] = cluster, passed  # why there is no cluster: the tests skip, or fail, with it
    yield runs
    pool.shutdown(cancel_futures=True)


@pytest.mark.parametrize("section, step", sections())
def test_readme_commands_do_what_they_promise(section, step, section_runs):
    finished(section, step, section_runs)


def finished(section: str, step: int, runs: dict) -> None:
    """Waits for the section that section_runs started: passes if its step `step` (a command or
    python block, counted from 0) did what it promises; raises the step's failed assertion, or why the
    section skips; fails, naming the step that stopped the section, if it stopped before this one."""
    started, passed = runs[section]
    if isinstance(started, BaseException):
        raise started
    try:
        started.result()
    except BaseException:
        stopped = len(passed)  # the step that failed
        if step < stopped:  # it passed; a later one failed
            return
        if step == stopped:
            raise  # its assertion
        pytest.fail(f"not run: the section stopped at its step {stopped}, {steps(section)[stopped]!r}")


def run_section(section: str, tmp_path: Path, cluster: dict | None, passed: list) -> None:
    """The section's commands in order, on a fresh store, each checked against its promise, then its
    python blocks; each step appended to `passed` once it has passed."""
    # `python` is the venv's, as after `source .venv/bin/activate`; the store is this test's own
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlruns/mlflow.db",
        **(cluster or {}),
    }
    if section in SETUP:  # a home of its own, like a user's, where the section's files are made
        env["HOME"] = str(tmp_path / "home")
        env.update(
            {f"XDG_{kind}_HOME": str(Path.home() / f".{kind.lower()}") for kind in ("CACHE", "CONFIG")}
        )
        SETUP[section](tmp_path / "home")
    commands = [c for s, c in readme_commands() if part(s, c) == section and (s, c) not in SKIPS]
    model = any(s == section for s, _ in readme_python())  # its python loads the latest run's model
    for n, command in enumerate(commands):
        promise = PROMISES[command]
        own = next(s for s, c in readme_commands() if part(s, c) == section and c == command)
        typed = readme_exports(own, command)  # the command's own section
        exported = {k: as_bash(v, env) for k, v in typed.items()}
        exported.pop("MLFLOW_TRACKING_URI", None)  # the store stays this test's own
        words = [as_bash(w, env) for w in shlex.split(command)]
        resumed = None
        if "resume=<run_id>" in words:
            resumed = killed_run(tmp_path, env)
            words = [w.replace("<run_id>", resumed) for w in words]
        before = {r.info.run_id for r in all_runs(tmp_path)} if (tmp_path / "mlruns").exists() else set()
        done = subprocess.run(
            shrunk(words, tmp_path, n, model), cwd=ROOT, env={**env, **exported}, capture_output=True,
            text=True, timeout=patience(600),
        )  # fmt: skip
        assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
        for text in promise.output:
            assert text in done.stdout, f"{command}: {text!r} not in its output:\n{done.stdout[-3000:]}"
        runs = all_runs(tmp_path) if (tmp_path / "mlruns").exists() else []
        new = [r for r in runs if r.info.run_id not in before]
        parents = [r for r in new if r.data.tags.get("archbench.sweep") == "parent"]
        created = [r for r in new if r not in parents]
        # a sweep's runs: those it trained and those of earlier sweeps it reused (sweeps/reuse.py)
        used = {f"archbench.used_by.{p.info.run_id}" for p in parents}
        jobs = created + [r for r in runs if r not in new and used & set(r.data.tags)]
        assert len(parents) == promise.sweeps, command
        assert {r.info.status for r in new} <= {"FINISHED"}, command
        if promise.raced:  # the race decides how many: its record says, and every round ran
            (parent,) = parents
            runs_so_far = store(tmp_path).get_metric_history(parent.info.run_id, "race_runs")
            assert len(jobs) == max(m.value for m in runs_so_far) >= 3 * len(set(promise.names)), command
            assert {re.sub(r"-s\d+$", "", r.info.run_name) for r in jobs} == set(promise.names), command
            assert parent.data.tags["race.stopped"] in (
                "all resolved",
                "race.max_seeds=5 reached",
                "all resolved but 1, which more seeds would likely not settle",
            ), command
        else:
            assert len(jobs) == promise.jobs, command
        if promise.names and not promise.raced:
            assert sorted(r.info.run_name for r in jobs) == sorted(promise.names), command
        if parents:
            ids = {p.info.run_id for p in parents}
            assert all(r.data.tags.get("mlflow.parentRunId") in ids for r in created), command
        for key, value in promise.params:  # as this command ran them (a reused run: as it ran then)
            assert {r.data.params[key] for r in created} <= {value}, (command, key)
        assert all(promise.metrics <= set(r.data.metrics) for r in jobs), command
        for parent in parents if promise.parent_files else ():
            files = {a.path for a in store(tmp_path).list_artifacts(parent.info.run_id)}
            assert set(promise.parent_files) <= files, command
        for tag in promise.tags:
            assert all(r.data.tags.get(tag) for r in jobs), (command, tag)
        for name in promise.sweep_dir:  # really went through the launcher
            assert (tmp_path / "outputs" / f"sweep-{n}" / name).exists(), command
        if promise.resumes:
            (run,) = [r for r in runs if r.info.run_id == resumed]
            assert run.info.status == "FINISHED" and run.data.tags["archbench.resumed"] == "1", command
        passed.append(command)
    for code in [c for s, c in readme_python() if s == section]:  # after the commands, on their runs
        run_python(code, tmp_path, env)
        passed.append(code)


def run_python(code: str, tmp_path: Path, env: dict) -> None:
    """A python block of the documentation as a user runs it in the project folder, with `images` their
    own: here the latest job run's test images (synthetic: made again from the run's dataset params).
    Its predictions must give the run's test accuracy."""
    from archbench.data import SyntheticSource

    latest = max(
        (r for r in all_runs(tmp_path) if "configuration" in r.data.tags), key=lambda r: r.info.start_time
    )
    p = latest.data.params
    assert p["dataset"] == "synthetic", "the documentation test's runs are shrunk to synthetic data"
    shape, sizes = (
        json.loads(p["dataset.input_shape"]),
        (int(p["dataset.train_size"]), int(p["dataset.test_size"])),
    )
    source = SyntheticSource(
        "synthetic",
        shape,
        int(p["dataset.num_classes"]),
        *sizes,
        float(p["dataset.noise"]),
        int(p["dataset.seed"]),
    )
    raw = source.load(tmp_path)
    torch.save({"images": raw["x_test"], "labels": raw["y_test"]}, tmp_path / "images.pt")
    given = "import torch\ngiven = torch.load('images.pt')\nimages = given['images']\n"
    check = "\nprint((predicted == given['labels']).sum().item() / len(given['labels']))\n"
    done = subprocess.run(
        [sys.executable, "-c", given + code + check],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=patience(300),
    )
    assert done.returncode == 0, f"{code}\n{done.stderr[-3000:]}"
    accuracy = float(done.stdout.split()[-1])
    assert accuracy == pytest.approx(latest.data.metrics["test_accuracy"], abs=1e-9), (
        code,
        latest.info.run_name,
    )
