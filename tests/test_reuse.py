"""Sweeps and races that pick up where they stopped (sweeps/reuse.py, identity.py): the same command
run again trains only what the store does not hold, as users type it."""

import os
import signal
import subprocess
import sys
from collections import Counter

import pytest

from archbench import identity
from archbench.sweeps.reuse import ReusingLauncher
from conftest import ROOT, all_runs, compose_job, environment, patience, run_py, shrunk, store, wait_for

START = "reusing {} finished runs, resuming {}, training {} (sweep.reuse=false trains all)"


def jobs(tmp_path):
    return [r for r in all_runs(tmp_path) if r.data.tags.get("archbench.sweep") != "parent"]


def parents(tmp_path):
    runs = [r for r in all_runs(tmp_path) if r.data.tags.get("archbench.sweep") == "parent"]
    return sorted(runs, key=lambda r: r.info.start_time)


def table(stdout: str) -> list[list[str]]:
    """The comparison's rows, without the training-time column (a reused run's time is its own)."""
    rows = [line.split("|") for line in stdout.splitlines() if line.startswith("| ")]
    column = rows[0].index(" time (s) ")
    return [row[:column] + row[column + 1 :] for row in rows]


def test_what_makes_runs_the_same(tmp_path):
    base = compose_job(tmp_path, "seed=1")
    key = identity.settings(base)
    assert key == identity.settings(compose_job(tmp_path, "seed=1", "train.threads=2", "seeds=5"))
    assert key != identity.settings(compose_job(tmp_path, "seed=2"))
    assert key != identity.settings(compose_job(tmp_path, "seed=1", "activation=tanh"))
    assert identity.config_key(key, "a") != identity.config_key(key, "b")  # other data
    assert identity.code_version(base) == identity.code_version(compose_job(tmp_path, "seed=2"))


def test_the_seeds_of_a_configuration_share_one_composition_and_get_the_same_identity(tmp_path):
    # the reuse check composes each job as the sweeper will: once per configuration, the seed set after
    composed = []

    class Loader:
        def load_sweep_config(self, config, overrides):
            composed.append(overrides)
            return compose_job(tmp_path, *overrides)

    launcher = ReusingLauncher(launcher=None, config=None, config_loader=Loader())
    jobs = [[f"seed={s}", f"activation={a}", "train.epochs=2"] for s in (0, 1, 7) for a in ("relu", "tanh")]
    for job in jobs:
        assert identity.settings(launcher.composed(job)) == identity.settings(compose_job(tmp_path, *job))
    assert len(composed) == 2  # relu's and tanh's
    assert identity.settings(launcher.composed(jobs[0])) != identity.settings(launcher.composed(jobs[2]))


def own_network(tmp_path):
    """A network of one's own, its module and config folder under tmp_path: (the module's file, its
    source, the overrides that choose it, the environment that imports it)."""
    folder = tmp_path / "mywork"
    (folder / "conf" / "model").mkdir(parents=True)
    source = (
        "from torch import nn\n\n\ndef Net(num_classes, activation):\n"
        "    return nn.Sequential(\n"
        "        nn.Flatten(), nn.Linear(784, 32), activation(), nn.Linear(32, num_classes)\n"
        "    )\n"
    )
    (folder / "mynet.py").write_text(source)
    (folder / "conf" / "model" / "mine.yaml").write_text(
        "_target_: mynet.Net\nnum_classes: ${dataset.num_classes}\nactivation: ${activation}\n"
    )
    args = ["model=mine", f"hydra.searchpath=[file://{folder}/conf]"]
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))}
    return folder / "mynet.py", source, args, env


@pytest.mark.slow
def test_a_finished_sweep_again_trains_nothing_more_seeds_only_the_new_and_changed_code_all(tmp_path):
    import sqlite3

    # on a network of one's own, so that its source can change at the end
    module, source, mine, env = own_network(tmp_path)
    args = ["-m", "activation=relu,tanh", *mine]
    first = run_py(tmp_path, *args, "seeds=2", env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    assert START.format(0, 0, 4) in first.stdout
    before = {r.info.run_id for r in jobs(tmp_path)}
    # typed again, twice at once (each in its own folder, as two sweeps a second apart get them): the
    # same source of the network's own module is the same code
    both = [
        start(tmp_path, [*args, "seeds=2", f"hydra.sweep.dir={tmp_path}/outputs/again-{i}"], env=env)
        for i in range(2)
    ]
    for process in both:
        out, err = process.communicate(timeout=patience(300))
        assert process.returncode == 0, err[-3000:]
        assert START.format(4, 0, 0) in out and table(out) == table(first.stdout)
    with sqlite3.connect(tmp_path / "mlruns" / "mlflow.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert {r.info.run_id for r in jobs(tmp_path)} == before
    more = run_py(tmp_path, *args, "seeds=3", env=env)
    assert more.returncode == 0, more.stderr[-3000:]
    assert START.format(4, 0, 2) in more.stdout
    assert "4 runs reused from earlier sweeps" in more.stdout
    new = [r for r in jobs(tmp_path) if r.info.run_id not in before]
    assert sorted(r.data.params["seed"] for r in new) == ["2", "2"]
    rows = table(more.stdout)[1:]
    assert [row[3].strip() for row in rows] == ["3", "3"]  # n = 3 per configuration
    # the record: a parent per session; the reused runs tagged with every sweep that used them
    first_parent, *again, last = parents(tmp_path)
    assert all(p.info.status == "FINISHED" and p.data.tags["archbench.reused"] == "4" for p in again)
    for run in jobs(tmp_path):
        if run.info.run_id in before:
            sweeps = {f"archbench.used_by.{p.info.run_id}" for p in (first_parent, *again, last)}
            assert sweeps <= set(run.data.tags)
    assert first_parent.info.run_id in last.data.tags["archbench.continues"]
    # the folders of each session are its own: the third's numbered after the first's
    assert sorted(int(p.name) for p in (tmp_path / "outputs" / "sweep").iterdir() if p.name.isdigit()) == [
        *range(6)
    ]
    # the network's module edited: a run of the old source is not reused, and the sweep says why
    module.write_text(source + "# a change: the bias is now ...\n")
    changed = run_py(tmp_path, *args, "seeds=1", env=env)
    assert changed.returncode == 0, changed.stderr[-3000:]
    assert START.format(0, 0, 2) in changed.stdout and "2 runs not reused: code changed" in changed.stdout
    assert len(jobs(tmp_path)) == 6 + 2


def finished_runs(tmp_path) -> int:
    import sqlite3

    db = tmp_path / "mlruns" / "mlflow.db"
    if not db.is_file():
        return 0
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=patience(30)) as conn:
        return conn.execute(
            "select count(*) from runs r where status = 'FINISHED' and not exists (select 1 from tags t"
            " where t.run_uuid = r.run_uuid and t.key = 'archbench.sweep')"
        ).fetchone()[0]


def epochs(tmp_path) -> int:
    from test_race import epochs_logged

    return epochs_logged(tmp_path)


def start(tmp_path, args, env=None):
    return subprocess.Popen(
        [sys.executable, "run.py", *shrunk(tmp_path, args)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment(env),
    )  # fmt: skip


@pytest.mark.slow
def test_a_race_killed_after_its_first_round_continues_and_ends_as_if_never_stopped(tmp_path):
    # two configurations that differ by less than their noise, on a hard synthetic task: the race
    # needs both its looks (3 and 5 seeds) and ends open, at race.max_seeds
    args = ["-m", "train.batch_size=100,101", "seeds=auto", "race.max_seeds=5", "train.epochs=3",
            "dataset.train_size=6000", "dataset.test_size=5000", "dataset.noise=20"]  # fmt: skip
    killed = tmp_path / "killed"
    process = start(killed, args)
    wait_for(lambda: finished_runs(killed) >= 6, "the first round's 6 runs FINISHED", 180, process)
    process.send_signal(signal.SIGTERM)  # as the second round starts
    _, err = process.communicate(timeout=patience(120))
    assert process.returncode == 143, err[-3000:]
    done_before = finished_runs(killed)
    again = run_py(killed, *args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert START.format(6, 0, 0) in again.stdout  # round 1 replayed from the store
    finished = [r for r in jobs(killed) if r.info.status == "FINISHED"]
    pairs = Counter((r.data.tags["configuration"], r.data.params["seed"]) for r in finished)
    assert set(pairs.values()) == {1} and len(pairs) == 10, pairs  # no (configuration, seed) twice
    history = store(killed)
    epochs_of = Counter()  # (configuration, seed, epoch): once, over every run of the pair
    for run in jobs(killed):  # a resumed one too; a run killed before its first epoch has none
        for m in history.get_metric_history(run.info.run_id, "train_loss"):
            epochs_of[(run.data.tags["configuration"], run.data.params["seed"], m.step)] += 1
    assert len(epochs_of) == 10 * 3 and set(epochs_of.values()) == {1}
    assert finished_runs(killed) == 10 > done_before >= 6
    whole = tmp_path / "whole"
    uninterrupted = run_py(whole, *args)
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
    assert table(again.stdout) == table(uninterrupted.stdout)
    first, second = parents(killed)
    assert first.info.status == "KILLED" and second.info.status == "FINISHED"
    assert second.data.tags["archbench.continues"] == first.info.run_id
    assert second.data.tags["race.stopped"] == parents(whole)[0].data.tags["race.stopped"]


@pytest.mark.slow
def test_a_job_killed_mid_epoch_resumes_from_its_checkpoint(tmp_path):
    # SIGKILL: nothing runs to mark the run KILLED, so it is left RUNNING by a process that is gone
    args = ["-m", "activation=relu", "seed=0", "train.epochs=4", "dataset.train_size=20000"]
    process = start(tmp_path, args)
    wait_for(lambda: epochs(tmp_path) >= 2, "two epochs in the store", 180, process)
    process.kill()
    process.wait()
    (run,) = jobs(tmp_path)
    assert run.info.status == "RUNNING"
    again = run_py(tmp_path, *args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert START.format(0, 1, 0) in again.stdout
    (resumed,) = jobs(tmp_path)
    assert resumed.info.run_id == run.info.run_id and resumed.info.status == "FINISHED"
    steps = [m.step for m in store(tmp_path).get_metric_history(run.info.run_id, "train_loss")]
    assert steps == [1, 2, 3, 4]
