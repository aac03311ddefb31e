"""Finding, decoding and caching datasets, on small files the tests write."""

import functools
import gzip
import http.server
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from archbench import data as data_module
from archbench import splits
from archbench.data import CifarSource, DataError, IdxSource, SyntheticSource, read_idx
from archbench.splits import prepare
from datafiles import cifar_tarball, idx_bytes, md5, write_cifar_batches, write_idx_set

CLOSED = "http://127.0.0.1:9/"  # the discard port: nothing listens, so a download fails at once


def fashion(system_dir) -> IdxSource:
    return IdxSource("fashion_mnist", "FashionMNIST", str(system_dir), [1, 28, 28], 10)


@pytest.fixture
def offline(monkeypatch):
    for cls in (torchvision.datasets.FashionMNIST, torchvision.datasets.MNIST):
        monkeypatch.setattr(cls, "mirrors", [CLOSED])
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "url", CLOSED + "cifar-10-python.tar.gz")


@pytest.fixture
def serve(tmp_path):
    """A loopback HTTP server for a folder; yields a function folder -> base URL."""
    servers = []

    def start(folder: Path) -> str:
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
        handler.log_message = lambda *a: None
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield start
    for server in servers:
        server.shutdown()


def test_project_folder_comes_before_the_system_package(tmp_path, offline):
    write_idx_set(tmp_path / "data" / "FashionMNIST" / "raw", fill=7)
    write_idx_set(tmp_path / "system", fill=9)
    raw = fashion(tmp_path / "system").load(tmp_path / "data")
    assert raw["x_train"].shape == (60, 1, 28, 28) and int(raw["x_train"].max()) == 7


def test_system_package_is_used_read_only(tmp_path, offline):
    arrays = write_idx_set(tmp_path / "system", seed=3)
    (tmp_path / "system").chmod(0o555)
    try:
        raw = fashion(tmp_path / "system").load(tmp_path / "data")
    finally:
        (tmp_path / "system").chmod(0o755)
    assert torch.equal(raw["x_test"][:, 0], torch.from_numpy(arrays["t10k-images-idx3-ubyte"]))
    assert torch.equal(raw["y_train"], torch.from_numpy(arrays["train-labels-idx1-ubyte"]).long())
    assert sorted(p.name for p in (tmp_path / "system").iterdir()) == sorted(
        f"{n}.gz" for pair in write_idx_set.__globals__["IDX_NAMES"].values() for n in pair
    )


def test_extracted_files_are_found_too(tmp_path, offline):
    raw_dir = tmp_path / "data" / "FashionMNIST" / "raw"
    write_idx_set(raw_dir, fill=5)
    for gz in raw_dir.glob("*.gz"):
        gz.with_suffix("").write_bytes(gzip.decompress(gz.read_bytes()))
        gz.unlink()
    assert int(fashion(tmp_path / "none").load(tmp_path / "data")["x_test"].min()) == 5


def test_nothing_found_names_every_way_to_get_the_data(tmp_path, offline):
    with pytest.raises(DataError) as error:
        fashion(tmp_path / "no-package").load(tmp_path / "data")
    message = str(error.value)
    assert "\n" not in message
    assert "dataset=fashion_mnist: no data found in" in message
    assert str(tmp_path / "data" / "FashionMNIST" / "raw") in message and "no-package" in message
    assert "apt-get install dataset-fashion-mnist" in message and "internet" in message


def test_torchvision_download_path(tmp_path, monkeypatch, serve):
    mirror = tmp_path / "mirror"
    arrays = write_idx_set(mirror, seed=5)
    resources = [(p.name, md5(p)) for p in sorted(mirror.glob("*.gz"))]
    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", [serve(mirror)])
    monkeypatch.setattr(torchvision.datasets.MNIST, "resources", resources)
    raw = IdxSource("mnist", "MNIST", None, [1, 28, 28], 10).load(tmp_path / "data")
    assert (tmp_path / "data" / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").is_file()
    assert torch.equal(raw["x_train"][:, 0], torch.from_numpy(arrays["train-images-idx3-ubyte"]))


def test_cifar_from_the_project_folder(tmp_path, offline):
    written = write_cifar_batches(tmp_path / "data" / "cifar-10-batches-py")
    raw = CifarSource("cifar10", [3, 32, 32], 10).load(tmp_path / "data")
    assert raw["x_train"].shape == (50, 3, 32, 32) and raw["x_test"].shape == (10, 3, 32, 32)
    assert raw["x_train"][10].flatten().tolist() == written["data_batch_2"][0].tolist()


def test_cifar_download_path(tmp_path, monkeypatch, serve):
    staged = tmp_path / "staged" / "cifar-10-batches-py"
    written = write_cifar_batches(staged)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    cifar_tarball(staged, mirror / "cifar-10-python.tar.gz")
    cls = torchvision.datasets.CIFAR10
    monkeypatch.setattr(cls, "url", serve(mirror) + "cifar-10-python.tar.gz")
    monkeypatch.setattr(cls, "tgz_md5", md5(mirror / "cifar-10-python.tar.gz"))
    monkeypatch.setattr(cls, "train_list", [[n, md5(staged / n)] for n, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[n, md5(staged / n)] for n, _ in cls.test_list])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5(staged / "batches.meta")})
    raw = CifarSource("cifar10", [3, 32, 32], 10).load(tmp_path / "data")
    assert raw["x_test"][0].flatten().tolist() == written["test_batch"][0].tolist()


def test_cifar_nothing_found(tmp_path, offline):
    with pytest.raises(DataError, match=r"dataset=cifar10: no data found .* download failed .* unpack"):
        CifarSource("cifar10", [3, 32, 32], 10).load(tmp_path / "data")


# --- faults ---------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncate_gz", "flip_gz", "truncate_idx", "bad_magic"])
def test_damaged_files_are_named_never_trained_on(tmp_path, offline, damage):
    folder = tmp_path / "data" / "FashionMNIST" / "raw"
    write_idx_set(folder)
    victim = folder / "train-images-idx3-ubyte.gz"
    blob = victim.read_bytes()
    inner = gzip.decompress(blob)
    if damage == "truncate_gz":
        victim.write_bytes(blob[: len(blob) // 2])
    elif damage == "flip_gz":
        victim.write_bytes(blob[:-12] + bytes(b ^ 0xFF for b in blob[-12:-8]) + blob[-8:])
    elif damage == "truncate_idx":
        victim.write_bytes(gzip.compress(inner[:-100]))
    else:
        victim.write_bytes(gzip.compress(b"\x00\x00\x09\x03" + inner[4:]))
    with pytest.raises(DataError) as error:
        fashion(tmp_path / "none").load(tmp_path / "data")
    assert str(victim) in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "data" / "cache" / "fashion_mnist.pt").exists()


def test_read_idx_roundtrip(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a").write_bytes(idx_bytes(array))
    assert read_idx(tmp_path / "a").tolist() == array.tolist()


def test_cache_is_used_then_refreshed_when_a_source_changes(tmp_path, offline, monkeypatch):
    folder = tmp_path / "data" / "FashionMNIST" / "raw"
    write_idx_set(folder, fill=1)
    source = fashion(tmp_path / "none")
    source.load(tmp_path / "data")
    assert (tmp_path / "data" / "cache" / "fashion_mnist.pt").is_file()
    decoded = []
    monkeypatch.setattr(data_module, "read_idx", lambda p: decoded.append(p) or read_idx(p))
    assert int(source.load(tmp_path / "data")["x_train"].max()) == 1 and decoded == []
    write_idx_set(folder, fill=2)
    assert int(source.load(tmp_path / "data")["x_train"].max()) == 2 and len(decoded) == 4


def test_cache_write_is_atomic(tmp_path, offline, monkeypatch):
    folder = tmp_path / "data" / "FashionMNIST" / "raw"
    write_idx_set(folder, fill=3)
    cache = tmp_path / "data" / "cache" / "fashion_mnist.pt"
    real_save = torch.save

    def crash_midway(obj, path):
        Path(path).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash_midway)
    assert int(fashion(tmp_path / "none").load(tmp_path / "data")["x_train"].max()) == 3
    assert not cache.exists() and list(cache.parent.iterdir()) == []
    monkeypatch.setattr(torch, "save", real_save)
    cache.write_bytes(b"garbage from some other crash")  # unreadable cache: rebuilt, not trusted
    assert int(fashion(tmp_path / "none").load(tmp_path / "data")["x_train"].max()) == 3
    assert torch.load(cache, weights_only=True)["tensors"]["x_train"].max() == 3


def test_prepare_normalises_once_and_holds_out_validation():
    x = torch.arange(100 * 4, dtype=torch.float32).reshape(100, 1, 2, 2)
    raw = {
        "x_train": x,
        "y_train": torch.arange(100) % 10,
        "x_test": x[:10],
        "y_test": torch.zeros(10).long(),
    }
    splits = prepare(raw, torch.device("cpu"), 0.2, seed=0)
    assert len(splits.x_train) == 80 and len(splits.x_val) == 20
    assert abs(float(splits.x_train.mean())) < 1e-5 and abs(float(splits.x_train.std()) - 1) < 1e-2
    seen = torch.cat([splits.y_train, splits.y_val]).sort().values
    assert torch.equal(seen, raw["y_train"].sort().values)


def test_normalising_in_place_gives_x_minus_mean_over_std_and_leaves_the_raw_tensors_as_they_were():
    for raw_x in (torch.randint(0, 256, (50, 3, 4, 4), dtype=torch.uint8), torch.randn(50, 3, 4, 4) * 7 + 2):
        raw = {"x_train": raw_x, "y_train": torch.zeros(50).long(), "x_test": raw_x[:10].clone(),
               "y_test": torch.zeros(10).long()}  # fmt: skip
        kept = {k: v.clone() for k, v in raw.items()}
        splits = prepare(raw, torch.device("cpu"), 0.0, seed=0)
        x = raw_x.float()
        mean, std = x.mean([0, 2, 3], keepdim=True), x.std([0, 2, 3], keepdim=True).clamp_min(1e-6)
        assert torch.equal(splits.x_train, (x - mean) / std)  # bit for bit, as before it was in place
        assert torch.equal(splits.x_test, (raw["x_test"].float() - mean) / std)
        assert all(torch.equal(raw[k], kept[k]) for k in raw)  # a float set's cached tensors untouched


def test_a_sweeps_next_job_reuses_the_splits_only_when_it_asks_for_the_same(tmp_path):
    def job(seed=0, val=0.0, noise=0.5, folder="data"):
        source = SyntheticSource("synthetic", [1, 4, 4], 3, 60, 20, noise, seed=7)
        return splits.for_job(source, tmp_path / folder, torch.device("cpu"), val, seed)

    first = job()
    again = job(seed=1)  # the seed only matters with a validation split
    assert again is not first and again.x_train is first.x_train
    again.x_train = again.x_train.contiguous(memory_format=torch.channels_last)  # as place() does
    assert job().x_train is first.x_train
    for other in (job(noise=0.6), job(folder="other"), job(val=0.2)):
        assert other.x_train is not first.x_train
    assert not torch.equal(job(val=0.2, seed=0).y_val, job(val=0.2, seed=1).y_val)
    fresh = prepare(
        SyntheticSource("synthetic", [1, 4, 4], 3, 60, 20, 0.5, seed=7).load(tmp_path),
        torch.device("cpu"),
        0.0,
        0,
    )
    assert torch.equal(job().x_train, fresh.x_train) and torch.equal(job().y_test, fresh.y_test)


def test_copying_the_package_files_works_too(tmp_path, offline):
    write_idx_set(tmp_path / "system", fill=4)
    shutil.copytree(tmp_path / "system", tmp_path / "data" / "FashionMNIST" / "raw")
    assert int(fashion(tmp_path / "gone").load(tmp_path / "data")["x_test"].max()) == 4


def test_the_digests_beside_the_cache_name_the_data_as_loading_it_does(tmp_path, offline):
    # a sweep's reuse check names each job's data from them, without torch or decoding (issue 34)
    folder = tmp_path / "data" / "FashionMNIST" / "raw"
    write_idx_set(folder, fill=4)
    source = fashion(tmp_path / "none")
    assert source.split_digests(tmp_path / "data") is None  # nothing decoded yet: the job will say
    lineage = source.load(tmp_path / "data")["lineage"]
    assert source.split_digests(tmp_path / "data") == {s: line.digest for s, line in lineage.items()}
    write_idx_set(folder, fill=5)  # a changed file: unknown again until decoded
    assert source.split_digests(tmp_path / "data") is None
    lineage = source.load(tmp_path / "data")["lineage"]
    assert source.split_digests(tmp_path / "data") == {s: line.digest for s, line in lineage.items()}

    (tmp_path / "data" / "cache" / "fashion_mnist.pt.digests.json").unlink()  # a cache from before them
    assert source.split_digests(tmp_path / "data") is None
    source.load(tmp_path / "data")
    assert source.split_digests(tmp_path / "data") == {s: line.digest for s, line in lineage.items()}

    write_cifar_batches(tmp_path / "data" / "cifar-10-batches-py")
    cifar = CifarSource("cifar10", [3, 32, 32], 10)
    assert cifar.split_digests(tmp_path / "data") is None
    lineage = cifar.load(tmp_path / "data")["lineage"]
    assert cifar.split_digests(tmp_path / "data") == {s: line.digest for s, line in lineage.items()}

    synthetic = SyntheticSource("synthetic", [1, 4, 4], 3, 60, 20, 0.5, seed=7)
    lineage = synthetic.load(tmp_path)["lineage"]
    assert synthetic.split_digests(tmp_path) == {s: line.digest for s, line in lineage.items()}
    other = SyntheticSource("synthetic", [1, 4, 4], 3, 60, 20, 0.5, seed=8).split_digests(tmp_path)
    assert other != synthetic.split_digests(tmp_path)
