"""Any nn.Module as a model: a module of the user's own, a config folder outside conf/, torchvision's models.

The networks below live in a module the tests write (as a user would, outside the package), their
configs in a folder of their own found through `hydra.searchpath`: each config holds only its
constructor's own arguments.
"""

import sys

import pytest
import torch
from hydra import compose, initialize

from archbench import app, fits
from archbench.tracking.logged_model import _tracking_uri
from archbench.train import Trainer
from conftest import all_runs, compose_job, run_py, store
from test_readme import readme_files

MODULE = "archbench_test_nets"
NETS = '''
import torch
from torch import nn


class LeNet(nn.Module):
    """LeNet-5, padded for 28 x 28 input."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(400, 84), nn.ReLU(), nn.Linear(84, num_classes)
        )

    def forward(self, x):
        return self.classifier(self.features(x))


class Branchy(nn.Module):
    """A branch on the data's values: torch.export cannot trace it."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.linear = nn.Linear(784, num_classes)

    def forward(self, x):
        x = x.flatten(1)
        return self.linear(-x if x.mean() > 0 else x)


class Activated(nn.Module):
    """A network that takes archbench's activation (a factory, as the course's networks do)."""

    def __init__(self, num_classes: int, activation):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), activation(), nn.Linear(32, num_classes))

    def forward(self, x):
        return self.net(x)
'''
CONFIGS = {
    "lenet": f"_target_: {MODULE}.LeNet\nnum_classes: ${{dataset.num_classes}}\n",
    "branchy": f"_target_: {MODULE}.Branchy\nnum_classes: ${{dataset.num_classes}}\n",
    "activated": f"_target_: {MODULE}.Activated\nnum_classes: ${{dataset.num_classes}}\n"
    "activation: ${activation}\n",
    "no_classes": f"_target_: {MODULE}.LeNet\n",  # LeNet's default of 10 classes
    "extra_key": f"_target_: {MODULE}.LeNet\ninput_shape: ${{dataset.input_shape}}\n",
    "missing": "_target_: nowhere_to_be_found.Net\n",
    "not_a_module": "_target_: builtins.dict\n",
    # torchvision's ResNet-18 after a 1x1 convolution to its 3 channels, as docs/own.md shows it
    "resnet18": readme_files()["~/mywork/conf/model/resnet18.yaml"],
}


@pytest.fixture(scope="module")
def own(tmp_path_factory):
    """The folder holding the module and, in conf/, the model configs; yields the searchpath override."""
    folder = tmp_path_factory.mktemp("mywork")
    (folder / f"{MODULE}.py").write_text(NETS)
    (folder / "conf" / "model").mkdir(parents=True)
    for name, text in CONFIGS.items():
        (folder / "conf" / "model" / f"{name}.yaml").write_text(text)
    sys.path.insert(0, str(folder))
    yield folder
    sys.path.remove(str(folder))
    sys.modules.pop(MODULE, None)


def job(own, tmp_path, *overrides):
    return compose_job(
        tmp_path, f"hydra.searchpath=[file://{own}/conf]", "dataset.train_size=300", *overrides
    )


def test_a_network_of_ones_own_trains_as_built_with_the_whole_record(own, tmp_path, monkeypatch):
    trained = []
    real_fit = Trainer.fit
    monkeypatch.setattr(
        Trainer, "fit", lambda self, *a, **k: trained.append(self.model) or real_fit(self, *a, **k)
    )
    app.main(job(own, tmp_path, "model=lenet", "tracking.log_model=true"))
    (net,) = trained
    assert type(net).__module__ == MODULE and type(net).__name__ == "LeNet"  # the constructor's own module
    (run,) = all_runs(tmp_path)
    assert run.info.status == "FINISHED" and run.info.run_name == "lenet-sgd-s0"
    assert "activation" not in run.data.tags and run.data.tags["model"] == "lenet"
    metrics = run.data.metrics
    assert metrics["params_total"] == sum(p.numel() for p in net.parameters()) == 37_106
    assert metrics["mult_adds"] > 0 and {f"zz_class_accuracy.class{i}" for i in range(10)} <= set(metrics)
    client = store(tmp_path)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1]
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"model_summary.txt", "config.yaml", "confusion_matrix.csv", "checkpoint"} <= names
    summary = open(client.download_artifacts(run.info.run_id, "model_summary.txt", str(tmp_path))).read()
    assert "LeNet" in summary and "[100, 1, 28, 28]" in summary
    (logged,) = run.outputs.model_outputs
    import mlflow.pytorch

    with _tracking_uri(f"sqlite:///{tmp_path}/mlruns/mlflow.db"):
        model = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/model")
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


def test_inspect_an_own_network(own, tmp_path, capsys):
    assert app.main(job(own, tmp_path, "model=lenet", "mode=inspect")) is None
    out = capsys.readouterr().out
    assert "LeNet" in out and "Total params: 37,106" in out and not (tmp_path / "mlruns").exists()


def test_early_stopping_and_resume_of_an_own_network(own, tmp_path, monkeypatch):
    real = Trainer.train_one_epoch

    def stop_in_epoch_3(self, x, y, epoch):
        if epoch == 3:
            raise KeyboardInterrupt
        return real(self, x, y, epoch)

    monkeypatch.setattr(Trainer, "train_one_epoch", stop_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        app.main(job(own, tmp_path, "model=lenet", "train.epochs=3", "train.val_fraction=0.2",
                     "train.early_stopping.patience=5"))  # fmt: skip
    monkeypatch.undo()
    (killed,) = all_runs(tmp_path)
    app.main(compose_job(tmp_path, f"resume={killed.info.run_id}"))
    (resumed,) = all_runs(tmp_path)
    assert resumed.info.status == "FINISHED" and resumed.data.tags["archbench.resumed"] == "1"
    history = store(tmp_path).get_metric_history(resumed.info.run_id, "val_accuracy")
    assert {m.step for m in history} == {1, 2, 3} and resumed.data.metrics["stopped_epoch"] == 3
    assert resumed.data.metrics["best_epoch"] in (1, 2, 3)


@pytest.mark.parametrize(
    ("overrides", "line"),
    [
        (
            ["model=lenet", "activation=tanh"],
            "model=lenet takes no activation (its config has no ${activation}), "
            "so activation=tanh would change nothing",
        ),  # fmt: skip
        (
            ["model=lenet", "loss=nll"],
            "model=lenet takes no head, so it gives raw scores (logits), and loss=nll "
            "needs log_softmax outputs",
        ),  # fmt: skip
        (["model=lenet", "loss=mse"], "and loss=mse needs softmax outputs"),
        (
            ["model=no_classes", "dataset.num_classes=4", "dataset.classes=[a,b,c,d]"],
            "model=no_classes gives [2, 10] for a batch of 2 inputs, and dataset=synthetic has 4 classes",
        ),  # fmt: skip
        (
            ["model=lenet", "dataset.input_shape=[3,28,28]"],
            "model=lenet cannot take input [3, 28, 28] "
            "(dataset=synthetic): RuntimeError: Given groups=1, weight of size [6, 1, 5, 5]",
        ),  # fmt: skip
        (
            ["model=extra_key"],
            "model=extra_key: Error in call to target 'archbench_test_nets.LeNet': "
            "TypeError(\"LeNet.__init__() got an unexpected keyword argument 'input_shape'\")",
        ),  # fmt: skip
        (["model=missing"], "is the folder that holds its module on PYTHONPATH"),
        (["model=not_a_module"], "model=not_a_module: builtins.dict returned a dict, not an nn.Module"),
    ],
    ids=["activation", "nll", "mse", "classes", "input", "argument", "import", "not a module"],
)
def test_what_does_not_fit_is_one_line_before_any_run(own, tmp_path, overrides, line):
    with pytest.raises(SystemExit) as exit_:
        app.main(job(own, tmp_path, *overrides))
    message = str(exit_.value)
    assert message.startswith("error: ") and line in message and "\n" not in message
    assert not (tmp_path / "mlruns").exists()


def test_a_network_that_takes_the_activation_is_swept_over_it(own, tmp_path):
    app.main(job(own, tmp_path, "model=activated", "activation=tanh"))
    (run,) = all_runs(tmp_path)
    assert run.info.run_name == "activated-tanh-sgd-s0" and run.data.tags["activation"] == "tanh"
    assert run.data.params["activation"] == "tanh"


def test_sweep_presets_are_checked_before_any_job(own, tmp_path):
    check = fits.RefuseIgnoredChoices()
    searchpath = f"hydra.searchpath=[file://{own}/conf]"
    with initialize(version_base="1.3", config_path="../conf"):
        cfg = compose(
            "config", [searchpath, "+experiment=activations", "model=lenet"], return_hydra_config=True
        )
        with pytest.raises(
            SystemExit, match=r"error: model=lenet takes no activation .* activation=relu,tanh,sig"
        ):
            check.on_multirun_start(cfg)
        params = "hydra.sweeper.params.model='lenet,cnn2'"
        check.on_multirun_start(compose("config", [searchpath, "+experiment=architectures", params],
                                        return_hydra_config=True))  # fmt: skip


def test_a_network_torch_export_cannot_trace_leaves_only_its_model_out(own, tmp_path, caplog, capfd):
    app.main(job(own, tmp_path, "model=branchy", "tracking.log_model=true"))
    (run,) = all_runs(tmp_path)
    assert run.info.status == "FINISHED" and not run.outputs.model_outputs
    experiment = run.info.experiment_id
    assert store(tmp_path).search_logged_models([experiment]) == []
    assert run.data.tags["archbench.model_not_logged"].startswith("torch.export cannot trace Branchy (")
    assert {"test_accuracy", "params_total", "mult_adds"} <= set(run.data.metrics)
    names = {a.path for a in store(tmp_path).list_artifacts(run.info.run_id)}
    assert {"model_summary.txt", "confusion_matrix.csv"} <= names
    said = [r.getMessage() for r in caplog.records if "not logged" in r.getMessage()]
    assert len(said) == 1 and "\n" not in said[0]
    assert "def forward" not in capfd.readouterr().err  # torch's print of the graph it traced


@pytest.mark.slow
def test_torchvision_resnet18_with_a_one_channel_stem(own, tmp_path):
    import torchvision

    shrink = ("dataset.input_shape=[1,16,16]", "dataset.train_size=100", "dataset.test_size=50")
    app.main(job(own, tmp_path, "model=resnet18", "tracking.log_model=true", *shrink))
    (run,) = all_runs(tmp_path)
    resnet = sum(p.numel() for p in torchvision.models.resnet18(num_classes=10).parameters())
    assert run.info.status == "FINISHED" and run.data.metrics["params_total"] == resnet + 1 * 3 + 3
    assert run.info.run_name == "resnet18-sgd-s0" and len(run.outputs.model_outputs) == 1


@pytest.mark.slow
def test_a_sweep_over_an_ignored_activation_stops_before_any_job(own, tmp_path):
    result = run_py(
        tmp_path, "--config-dir", str(own / "conf"), "-m", "model=lenet", "activation=relu,tanh",
        env={"PYTHONPATH": str(own)},
    )  # fmt: skip
    assert result.returncode == 1
    assert (
        result.stderr.startswith("error: model=lenet takes no activation") and result.stderr.count("\n") == 1
    )
    assert "activation=relu,tanh would change nothing" in result.stderr
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "outputs").exists()
