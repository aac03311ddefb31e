"""Sweeps: presets over seeds, one parent run per multirun holding the comparison, and the report."""

import csv
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hydra import compose, initialize
from scipy import stats

from archbench import app, report
from archbench.comparing.comparison import Comparison
from archbench.comparing.table import csv_text, markdown
from archbench.sweeps import lookup
from archbench.tracking import stored, tables
from archbench.tracking.runs import client
from archbench.train import Trainer
from conftest import ALL_CORES, all_runs, compose_job, run_py, store


def parent_and_children(tmp_path):
    runs = all_runs(tmp_path)
    parents = [r for r in runs if r.data.tags.get("archbench.sweep") == "parent"]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == len(runs) - 1, "every job run is a child of the sweep's parent"
    return parents[0], children


def artifact_text(tmp_path, run_id, name):
    return open(store(tmp_path).download_artifacts(run_id, name, str(tmp_path))).read()


@pytest.mark.parametrize(
    ("preset", "sweeps", "seeds"),
    [
        ("activations", {"activation": "relu,tanh,sigmoid"}, 5),
        ("architectures", {"model": "mlp,mlp_deep,cnn1,cnn2,cnn3"}, 3),
    ],
)
def test_presets_are_the_course_comparisons_over_seeds(preset, sweeps, seeds):
    # train.epochs=1 composes with the preset's 5; SGD keeps the course's lr
    with initialize(version_base="1.3", config_path="../conf"):
        cfg = compose("config", [f"+experiment={preset}", "train.epochs=1"], return_hydra_config=True)
    assert cfg.hydra.mode.name == "MULTIRUN" and cfg.seeds == seeds
    assert dict(cfg.hydra.sweeper.params) == {"seed": f"range(0,{seeds})", **sweeps}
    assert (cfg.train.epochs, cfg.optimizer.lr, cfg.train.batch_size) == (1, 0.1, 100)
    assert cfg.optimizer._target_ == "torch.optim.SGD"


@pytest.mark.slow
def test_parent_run_holds_the_comparison(tmp_path):
    # with joblib's launcher: the "Parallel sweeps" command of docs/speed.md (tests/test_readme.py)
    assert not (tmp_path / "mlruns").exists()  # a fresh store: no database file yet
    result = run_py(tmp_path, "-m", "activation=relu,tanh,sigmoid", "seeds=2", "dataset.train_size=500")
    assert result.returncode == 0, result.stderr
    parent, children = parent_and_children(tmp_path)
    assert len(children) == 6 and {r.info.status for r in children} == {"FINISHED"}
    assert sorted((r.data.tags["activation"], r.data.params["seed"]) for r in children) == sorted(
        (a, s) for a in ("relu", "tanh", "sigmoid") for s in ("0", "1")
    )
    # a configuration is the overrides minus the seed: one MLflow "Group by" group each
    configs = {r.data.tags["configuration"] for r in children}
    assert len(configs) == 3 and all("seed" not in c.split("=")[0] for c in configs)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["archbench.sweep_dir"] == str(tmp_path / "outputs" / "sweep")
    assert "activation=relu,tanh,sigmoid" in parent.data.params["sweep.overrides"]
    names = {a.path for a in store(tmp_path).list_artifacts(parent.info.run_id)}
    assert {"comparison.md", "comparison.csv", "comparison.png", "curves.png", "pareto.png"} <= names
    rows = list(csv.DictReader(io.StringIO(artifact_text(tmp_path, parent.info.run_id, "comparison.csv"))))
    means = {}
    for r in children:
        means.setdefault(r.data.tags["configuration"], []).append(r.data.metrics["test_accuracy"])
    assert [r["configuration"] for r in rows] == sorted(means, key=lambda c: -sum(means[c]) / 2)
    assert [r["n"] for r in rows] == ["2", "2", "2"] and rows[0]["verdict"] == "best"
    assert all(r["test"] == "paired" for r in rows[1:])  # the same seeds on both sides
    # the UI shows it without digging: the run's description (verdicts first, the table as plain text:
    # MLflow's renderer strips a Markdown table's borders), the table itself, and headline metrics
    note = parent.data.tags["mlflow.note.content"]
    assert "synthetic, 1 epoch(s), 2 seeds" in note and "```text" in note
    best, mean, low, high = rows[0]["label"], *(float(rows[0][k]) for k in ("mean", "ci_low", "ci_high"))
    assert note.splitlines()[2] == f"- **{best}**: best, {mean:.4f} [{low:.4f}, {high:.4f}], n = 2"
    assert "| 1 | activation=" in artifact_text(tmp_path, parent.info.run_id, "comparison.md")
    metrics = parent.data.metrics
    assert metrics["configurations"] == 3 and metrics["seeds"] == 2
    assert metrics["best_mean"] == round(float(rows[0]["mean"]), 4)
    assert not [k for k in metrics if "/" in k], "a '/' makes a section of its own, first in the chart view"
    assert (
        parent.data.params["sweep.overrides"]
        == (
            "activation=relu,tanh,sigmoid seeds=2 dataset.train_size=500 dataset=synthetic train.epochs=1 "
            "train.threads=1"
        )  # as typed, less the shrunk job's own store, data folder and progress bars
    )
    png = store(tmp_path).download_artifacts(parent.info.run_id, "comparison.png", str(tmp_path))
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
@pytest.mark.parametrize("cores", [None, ALL_CORES], ids=["one at a time", "side by side"])
def test_a_failed_job_is_a_failed_row(tmp_path, cores):
    # the failures come first: the job after them must still run and be recorded, whether the jobs
    # run one at a time or side by side (the default launcher on more than one core)
    result = run_py(tmp_path, "-m", "optimizer.lr=1e5,-1,0.1", env=cores)
    assert result.returncode == 1
    parent, children = parent_and_children(tmp_path)
    assert sorted(r.info.status for r in children) == ["FAILED", "FINISHED"]
    assert parent.info.status == "FAILED"  # closed, not left RUNNING
    rows = list(csv.DictReader(io.StringIO(artifact_text(tmp_path, parent.info.run_id, "comparison.csv"))))
    assert [(r["label"], r["n"], r["failed"]) for r in rows] == [
        ("optimizer.lr=0.1", "1", "0"),
        ("optimizer.lr=100000.0", "0", "1"),  # diverged: a FAILED run (Hydra writes 1e5 so)
        ("optimizer.lr=-1", "0", "1"),  # refused before it had a run
    ]
    table = artifact_text(tmp_path, parent.info.run_id, "comparison.md")
    assert "optimizer.lr=-1 seed=0: FAILED: ConfigError: optimizer.lr must be a number > 0" in table
    assert "optimizer.lr=100000.0 seed=0: FAILED: Diverged: training loss became nan" in table
    failed = json.loads(artifact_text(tmp_path, parent.info.run_id, "failed_jobs.json"))
    assert len(failed) == 2
    # every failing override is reported, not only the first
    assert "optimizer.lr=100000.0" in result.stderr and "optimizer.lr=-1" in result.stderr


# --- the report on a store built by hand -------------------------------------------------

# test accuracy by seed: tanh best; relu 0.03 behind on every seed; gelu level with tanh within noise
ARMS = {
    "tanh": [0.860, 0.870, 0.865],
    "relu": [0.830, 0.841, 0.834],
    "gelu": [0.868, 0.858, 0.866],
}


def add_runs(mlflow_client, exp, parent_id, arms, seeds, tag_configuration=True):
    for act, values in arms.items():
        for seed, acc in zip(seeds, values, strict=True):
            tags = {
                "mlflow.parentRunId": parent_id,
                "model": "mlp",
                "activation": act,
                "dataset": "fashion_mnist",
                "archbench.overrides": f"activation={act} seed={seed}",
            }
            if tag_configuration:
                tags["configuration"] = f"activation={act}"
            run = mlflow_client.create_run(exp, run_name=f"mlp-{act}-sgd", tags=tags)
            rid = run.info.run_id
            mlflow_client.log_param(rid, "seed", seed)
            mlflow_client.log_param(rid, "train.epochs", 2)
            for epoch, value in ((1, acc - 0.05), (2, acc)):
                mlflow_client.log_metric(rid, "test_accuracy", value, step=epoch)
                mlflow_client.log_metric(rid, "train_loss", 1 - value, step=epoch)
            mlflow_client.log_metric(rid, "train_time_s", 1.5)
            mlflow_client.log_metric(rid, "params_total", 79510)
            mlflow_client.set_terminated(rid, "FINISHED")


def known_store(tmp_path):
    mlflow_client = client(f"sqlite:///{tmp_path}/mlflow.db")
    exp = mlflow_client.create_experiment("known")
    parent = mlflow_client.create_run(exp, run_name="sweep-known", tags={"archbench.sweep": "parent"})
    pid = parent.info.run_id
    add_runs(mlflow_client, exp, pid, {k: v for k, v in ARMS.items() if k != "gelu"}, [0, 1, 2])
    add_runs(
        mlflow_client, exp, pid, {"gelu": ARMS["gelu"]}, [0, 1, 2], tag_configuration=False
    )  # older runs
    failed = mlflow_client.create_run(
        exp,
        run_name="mlp-sigmoid-sgd",
        tags={
            "mlflow.parentRunId": pid,
            "archbench.overrides": "activation=sigmoid seed=0",
            "archbench.error": "boom",
        },
    )
    mlflow_client.set_terminated(failed.info.run_id, "FAILED")
    mlflow_client.set_terminated(pid, "FINISHED")
    return mlflow_client, exp, pid


def test_report_per_configuration(tmp_path):
    mlflow_client, _, pid = known_store(tmp_path)
    comp = Comparison.of(tables.sweep_runs(mlflow_client, pid), "sweep-known")
    assert comp.title == "sweep-known: fashion_mnist, 2 epoch(s), 3 seeds per configuration"
    table = markdown(comp)
    rows = [line.split(" | ") for line in table.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [
        ("| 1", "activation=tanh", "3", "0.8650"),
        ("| 2", "activation=gelu", "3", "0.8640"),
        ("| 3", "activation=relu", "3", "0.8350"),
        ("| 4", "activation=sigmoid", "0 (+1 failed)", "-"),
    ]
    assert rows[0][7] == "best" and rows[2][7] == "worse" and rows[1][7].startswith("open: ~")
    # relu against the best of the others, with 6 pairs' intervals each at 1 - 0.05/6 (Bonferroni):
    # 0.030, 0.029, 0.031 behind tanh (sd 0.001) bound it from above; its noisier gaps to gelu from below
    t = stats.t.ppf(1 - 0.05 / 6 / 2, 2)
    to_gelu = np.subtract(ARMS["relu"], ARMS["gelu"])
    low = to_gelu.mean() - t * to_gelu.std(ddof=1) / np.sqrt(3)
    assert rows[2][6] == f"-0.0300 [{low:+.4f}, {-0.030 + t * 0.001 / np.sqrt(3):+.4f}]"
    assert "- activation=sigmoid seed=0: FAILED: boom" in table
    lines = list(csv.DictReader(io.StringIO(csv_text(comp))))
    assert [r["configuration"] for r in lines] == [
        f"activation={a}" for a in ("tanh", "gelu", "relu", "sigmoid")
    ]
    assert lines[2]["seeds"] == "0 1 2" and float(lines[2]["diff"]) == pytest.approx(-0.03)


def test_report_cli_writes_the_four_files(tmp_path, capsys):
    _, _, pid = known_store(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    for args in ([], ["--parent", pid], ["--experiment", "known"]):
        assert report.main(["--tracking-uri", uri, "--out", str(tmp_path / "out"), *args]) == 0
        out = capsys.readouterr().out
        assert out.index("activation=tanh") < out.index("activation=gelu") < out.index("activation=relu")
    folders = {p.name: sorted(f.name for f in p.iterdir()) for p in (tmp_path / "out").iterdir()}
    assert set(folders) == {pid, "experiment-1"}
    expected = ["comparison.csv", "comparison.md", "comparison.png", "curves.png", "pareto.png"]
    assert all(f == expected for f in folders.values())


def test_more_seeds_later_add_to_the_evidence(tmp_path, capsys):
    mlflow_client, exp, _ = known_store(tmp_path)
    second = mlflow_client.create_run(exp, run_name="sweep-more", tags={"archbench.sweep": "parent"})
    # seeds 3 and 4, plus seed 0 of tanh again (a re-run): one seed, the mean of its two runs
    add_runs(mlflow_client, exp, second.info.run_id, {"tanh": [0.861, 0.869], "relu": [0.832, 0.838]}, [3, 4])
    add_runs(mlflow_client, exp, second.info.run_id, {"tanh": [0.862]}, [0])
    comp = Comparison.of(tables.experiment_runs(mlflow_client, exp), "experiment known")
    s = comp.summary.set_index("configuration")
    assert s.loc["activation=tanh"].seeds == [0, 1, 2, 3, 4] and s.loc["activation=relu"].n == 5
    assert (s.loc["activation=tanh"].n, s.loc["activation=tanh"].runs) == (5, 6)
    seed0 = (0.860 + 0.862) / 2
    assert s.loc["activation=tanh"]["mean"] == pytest.approx((seed0 + 0.870 + 0.865 + 0.861 + 0.869) / 5)
    assert s.loc["activation=gelu"].test == "Welch"  # seeds 0-2 against tanh's 0-4
    text = markdown(lookup.find(mlflow_client, None, "known")[0])
    assert "Seeds that ran more than once count once, as the mean of their runs (1 extra run here)." in text
    assert "Pooled across sweeps" in text


def test_one_run_with_a_validation_split_does_not_change_what_the_experiment_is_ranked_by(tmp_path):
    mlflow_client, exp, _ = known_store(tmp_path)
    search = mlflow_client.create_run(exp, run_name="sweep-lr_batch", tags={"archbench.sweep": "parent"})
    add_runs(mlflow_client, exp, search.info.run_id, {"tanh": [0.871]}, [7])
    (trial,) = [r for r in mlflow_client.search_runs([exp]) if r.data.params.get("seed") == "7"]
    mlflow_client.log_metric(trial.info.run_id, "val_accuracy", 0.88)  # a search trial's
    comp = Comparison.of(tables.experiment_runs(mlflow_client, exp), "experiment known")
    assert comp.metric == "test_accuracy"
    s = comp.summary.set_index("configuration")
    assert s.loc["activation=tanh"].n == 4 and s.loc["activation=relu"].failed == 0
    val_only = tables.sweep_runs(mlflow_client, search.info.run_id)
    assert Comparison.of(val_only, "sweep-lr_batch").metric == "val_accuracy"


def test_a_report_asked_again_of_an_unchanged_store_prints_what_it_printed(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    mlflow_client, exp, pid = known_store(tmp_path)
    uri, out = f"sqlite:///{tmp_path}/mlflow.db", str(tmp_path / "out")
    computed = []
    compute = report._report
    monkeypatch.setattr(report, "_report", lambda *a: computed.append(a) or compute(*a))
    asks = [["--experiment", "known"], ["--parent", pid], []]
    first = []
    for args in asks:
        assert report.main(["--tracking-uri", uri, "--out", out, *args]) == 0
        first.append(capsys.readouterr().out)
    for args, printed in zip(asks, first, strict=True):
        assert report.main(["--tracking-uri", uri, "--out", out, *args]) == 0
        assert capsys.readouterr().out == printed
    # only the experiment's compared again: the sweep's first report saved its UI view after it
    assert [a.experiment for a, _ in computed] == ["known", None, None, "known"]
    for args, printed in zip(asks, first, strict=True):
        assert report.main(["--tracking-uri", uri, "--out", out, *args]) == 0
        assert capsys.readouterr().out == printed
    assert len(computed) == 4  # the third time, nothing was read or computed
    # and the command as typed, in a process of its own: no MLflow, no scipy, no torch loaded
    code = (
        "import sys; from archbench import report; "
        f"assert report.main(['--tracking-uri', {uri!r}, '--out', {out!r}, '--experiment', 'known']) == 0; "
        "print(sorted({'mlflow', 'scipy', 'torch', 'matplotlib'} & set(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout == first[0] + "[]\n"

    # any write to the store compares again: two more tanh seeds count
    add_runs(mlflow_client, exp, pid, {"tanh": [0.861, 0.869]}, [3, 4])
    assert report.main(["--tracking-uri", uri, "--out", out, "--experiment", "known"]) == 0
    again = capsys.readouterr().out
    assert len(computed) == 5 and "3-5 seeds per configuration" in again
    # and so do another archbench, and a file of the comparison gone
    monkeypatch.setattr(stored, "_code", lambda: "another version")
    assert report.main(["--tracking-uri", uri, "--out", out, "--experiment", "known"]) == 0
    (tmp_path / "out" / "experiment-1" / "pareto.png").unlink()
    assert report.main(["--tracking-uri", uri, "--out", out, "--experiment", "known"]) == 0
    assert len(computed) == 7


def test_a_write_while_a_report_computes_is_never_taken_for_part_of_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    mlflow_client, exp, pid = known_store(tmp_path)
    uri, out = f"sqlite:///{tmp_path}/mlflow.db", str(tmp_path / "out")
    compare = lookup.Question.compare

    def meanwhile(asked, client_):  # a sweep's job finishes while the report computes
        add_runs(mlflow_client, exp, pid, {"relu": [0.833]}, [3])
        monkeypatch.setattr(lookup.Question, "compare", compare)
        return compare(asked, client_)

    monkeypatch.setattr(lookup.Question, "compare", meanwhile)
    assert report.main(["--tracking-uri", uri, "--out", out, "--experiment", "known"]) == 0
    before = capsys.readouterr().out
    assert "3 seeds per configuration" in before  # read before the job finished
    assert not list((tmp_path / "cache").rglob("*.json"))  # so it was not kept
    assert report.main(["--tracking-uri", uri, "--out", out, "--experiment", "known"]) == 0
    assert "3-4 seeds per configuration" in capsys.readouterr().out


def test_report_says_when_there_is_nothing(tmp_path, capsys):
    assert report.main(["--tracking-uri", f"sqlite:///{tmp_path}/none.db"]) == 1
    assert "nothing to compare: no MLflow store" in capsys.readouterr().err
    client(f"sqlite:///{tmp_path}/empty.db").create_experiment("x")
    assert report.main(["--tracking-uri", f"sqlite:///{tmp_path}/empty.db"]) == 1
    assert "no sweep recorded yet" in capsys.readouterr().err
    assert report.main(["--tracking-uri", f"sqlite:///{tmp_path}/empty.db", "--experiment", "nope"]) == 1
    assert "no experiment named 'nope'" in capsys.readouterr().err


REAL_FIT = Trainer.fit


def starts(tmp_path, monkeypatch, *overrides):
    """The weights and shuffling state a job starts training from, through the real job path."""
    seen = {}

    def fit(self, data, *args, **kwargs):
        seen["weights"] = {k: v.clone() for k, v in self.module.state_dict().items()}
        seen["shuffle"] = self.generator.get_state().clone()
        return REAL_FIT(self, data, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "fit", fit)
        app.main(compose_job(tmp_path, *overrides))
    return seen


def test_same_seed_same_start_and_batches_so_arms_pair(tmp_path, monkeypatch):
    relu = starts(tmp_path / "relu", monkeypatch, "activation=relu", "seed=3")
    tanh = starts(tmp_path / "tanh", monkeypatch, "activation=tanh", "seed=3")
    other = starts(tmp_path / "other", monkeypatch, "activation=relu", "seed=4")
    assert relu["weights"].keys() == tanh["weights"].keys()
    assert all(torch.equal(relu["weights"][k], tanh["weights"][k]) for k in relu["weights"])
    assert torch.equal(relu["shuffle"], tanh["shuffle"])  # the same batches, in the same order
    assert not torch.equal(relu["weights"]["1.weight"], other["weights"]["1.weight"])
    assert not torch.equal(relu["shuffle"], other["shuffle"])


def test_debug_runs_are_marked_as_not_results(tmp_path):
    mlflow_client, exp, pid = known_store(tmp_path)
    debug = mlflow_client.create_run(exp, run_name="mlp-elu-sgd", tags={
        "mlflow.parentRunId": pid, "configuration": "activation=elu", "archbench.debug": "fast",
    })  # fmt: skip
    mlflow_client.log_metric(debug.info.run_id, "test_accuracy", 0.5)
    mlflow_client.set_terminated(debug.info.run_id, "FINISHED")
    table = markdown(Comparison.of(tables.sweep_runs(mlflow_client, pid), "sweep-known"))
    assert "**Debug runs, not results** (activation=elu): shrunk by +debug or train.limit_batches." in table
    assert "| activation=elu (debug) | 1 |" in table


def test_the_notebooks_compare_asked_again_of_an_unchanged_store_gives_its_comparison(tmp_path, monkeypatch):
    """archbench.compare() keeps its comparison as the report keeps its output: asked again, in a
    process of its own, it gives the same table without MLflow or torch; a write compares again."""
    import archbench

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    mlflow_client, exp, pid = known_store(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    computed = []
    compare = lookup.Question.compare
    monkeypatch.setattr(lookup.Question, "compare", lambda *a: computed.append(a) or compare(*a))
    first = archbench.compare(experiment="known", tracking_uri=uri)
    again = archbench.compare(experiment="known", tracking_uri=uri)
    assert len(computed) == 1 and repr(again) == repr(first) and again.table.equals(first.table)
    assert archbench.compare(parent=pid, tracking_uri=uri).parent_id == pid and len(computed) == 2

    code = (
        "import sys, archbench; "
        f"c = archbench.compare(experiment='known', tracking_uri={uri!r}); print(repr(c)); "
        "print(sorted({'mlflow', 'torch'} & set(sys.modules)))"
    )
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert done.stdout == repr(first) + "\n[]\n"

    add_runs(mlflow_client, exp, pid, {"tanh": [0.861, 0.869]}, [3, 4])
    later = archbench.compare(experiment="known", tracking_uri=uri)
    assert len(computed) == 3 and later.table.loc["activation=tanh", "n"] == 5
