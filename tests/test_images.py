"""A folder of images as a dataset: ImageFolder's layout, decoded once and cached, faults in one line."""

import hashlib
import json

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from torchvision.transforms.v2 import functional as F

from archbench import images
from archbench.app import main
from archbench.config import ConfigError
from archbench.data import DataError
from conftest import ROOT, all_runs, compose_job, store
from imagefiles import SHAPES, write_image_folder


def source(root, **settings) -> images.ImageFolderSource:
    """The source as a run builds it: the image_folder config, settled from the folder."""
    node = OmegaConf.load(ROOT / "conf" / "dataset" / "image_folder.yaml")
    node.root = str(root)
    for key, value in settings.items():
        node[key] = value
    images.settle(node)
    return images.ImageFolderSource(
        **{k: v for k, v in OmegaConf.to_container(node).items() if k != "_target_"}
    )


def test_train_and_test_folders_become_tensors_of_the_configured_shape(tmp_path):
    written = write_image_folder(
        tmp_path / "shapes", per_class=4, test_per_class=2, size=(20, 24), mode="RGB"
    )
    raw = source(tmp_path / "shapes", input_shape=[1, 16, 16]).load(tmp_path / "data")
    assert raw["x_train"].shape == (12, 1, 16, 16) and raw["x_train"].dtype == torch.uint8
    assert raw["x_test"].shape == (6, 1, 16, 16)
    assert raw["y_train"].tolist() == [0] * 4 + [1] * 4 + [2] * 4  # sorted class folders, as ImageFolder
    first = written["train"][0]  # torchvision's own definition: PIL's grayscale, then its Resize
    expected = F.resize(F.pil_to_tensor(Image.open(first).convert("L")), [16, 16], antialias=True)
    assert torch.equal(raw["x_train"][0], expected)
    lineage = raw["lineage"]["train"]
    assert lineage.classes == list(SHAPES) and lineage.source == str((tmp_path / "shapes").resolve())
    circles = sorted(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  train/circle/{p.name}\n"
                     for p in written["train"][:4])  # fmt: skip
    assert lineage.parts["circle"] == hashlib.sha256("".join(circles).encode()).hexdigest()


def test_null_input_shape_is_the_images_own_and_a_fraction_is_held_out(tmp_path):
    write_image_folder(tmp_path / "f", per_class=10, test_per_class=None, size=(12, 9), mode="RGB")
    node = OmegaConf.load(ROOT / "conf" / "dataset" / "image_folder.yaml")
    node.root = str(tmp_path / "f")
    images.settle(node)
    assert (node.input_shape, node.resize, node.num_classes, node.classes) == (
        [3, 12, 9],
        False,
        3,
        list(SHAPES),
    )
    split = source(tmp_path / "f").files()
    assert [len(split[s]) for s in ("train", "test")] == [24, 6]  # 0.2 of each class's 10
    assert not {p for p, _ in split["train"]} & {p for p, _ in split["test"]}
    # a class's held-out images depend on that class's files alone
    (tmp_path / "f" / "square" / "000.png").rename(tmp_path / "f" / "square" / "zzz.png")
    again = source(tmp_path / "f").files()
    assert [p for p, y in again["test"] if y != 1] == [p for p, y in split["test"] if y != 1]
    assert source(tmp_path / "f", seed=1).files()["test"] != split["test"]


def test_mixed_sizes_are_refused_unless_asked_to_resize(tmp_path):
    write_image_folder(tmp_path / "f", per_class=3, test_per_class=1)
    odd = tmp_path / "f" / "train" / "square" / "001.png"
    Image.open(odd).resize((30, 20)).save(odd)
    with pytest.raises(DataError) as error:
        source(tmp_path / "f").load(tmp_path / "data")
    message = str(error.value)
    assert f"{odd} is 20x30 pixels, not the 28x28 of dataset.input_shape" in message and "\n" not in message
    assert "set dataset.input_shape=[C,H,W]" in message
    assert source(tmp_path / "f", input_shape=[1, 28, 28]).load(tmp_path / "data")["x_train"].shape[0] == 9


def test_a_damaged_image_is_named_and_nothing_is_cached(tmp_path):
    write_image_folder(tmp_path / "f", per_class=3, test_per_class=1)
    victim = tmp_path / "f" / "test" / "triangle" / "000.png"
    victim.write_bytes(victim.read_bytes()[:60])
    with pytest.raises(DataError) as error:
        source(tmp_path / "f").load(tmp_path / "data")
    assert str(error.value).startswith(f"{victim}: damaged or not an image") and "\n" not in str(error.value)
    assert not (tmp_path / "data" / "cache").exists() or not list((tmp_path / "data" / "cache").iterdir())


@pytest.mark.parametrize(
    ("break_it", "message"),
    [
        (lambda f: [p.unlink() for p in (f / "train" / "circle").iterdir()], "train/circle: no images (.jpg"),
        (lambda f: (f / "test" / "circle").rename(f / "test" / "oval"), "test has class folders ['oval', "),
    ],
    ids=["empty class", "test classes differ"],
)
def test_folder_faults_are_named(tmp_path, break_it, message):
    write_image_folder(tmp_path / "f", per_class=2, test_per_class=1)
    break_it(tmp_path / "f")
    with pytest.raises(DataError) as error:
        source(tmp_path / "f", input_shape=[1, 8, 8]).load(tmp_path / "data")
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"root": None}, "dataset=image_folder needs dataset.root=PATH"),
        ({"root": "nowhere"}, "dataset.root=nowhere: no such folder"),
        (
            {"input_shape": [2, 8, 8]},
            "dataset.input_shape must be null or [C, H, W] with C 1 (grayscale) or 3",
        ),
        ({"test_fraction": 1.5}, "dataset.test_fraction must be a number > 0 and < 1, got 1.5"),
        ({"num_classes": 5}, "dataset.num_classes=5, but"),
        ({"resize": "yes"}, "dataset.resize must be null, true or false, got 'yes'"),
    ],
)
def test_setting_errors(tmp_path, settings, message):
    write_image_folder(tmp_path / "f", per_class=2, test_per_class=None)
    node = OmegaConf.load(ROOT / "conf" / "dataset" / "image_folder.yaml")
    node.root = str(tmp_path / "f")
    node.merge_with(settings)
    with pytest.raises(ConfigError) as error:
        images.settle(node)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_second_run_reads_the_cache_and_a_changed_image_is_decoded_again(tmp_path, monkeypatch):
    write_image_folder(tmp_path / "f", per_class=3, test_per_class=1)
    first = source(tmp_path / "f").load(tmp_path / "data")
    read = []
    real = images.ImageFolderSource.read
    monkeypatch.setattr(images.ImageFolderSource, "read", lambda self, p: read.append(p) or real(self, p))
    again = source(tmp_path / "f").load(tmp_path / "data")
    assert read == [] and torch.equal(again["x_train"], first["x_train"])
    assert again["lineage"]["test"].digest == first["lineage"]["test"].digest
    changed = tmp_path / "f" / "test" / "circle" / "000.png"
    Image.open(tmp_path / "f" / "test" / "square" / "000.png").save(changed)
    third = source(tmp_path / "f").load(tmp_path / "data")
    assert len(read) == 12 and third["lineage"]["test"].digest != first["lineage"]["test"].digest
    assert third["lineage"]["train"].digest == first["lineage"]["train"].digest


def test_a_run_on_an_image_folder_records_its_classes(tmp_path):
    write_image_folder(tmp_path / "shapes", per_class=20, test_per_class=5)
    main(compose_job(tmp_path, "dataset=image_folder", f"dataset.root={tmp_path}/shapes", "model=cnn2"))
    (run,) = all_runs(tmp_path)
    assert run.info.status == "FINISHED" and run.data.params["dataset.num_classes"] == str(len(SHAPES))
    assert {f"zz_class_accuracy.{c}" for c in SHAPES} <= set(run.data.metrics)
    (train,) = [d for d in run.inputs.dataset_inputs if d.tags[0].value == "train"]
    assert json.loads(train.dataset.profile)["classes"] == list(SHAPES)  # found in the folder, in label order
    assert set(json.loads(train.dataset.source)["files"]) == set(SHAPES)
    matrix = store(tmp_path).download_artifacts(run.info.run_id, "confusion_matrix.csv", str(tmp_path))
    assert open(matrix).readline().strip() == "true \\ predicted,circle,square,triangle"
