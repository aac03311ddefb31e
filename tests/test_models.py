"""Every model x activation builds from the real config and learns on synthetic data."""

import pytest
import torch
from hydra.utils import instantiate

from archbench.data import SyntheticSource
from archbench.models import CNN, ShapeError, cnn_shapes, conv_out
from archbench.splits import prepare
from archbench.train import Trainer
from conftest import compose_job

MODELS = ["mlp", "mlp_deep", "cnn1", "cnn2", "cnn3"]
ACTIVATIONS = ["relu", "tanh", "sigmoid", "leaky_relu", "gelu", "elu", "silu"]


def _trainer(cfg, model):
    return Trainer(
        model=model,
        optimizer=instantiate(cfg.optimizer)(model.parameters()),
        criterion=instantiate(cfg.loss.criterion),
        batch_size=cfg.train.batch_size,
        generator=torch.Generator().manual_seed(0),
        progress=False,
    )


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("model_name", MODELS)
def test_every_model_and_activation_trains(tmp_path, model_name, activation):
    cfg = compose_job(
        tmp_path,
        f"model={model_name}",
        f"activation={activation}",
        "dataset.train_size=300",
        "dataset.test_size=100",
        "train.batch_size=50",
    )
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    layers = [m for m in model.modules() if isinstance(m, type(instantiate(cfg.activation)()))]
    assert len(layers) == len(cfg.model.get("hidden_sizes") or cfg.model.channels)
    assert len({id(m) for m in layers}) == len(layers), "each layer needs its own activation module"
    data = prepare(instantiate(cfg.dataset).load(tmp_path), torch.device("cpu"), 0.0, 0)
    trainer = _trainer(cfg, model)
    before = [p.detach().clone() for p in model.parameters()]
    result = trainer.fit(data, epochs=2)
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert 0.0 <= result["test_accuracy"] <= 1.0 and result["test_loss"] == result["test_loss"]


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("shape", [[1, 28, 28], [3, 32, 32]])
def test_input_sizes_follow_the_dataset(tmp_path, model_name, shape):
    cfg = compose_job(tmp_path, f"model={model_name}", f"dataset.input_shape={shape}")
    model = instantiate(cfg.model)
    out = model(torch.zeros(4, *shape))
    assert out.shape == (4, 10)


def test_cnn_layers_as_the_course_draws_them(tmp_path):
    cnn3 = instantiate(compose_job(tmp_path, "model=cnn3").model)
    kinds = [type(m).__name__ for m in cnn3]
    assert kinds == [
        "Conv2d",
        "BatchNorm2d",
        "ReLU",
        "MaxPool2d",
        "Conv2d",
        "BatchNorm2d",
        "ReLU",
        "MaxPool2d",
        "Flatten",
        "Linear",
    ]
    assert cnn3[0].out_channels == 16 and cnn3[4].out_channels == 32
    assert cnn3[-1].in_features == 32 * 7 * 7


def test_learns_synthetic_data(tmp_path):
    # the synthetic set must have learnable structure, or smoke runs prove nothing
    cfg = compose_job(tmp_path, "model=mlp")
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    data = prepare(
        SyntheticSource("s", [1, 28, 28], 10, 2000, 500, 1.0, 3).load(tmp_path), torch.device("cpu"), 0.0, 0
    )
    assert _trainer(cfg, model).fit(data, epochs=2)["test_accuracy"] > 0.9


def test_shape_formula_and_error():
    assert conv_out(28, 5, 2, 1) == 28 and conv_out(28, 2, 0, 2) == 14 and conv_out(7, 3) == 5
    assert cnn_shapes([1, 28, 28], [16, 32], 5, 2, 2)[-1] == ("pool2", (32, 7, 7))
    with pytest.raises(ShapeError, match=r"pool3 .* gets 8x1x1 and would give 0x0"):
        CNN([1, 4, 4], [4, 8, 8], 3, 1, 2, False, 10, torch.nn.ReLU)
