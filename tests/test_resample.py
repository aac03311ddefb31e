"""dataset.resample=true: each seed its own stratified train/test partition of the pooled data, the
same for every configuration at that seed, named in the runs' dataset records; its comparison leans
on the seeds alone, which then carry the test sample (tests/test_two_sources.py simulates it)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from archbench import splits
from archbench.app import main
from archbench.comparing import table
from archbench.comparing.comparison import Comparison
from archbench.comparing.stats import RESAMPLED
from archbench.tracking import tables
from archbench.tracking.predictions import PREDICTIONS, read_predictions
from conftest import all_runs, compose_job, store


def test_a_partition_is_stratified_at_the_standard_sizes_and_the_seeds_own(tmp_path):
    source = instantiate(compose_job(tmp_path, "dataset.train_size=600", "dataset.test_size=200").dataset)
    raw = source.load(tmp_path)
    pooled = torch.cat([raw["y_train"], raw["y_test"]])
    drawn = {seed: splits.partition(raw, seed) for seed in (0, 0, 1)}
    for part in drawn.values():
        assert (len(part["y_train"]), len(part["y_test"])) == (600, 200)
        # stratified: each class's share of the test split is its share of the pool, to one image
        expected = torch.bincount(pooled, minlength=10) * 200 / len(pooled)
        assert (torch.bincount(part["y_test"], minlength=10) - expected).abs().max() <= 1
        index = part["test_index"]
        assert torch.equal(part["y_test"], pooled[index])
        assert len(set(index) | set(np.setdiff1d(np.arange(800), index))) == 800  # a partition of it
    assert np.array_equal(splits.partition(raw, 0)["test_index"], drawn[0]["test_index"])
    assert not np.array_equal(drawn[0]["test_index"], drawn[1]["test_index"])
    lineage = drawn[1]["lineage"]["test"]
    assert lineage.parts["resample.seed"] == "1" and lineage.rows == 200
    assert (
        lineage.digest != raw["lineage"]["test"].digest != splits.partition(raw, 0)["lineage"]["test"].digest
    )


@pytest.fixture(scope="module")
def resampled(tmp_path_factory):
    """relu and tanh at seeds 0 and 1, each on its seed's partition: four runs in one store."""
    tmp = tmp_path_factory.mktemp("resample")
    for activation in ("relu", "tanh"):
        for seed in (0, 1):
            main(compose_job(tmp, "dataset.resample=true", f"activation={activation}", f"seed={seed}"))
    return tmp


def test_one_seed_has_one_partition_for_every_configuration_and_each_seed_another(resampled):
    partitions = {}
    for run in all_runs(resampled):
        (test,) = [d.dataset for d in run.inputs.dataset_inputs if d.tags[0].value == "test"]
        source = json.loads(test.source)
        assert source["resample.seed"] == run.data.params["seed"]  # the record names the partition
        partitions.setdefault(run.data.params["seed"], set()).add(
            (test.digest, source["resample.test_indices"])
        )
    assert len(partitions["0"]) == len(partitions["1"]) == 1  # relu's and tanh's: the same partition
    assert partitions["0"] != partitions["1"]


def test_its_comparison_leans_on_the_seeds_which_carry_the_test_sample(resampled):
    client = store(resampled)
    runs = tables.experiment_runs(client, client.get_experiment_by_name("archbench").experiment_id)
    assert runs.resampled.all()
    # the predictions name each example by its index in the pool: not one test set to cross with seeds
    run_id = runs.run_id.iloc[0]
    path = Path(client.download_artifacts(run_id, PREDICTIONS, str(resampled / "dl")))
    assert read_predictions(path) is None
    assert tables.predictions(client, runs) == {}
    comp = Comparison.of(runs, "experiment archbench", correct=tables.predictions(client, runs))
    assert set(comp.summary.sources) == {RESAMPLED}
    assert "dataset.resample=true" in table.markdown(comp) and "not those of the official" in table.markdown(
        comp
    )


def test_bad_resample_settings_are_one_line(tmp_path):
    with pytest.raises(SystemExit, match=r"^error: dataset.resample must be true or false, got 'yes'$"):
        main(compose_job(tmp_path, "dataset.resample=yes"))
    with pytest.raises(SystemExit, match=r"error: dataset.resample=true pools the train and test splits of .*"
                       r"; mylab.Data cannot be pooled"):  # fmt: skip
        main(compose_job(tmp_path, "dataset.resample=true", "dataset._target_=mylab.Data"))
    assert not (tmp_path / "mlruns").exists()
