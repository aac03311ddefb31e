"""What a run leaves for MLflow's own tools: a model that loads anywhere and takes raw pixels, the
datasets it read, its confusion matrix and accuracy per class, mult-adds, and on request a registered
model version and system metrics."""

import csv
import json
import subprocess
import sys

import mlflow
import pytest
import torch
from hydra.utils import instantiate

from archbench import data as data_module
from archbench.app import main
from archbench.logged_model import _tracking_uri
from archbench.models import MLP
from archbench.summary import model_summary, mult_adds
from archbench.tracking import metric_name
from conftest import all_runs, compose_job, store
from datafiles import write_idx_set
from test_lifecycle import SLOW

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


def one_run(tmp_path, *overrides):
    cfg = compose_job(tmp_path, *overrides)
    main(cfg)
    (run,) = all_runs(tmp_path)
    return cfg, run


def correct_in_a_fresh_process(cfg, run, tmp_path) -> tuple[int, int]:
    raw = instantiate(cfg.dataset).load(tmp_path / "data")
    torch.save((raw["x_test"].float(), raw["y_test"]), tmp_path / "test.pt")
    args = [cfg.tracking.uri, run.info.run_id, str(tmp_path / "test.pt")]
    done = subprocess.run([sys.executable, "-c", LOAD, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return int(done.stdout.split()[-1]), len(raw["y_test"])


def test_the_logged_model_reproduces_the_runs_test_accuracy_from_raw_pixels(tmp_path):
    cfg, run = one_run(tmp_path, "train.epochs=2")
    correct, n = correct_in_a_fresh_process(cfg, run, tmp_path)
    assert correct / n == pytest.approx(run.data.metrics["test_accuracy"], abs=1e-9)
    assert 0.5 < correct / n < 1  # trained, and the normalisation applied: unnormalised input fails
    (output,) = run.outputs.model_outputs
    logged = store(tmp_path).get_logged_model(output.model_id)
    assert logged.name == "model" and logged.source_run_id == run.info.run_id
    assert logged.experiment_id == run.info.experiment_id, "in the run's experiment, not Default"
    assert logged.params["optimizer.lr"] == "0.1" and str(logged.status) == "READY"
    assert {m.key for m in logged.metrics} >= {"test_accuracy", "mult_adds", "test_accuracy/class0"}
    with _tracking_uri(cfg.tracking.uri):
        folder = mlflow.artifacts.download_artifacts(f"runs:/{run.info.run_id}/model")
    requirements = open(f"{folder}/requirements.txt").read().split()
    assert f"torch=={torch.__version__.split('+')[0]}" in requirements and len(requirements) == 2
    example = json.load(open(f"{folder}/input_example.json"))
    assert torch.tensor(example).shape == (2, 1, 28, 28)


def test_a_cnn_with_batchnorm_in_nhwc_loads_the_same(tmp_path):
    cfg, run = one_run(tmp_path, "model=cnn3", "dataset.train_size=500")
    with _tracking_uri(cfg.tracking.uri):
        model = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/model")
    raw = instantiate(cfg.dataset).load(tmp_path / "data")
    with torch.inference_mode():
        accuracy = (model(raw["x_test"]).argmax(1) == raw["y_test"]).float().mean().item()
    # the run evaluated channels-last tensors: summation order may differ, a tie at most flips
    assert accuracy == pytest.approx(run.data.metrics["test_accuracy"], abs=1.5 / len(raw["y_test"]))


def test_registering_makes_a_new_version_per_run(tmp_path):
    for seed in (0, 1):
        cfg = compose_job(tmp_path, "tracking.register=archbench-mlp", f"seed={seed}")
        main(cfg)
    registry = store(tmp_path)
    versions = sorted(registry.search_model_versions("name = 'archbench-mlp'"), key=lambda v: int(v.version))
    runs = {r.info.run_id: r for r in all_runs(tmp_path)}
    assert [int(v.version) for v in versions] == [1, 2] and {v.run_id for v in versions} == set(runs)
    assert all(v.status == "READY" and v.source.startswith("models:/m-") for v in versions)
    with _tracking_uri(cfg.tracking.uri):
        assert isinstance(mlflow.pytorch.load_model("models:/archbench-mlp/2"), torch.nn.Module)


def test_confusion_matrix_and_accuracy_per_class(tmp_path):
    cfg, run = one_run(tmp_path, "dataset.test_size=300")
    path = store(tmp_path).download_artifacts(run.info.run_id, "confusion_matrix.csv", str(tmp_path))
    header, *rows = list(csv.reader(open(path)))
    assert header == ["true \\ predicted", *(f"class{i}" for i in range(10))]
    counts = [[int(c) for c in row[1:]] for row in rows]
    assert sum(map(sum, counts)) == 300
    assert sum(counts[i][i] for i in range(10)) / 300 == pytest.approx(run.data.metrics["test_accuracy"])
    for i, row in enumerate(counts):
        assert run.data.metrics[f"test_accuracy/class{i}"] == pytest.approx(row[i] / sum(row))
    png = store(tmp_path).download_artifacts(run.info.run_id, "confusion_matrix.png", str(tmp_path))
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_metric_names_keep_class_names_mlflow_accepts():
    assert metric_name("test_accuracy", "T-shirt/top") == "test_accuracy/T-shirt/top"
    assert metric_name("test_accuracy", "Ankle boot") == "test_accuracy/Ankle boot"
    assert metric_name("test_accuracy", "a+b*c") == "test_accuracy/a_b_c"
    assert metric_name("test_accuracy", "../x") == "test_accuracy/___x"  # not a path MLflow would resolve


def test_dataset_records_name_the_files_and_their_digest(tmp_path):
    folder = tmp_path / "data" / "FashionMNIST" / "raw"
    write_idx_set(folder, n_train=60, n_test=20)
    args = ("dataset=fashion_mnist", "dataset.system_dir=null", "train.batch_size=20")
    _, run = one_run(tmp_path, *args)
    by_context = {d.tags[0].value: d.dataset for d in run.inputs.dataset_inputs}
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


def test_summary_prints_mult_adds_with_their_unit_and_the_run_logs_them_per_sample():
    model = MLP([1, 28, 28], [100], 10, torch.nn.ReLU)
    text = model_summary(model, [1, 28, 28], batch_size=100)
    assert "Total mult-adds (M): 7.95" in text.splitlines() and "Units." not in text
    assert mult_adds(model, [1, 28, 28]) == 79_510  # one multiply-add per weight of 784-100-10


def test_classes_must_match_num_classes(tmp_path):
    with pytest.raises(SystemExit, match=r"error: dataset.classes must list dataset.num_classes=10 names"):
        main(compose_job(tmp_path, "dataset.classes=[a,b]"))
    with pytest.raises(SystemExit, match="error: tracking.register must be a registered model's name"):
        main(compose_job(tmp_path, "tracking.register=''"))
    assert not (tmp_path / "mlruns").exists()


def test_system_metrics_when_asked(tmp_path):
    # ~3 s of training, so that MLflow's monitor (1 s interval here) samples at least once
    _, run = one_run(tmp_path, *SLOW[:2], "train.epochs=2", "tracking.system_metrics=true")
    system = {k for k in run.data.metrics if k.startswith("system/")}
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= system
    assert run.info.status == "FINISHED"


def test_no_system_metrics_by_default(tmp_path):
    _, run = one_run(tmp_path)
    assert not [k for k in run.data.metrics if k.startswith("system/")]
