"""Sweeps: presets, one parent run per multirun with the comparison attached, and the report."""

import csv
import io
import json

import pytest

from archbench import report
from archbench.tracking import client
from conftest import all_runs, run_py, store


def parent_and_children(tmp_path):
    runs = all_runs(tmp_path)
    parents = [r for r in runs if r.data.tags.get("archbench.sweep") == "parent"]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == len(runs) - 1, "every job run is a child of the sweep's parent"
    return parents[0], children


def artifact_text(tmp_path, run_id, name):
    return open(store(tmp_path).download_artifacts(run_id, name, str(tmp_path))).read()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("preset", "names"),
    [
        ("activations", ["mlp-relu-sgd", "mlp-sigmoid-sgd", "mlp-tanh-sgd"]),
        ("architectures", [f"{m}-relu-sgd" for m in ("cnn1", "cnn2", "cnn3", "mlp", "mlp_deep")]),
    ],
)
def test_presets_expand_to_the_course_comparisons(tmp_path, preset, names):
    # no -m: the preset makes it a multirun; train.epochs=1 composes with the preset's 5
    result = run_py(tmp_path, f"+experiment={preset}", "dataset.train_size=500")
    assert result.returncode == 0, result.stderr
    parent, children = parent_and_children(tmp_path)
    assert sorted(r.info.run_name for r in children) == names
    assert parent.info.run_name == f"sweep-{preset}" and parent.info.status == "FINISHED"
    for run in children:
        assert run.info.status == "FINISHED"
        params = run.data.params
        assert (params["train.epochs"], params["optimizer.lr"], params["train.batch_size"]) == (
            "1",
            "0.1",
            "100",
        )
        assert params["optimizer._target_"] == "torch.optim.SGD"


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_parent_run_holds_the_comparison(tmp_path, launcher):
    extra = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"] if launcher == "joblib" else []
    assert not (tmp_path / "mlruns").exists()  # a fresh store: no database file yet
    result = run_py(tmp_path, "-m", "activation=relu,tanh,sigmoid", *extra)
    assert result.returncode == 0, result.stderr
    parent, children = parent_and_children(tmp_path)
    assert len(children) == 3 and {r.info.status for r in children} == {"FINISHED"}
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["archbench.sweep_dir"] == str(tmp_path / "outputs" / "sweep")
    assert "activation=relu,tanh,sigmoid" in parent.data.params["sweep.overrides"]
    names = {a.path for a in store(tmp_path).list_artifacts(parent.info.run_id)}
    assert {"comparison.md", "comparison.csv", "comparison.png"} <= names
    rows = list(csv.DictReader(io.StringIO(artifact_text(tmp_path, parent.info.run_id, "comparison.csv"))))
    by_run = {r.info.run_id: r.data.metrics["test_accuracy"] for r in children}
    assert [r["run_id"] for r in rows] == sorted(by_run, key=lambda i: -by_run[i])
    table = artifact_text(tmp_path, parent.info.run_id, "comparison.md")
    assert all(f"activation={a}" in table for a in ("relu", "tanh", "sigmoid"))
    png = store(tmp_path).download_artifacts(parent.info.run_id, "comparison.png", str(tmp_path))
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_a_failed_job_is_a_failed_row(tmp_path):
    # the failures come first: the job after them must still run and be recorded
    result = run_py(tmp_path, "-m", "optimizer.lr=1e5,-1,0.1")
    assert result.returncode == 1
    parent, children = parent_and_children(tmp_path)
    assert sorted(r.info.status for r in children) == ["FAILED", "FINISHED"]
    assert parent.info.status == "FAILED"  # closed, not left RUNNING
    rows = list(csv.DictReader(io.StringIO(artifact_text(tmp_path, parent.info.run_id, "comparison.csv"))))
    lr = [next(o for o in r["overrides"].split() if o.startswith("optimizer.lr")) for r in rows]
    assert [(r["status"], o) for r, o in zip(rows, lr, strict=True)] == [
        ("FINISHED", "optimizer.lr=0.1"),
        ("FAILED", "optimizer.lr=100000.0"),
        ("FAILED", "optimizer.lr=-1"),
    ]
    assert rows[2]["model"] == "mlp" and "optimizer.lr must be a number > 0" in rows[2]["error"]
    failed = json.loads(artifact_text(tmp_path, parent.info.run_id, "failed_jobs.json"))
    assert len(failed) == 2
    # every failing override is reported, not only the first
    assert "optimizer.lr=100000.0" in result.stderr and "optimizer.lr=-1" in result.stderr


# --- the report on a store built by hand -------------------------------------------------


def known_store(tmp_path):
    mlflow_client = client(f"sqlite:///{tmp_path}/mlflow.db")
    exp = mlflow_client.create_experiment("known")
    parent = mlflow_client.create_run(exp, run_name="sweep-known", tags={"archbench.sweep": "parent"})
    pid = parent.info.run_id
    for name, act, acc, seconds, status in [
        ("a", "relu", 0.81, 2.0, "FINISHED"),
        ("b", "tanh", 0.86, 3.0, "FINISHED"),
        ("c", "sigmoid", None, None, "FAILED"),
        ("d", "gelu", 0.84, 1.0, "FINISHED"),
    ]:
        tags = {
            "mlflow.parentRunId": pid,
            "model": "mlp",
            "activation": act,
            "optimizer": "sgd",
            "dataset": "fashion_mnist",
            "loss": "cross_entropy",
            "archbench.overrides": f"activation={act}",
        }
        run = mlflow_client.create_run(exp, run_name=name, tags=tags)
        if acc is not None:
            for key, value in (("test_accuracy", acc), ("train_time_s", seconds), ("params_total", 79510)):
                mlflow_client.log_metric(run.info.run_id, key, value)
        mlflow_client.set_terminated(run.info.run_id, status)
    mlflow_client.set_terminated(pid, "FINISHED")
    return mlflow_client, pid


def test_report_rows_in_accuracy_order(tmp_path):
    mlflow_client, pid = known_store(tmp_path)
    rows = report.sweep_rows(mlflow_client, pid)
    assert [(r["run"], r["status"]) for r in rows] == [
        ("b", "FINISHED"),
        ("d", "FINISHED"),
        ("a", "FINISHED"),
        ("c", "FAILED"),
    ]
    table = report.markdown(rows).splitlines()
    assert table[0] == "| config | activation | status | test_accuracy | train_time_s | params_total |"
    assert table[2] == "| activation=tanh | tanh | FINISHED | 0.8600 | 3.00 | 79,510 |"
    assert table[5] == "| activation=sigmoid | sigmoid | FAILED | - | - | - |"


def test_report_cli(tmp_path, capsys):
    _, pid = known_store(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    for args in ([], ["--parent", pid], ["--experiment", "known"]):
        assert report.main(["--tracking-uri", uri, "--out", str(tmp_path / "out"), *args]) == 0
        out = capsys.readouterr().out
        assert out.index("activation=tanh") < out.index("activation=gelu") < out.index("activation=relu")
    assert sorted(p.suffix for p in (tmp_path / "out").iterdir()) == [".png", ".png"]


def test_report_says_when_there_is_nothing(tmp_path, capsys):
    assert report.main(["--tracking-uri", f"sqlite:///{tmp_path}/none.db"]) == 1
    assert "nothing to compare: no MLflow store" in capsys.readouterr().err
    client(f"sqlite:///{tmp_path}/empty.db").create_experiment("x")
    assert report.main(["--tracking-uri", f"sqlite:///{tmp_path}/empty.db"]) == 1
    assert "no sweep recorded yet" in capsys.readouterr().err
    assert report.main(["--tracking-uri", f"sqlite:///{tmp_path}/empty.db", "--experiment", "nope"]) == 1
    assert "no experiment named 'nope'" in capsys.readouterr().err
