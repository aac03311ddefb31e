"""What a run leaves for MLflow's own tools: a model that loads anywhere and takes raw pixels, the
datasets it read, its confusion matrix and accuracy per class, mult-adds, and on request a registered
model version and system metrics.

The runs share one store (a fresh MLflow database costs seconds of migrations): see `runs`.
"""

import csv
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pandas as pd
import pytest
import torch
from hydra.utils import instantiate

from archbench import data as data_module
from archbench.app import main
from archbench.models import MLP
from archbench.summary import model_summary, mult_adds
from archbench.tracking.logged_model import _tracking_uri
from archbench.tracking.records import class_metric
from conftest import all_runs, compose_job, patience, store
from datafiles import write_idx_set

# A fresh interpreter that cannot import archbench: what someone with only the run id has.
LOAD = """
import sys
sys.modules["archbench"] = None
import mlflow, mlflow.pytorch, torch
mlflow.set_tracking_uri(sys.argv[1])
model = mlflow.pytorch.load_model(f"runs:/{sys.argv[2]}/model")
x, y = torch.load(sys.argv[3])
with torch.inference_mode():
    print((model(x).argmax(1) == y).sum().item())
"""
REGISTERED = "archbench-mlp"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Four runs in one store: `asked` (registered, system metrics, 2 epochs), `plain` (registered),
    `cnn` (cnn3: BatchNorm, channels-last) and `files` (Fashion-MNIST's layout, from small IDX files)."""
    tmp = tmp_path_factory.mktemp("records")
    write_idx_set(tmp / "data" / "FashionMNIST" / "raw", n_train=60, n_test=20)
    jobs = {
        "asked": ("train.epochs=2", f"tracking.register={REGISTERED}", "tracking.system_metrics=true"),
        "plain": (f"tracking.register={REGISTERED}", "seed=1", "dataset.test_size=50"),
        "cnn": ("model=cnn3", "dataset.train_size=500"),
        "files": ("dataset=fashion_mnist", "dataset.system_dir=null", "train.batch_size=20"),
    }
    found = {}
    with pytest.MonkeyPatch.context() as patch:
        # MLflow's own override of the sampling interval (archbench's: 1 s): these runs are short
        patch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.1")
        for name, overrides in jobs.items():
            before = {r.info.run_id for r in all_runs(tmp)} if (tmp / "mlruns").exists() else set()
            cfg = compose_job(tmp, "tracking.log_model=true", *overrides)
            main(cfg)
            (run,) = [r for r in all_runs(tmp) if r.info.run_id not in before]
            found[name] = SimpleNamespace(cfg=cfg, run=run)
    return SimpleNamespace(tmp=tmp, **found)


def raw_test_set(job, tmp):
    raw = instantiate(job.cfg.dataset).load(tmp / "data")
    return raw["x_test"].float(), raw["y_test"]


def test_the_logged_model_reproduces_the_runs_test_accuracy_from_raw_pixels(runs):
    run, tmp = runs.asked.run, runs.tmp
    torch.save(raw_test_set(runs.asked, tmp), tmp / "test.pt")
    args = [runs.asked.cfg.tracking.uri, run.info.run_id, str(tmp / "test.pt")]
    command = [sys.executable, "-c", LOAD, *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=patience(120))
    assert done.returncode == 0, done.stderr[-3000:]
    correct = int(done.stdout.split()[-1])
    assert correct / 500 == pytest.approx(run.data.metrics["test_accuracy"], abs=1e-9)
    assert 0.5 < correct / 500 < 1  # trained, and normalised inside: raw input without it fails


def test_the_logged_model_is_mlflows_own(runs):
    run = runs.asked.run
    (output,) = run.outputs.model_outputs
    logged = store(runs.tmp).get_logged_model(output.model_id)
    assert logged.name == "model" and logged.source_run_id == run.info.run_id
    assert logged.experiment_id == run.info.experiment_id, "in the run's experiment, not Default"
    assert logged.params["optimizer.lr"] == "0.1" and str(logged.status) == "READY"
    assert {m.key for m in logged.metrics} >= {"test_accuracy", "mult_adds", "zz_class_accuracy.class0"}
    assert logged.params == run.data.params  # what changes results, as the run's
    with _tracking_uri(runs.asked.cfg.tracking.uri):
        folder = mlflow.artifacts.download_artifacts(f"runs:/{run.info.run_id}/model")
    requirements = open(f"{folder}/requirements.txt").read().split()
    assert f"torch=={torch.__version__.split('+')[0]}" in requirements and len(requirements) == 2
    example = torch.tensor(json.load(open(f"{folder}/input_example.json")))
    assert example.shape == (2, 1, 28, 28)
    names = {a.path for a in store(runs.tmp).list_artifacts(run.info.run_id)}
    assert "model" not in names and "checkpoint" in names, "runs:/<id>/model is the MLflow model"


def test_a_cnn_with_batchnorm_in_nhwc_loads_the_same(runs):
    with _tracking_uri(runs.cnn.cfg.tracking.uri):
        model = mlflow.pytorch.load_model(f"runs:/{runs.cnn.run.info.run_id}/model")
    x, y = raw_test_set(runs.cnn, runs.tmp)
    with torch.inference_mode():
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    # the run evaluated channels-last tensors: summation order may differ, a tie at most flips
    assert accuracy == pytest.approx(runs.cnn.run.data.metrics["test_accuracy"], abs=1.5 / len(y))


def test_registering_makes_a_new_version_per_run(runs):
    found = store(runs.tmp).search_model_versions(f"name = '{REGISTERED}'")
    versions = sorted(found, key=lambda v: int(v.version))
    assert [int(v.version) for v in versions] == [1, 2]
    assert [v.run_id for v in versions] == [runs.asked.run.info.run_id, runs.plain.run.info.run_id]
    assert all(v.status == "READY" and v.source.startswith("models:/m-") for v in versions)
    with _tracking_uri(runs.asked.cfg.tracking.uri):
        model = mlflow.pytorch.load_model(f"models:/{REGISTERED}/2")
    x, y = raw_test_set(runs.plain, runs.tmp)
    with torch.inference_mode():
        correct = (model(x).argmax(1) == y).sum().item()
    assert correct / len(y) == pytest.approx(runs.plain.run.data.metrics["test_accuracy"], abs=1e-9)


def test_the_test_predictions_are_recorded_one_row_per_example(runs):
    """What the comparison pairs by example: index, label, predicted; they give the run's accuracy."""
    from archbench.tracking.predictions import PREDICTIONS, read_predictions

    run = runs.plain.run  # 50 test images
    path = Path(store(runs.tmp).download_artifacts(run.info.run_id, PREDICTIONS, str(runs.tmp)))
    table = pd.read_csv(path)
    assert list(table.columns) == ["index", "label", "predicted"] and list(table["index"]) == list(range(50))
    _, labels = raw_test_set(runs.plain, runs.tmp)
    assert list(table.label) == labels.tolist()
    correct = read_predictions(path)
    assert correct.mean() == pytest.approx(run.data.metrics["test_accuracy"], abs=1e-9)
    assert path.stat().st_size < 2_000  # gzipped: about 2 bytes an example (10,000 rows: ~20 KB)


def test_confusion_matrix_and_accuracy_per_class(runs):
    run = runs.plain.run  # 50 test images
    path = store(runs.tmp).download_artifacts(run.info.run_id, "confusion_matrix.csv", str(runs.tmp))
    header, *rows = list(csv.reader(open(path)))
    assert header == ["true \\ predicted", *(f"class{i}" for i in range(10))]
    counts = [[int(c) for c in row[1:]] for row in rows]
    assert sum(map(sum, counts)) == 50
    assert sum(counts[i][i] for i in range(10)) / 50 == pytest.approx(run.data.metrics["test_accuracy"])
    for i, row in enumerate(counts):
        if sum(row):
            assert run.data.metrics[f"zz_class_accuracy.class{i}"] == round(row[i] / sum(row), 4)
        else:  # a class the test set lacks has no accuracy, rather than a made-up one
            assert f"zz_class_accuracy.class{i}" not in run.data.metrics
    png = store(runs.tmp).download_artifacts(run.info.run_id, "confusion_matrix.png", str(runs.tmp))
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    named = runs.files.run.data.metrics
    assert {"zz_class_accuracy.T-shirt_top", "zz_class_accuracy.Ankle boot"} <= set(named)


def test_class_metric_names_chart_after_the_learning_curves():
    # MLflow's UI makes a chart section of a name's part before its last "/", and orders charts by name
    assert class_metric("T-shirt/top") == "zz_class_accuracy.T-shirt_top"
    assert class_metric("Ankle boot") == "zz_class_accuracy.Ankle boot"
    assert class_metric("a+b*c") == "zz_class_accuracy.a_b_c"
    assert class_metric("../x") == "zz_class_accuracy..._x" and "/" not in class_metric("../x")
    assert sorted(["test_accuracy", "train_loss", "train_time_s", class_metric("Bag")])[-1] == class_metric(
        "Bag"
    )


def test_system_metrics_only_when_asked(runs):
    asked = {k for k in runs.asked.run.data.metrics if k.startswith("system/")}
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= asked
    assert not [k for k in runs.plain.run.data.metrics if k.startswith("system/")]
    assert runs.asked.run.info.status == "FINISHED"


def test_dataset_records_name_the_files_and_their_digest(runs):
    folder = runs.tmp / "data" / "FashionMNIST" / "raw"
    by_context = {d.tags[0].value: d.dataset for d in runs.files.run.inputs.dataset_inputs}
    assert set(by_context) == {"train", "test"}
    train, test = by_context["train"], by_context["test"]
    assert train.name == test.name == "fashion_mnist" and train.digest != test.digest
    source = json.loads(train.source)
    assert train.source_type == "local" and source["uri"] == str(folder.resolve())
    sha = data_module.sha256(folder / "train-images-idx3-ubyte.gz")
    assert source["files"]["train-images-idx3-ubyte.gz"] == sha  # as sha256sum prints it
    profile = json.loads(test.profile)
    assert profile["num_rows"] == 20 and profile["shape"] == [1, 28, 28]
    assert profile["classes"][0] == "T-shirt/top" and profile["classes"][9] == "Ankle boot"
    assert "uint8" in test.schema
    synthetic = {d.tags[0].value: d.dataset for d in runs.asked.run.inputs.dataset_inputs}
    assert synthetic["train"].source_type == "code" and synthetic["train"].name == "synthetic"


def test_digests_are_hashed_once_and_cached_with_the_tensors(tmp_path, monkeypatch):
    folder = tmp_path / "data" / "FashionMNIST" / "raw"
    write_idx_set(folder, n_train=60, n_test=20)
    source = data_module.IdxSource("fashion_mnist", "FashionMNIST", None, [1, 28, 28], 10)
    first = source.load(tmp_path / "data")["lineage"]
    monkeypatch.setattr(data_module, "sha256", lambda path: pytest.fail(f"hashed {path} again"))
    again = source.load(tmp_path / "data")["lineage"]
    assert again == first and first["train"].classes == [f"class{i}" for i in range(10)]
    monkeypatch.undo()
    write_idx_set(folder, n_train=60, n_test=20, seed=1)  # other data: another digest
    assert source.load(tmp_path / "data")["lineage"]["train"].digest != first["train"].digest


def test_synthetic_data_is_named_by_what_generates_it(tmp_path):
    source = instantiate(compose_job(tmp_path).dataset)
    same = instantiate(compose_job(tmp_path).dataset)
    other = instantiate(compose_job(tmp_path, "dataset.seed=7").dataset)
    digests = [s.load(tmp_path)["lineage"]["train"].digest for s in (source, same, other)]
    assert digests[0] == digests[1] != digests[2]


def test_summary_prints_mult_adds_with_their_unit_and_the_run_logs_them_per_sample(runs):
    model = MLP([1, 28, 28], [100], 10, torch.nn.ReLU)
    text = model_summary(model, [1, 28, 28], batch_size=100)
    assert "Total mult-adds (M): 7.95" in text.splitlines() and "Units." not in text
    assert mult_adds(model, [1, 28, 28]) == 79_510  # one multiply-add per weight of 784-100-10
    assert runs.plain.run.data.metrics["mult_adds"] == 79_510
    assert runs.cnn.run.data.metrics["mult_adds"] == 2_857_002  # cnn3 on 1x28x28


def test_classes_must_match_num_classes(tmp_path):
    with pytest.raises(SystemExit, match=r"error: dataset.classes must list dataset.num_classes=10 names"):
        main(compose_job(tmp_path, "dataset.classes=[a,b]"))
    with pytest.raises(SystemExit, match="error: tracking.register must be a registered model's name"):
        main(compose_job(tmp_path, "tracking.register=''"))
    assert not (tmp_path / "mlruns").exists()
    with pytest.raises(SystemExit, match="error: tracking.register needs tracking.log_model=true"):
        main(compose_job(tmp_path, f"tracking.register={REGISTERED}", "tracking.log_model=false"))
    with pytest.raises(SystemExit, match="error: tracking.log_model must be true or false, got 1"):
        main(compose_job(tmp_path, "tracking.log_model=1"))
    assert not (tmp_path / "mlruns").exists()


def test_without_the_model_the_rest_of_the_record_is_kept(tmp_path):
    main(compose_job(tmp_path, "tracking.log_model=false"))
    (run,) = all_runs(tmp_path)
    assert run.info.status == "FINISHED" and not run.outputs.model_outputs
    assert store(tmp_path).search_logged_models([run.info.experiment_id]) == []
    names = {a.path for a in store(tmp_path).list_artifacts(run.info.run_id)}
    assert {"confusion_matrix.csv", "test_predictions.csv.gz", "checkpoint", "model_summary.txt"} <= names
    assert {"test_accuracy", "params_total", "zz_class_accuracy.class0"} <= set(run.data.metrics)


def test_a_dataset_record_another_job_wrote_at_the_same_moment_is_linked_not_failed():
    """Two jobs of a side-by-side sweep on a fresh store insert the same dataset at once; the store
    refuses the later insert (SQLite: UNIQUE constraint failed). The job links its run to the record
    on a second try instead of failing."""
    from mlflow.exceptions import MlflowException

    from archbench.data import SyntheticSource
    from archbench.tracking.records import log_datasets

    calls = []

    def log_inputs(run_id, datasets):
        calls.append(run_id)
        if len(calls) == 1:
            raise MlflowException("(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.digest")

    run = SimpleNamespace(run_id="r1", client=SimpleNamespace(log_inputs=log_inputs))
    raw = SyntheticSource(
        name="synthetic", input_shape=[1, 4, 4], num_classes=2, train_size=8, test_size=4, noise=1.0, seed=0
    ).load(Path("."))
    log_datasets(run, raw["lineage"])
    assert calls == ["r1", "r1"]
    run.client.log_inputs = lambda run_id, datasets: (_ for _ in ()).throw(MlflowException("disk I/O error"))
    with pytest.raises(MlflowException, match="disk I/O"):  # any other error is the store's, as before
        log_datasets(run, raw["lineage"])
