"""mode=inspect prints torchinfo's summary and the course's parameter figures, without data."""

import re

import pytest

from archbench.app import main
from conftest import compose_job, run_py

# (model, total parameters, nodes) as the course computes them by hand
COURSE = [("wide", 27, 7), ("deep", 21, 7), ("dummynet", 2512, 19), ("tinymodel", 22210, 210)]


def figures(text: str) -> dict[str, int]:
    return {k: int(v.replace(",", "")) for k, v in re.findall(r"^([a-z-]+)\s+([\d,]+)$", text, re.M)}


@pytest.mark.parametrize(("model", "total", "nodes"), COURSE)
def test_course_examples(tmp_path, capsys, model, total, nodes):
    assert main(compose_job(tmp_path, "mode=inspect", f"model={model}")) is None
    out = capsys.readouterr().out
    counts = figures(out)
    assert counts["total"] == total and counts["nodes"] == nodes == counts["biases"]
    assert counts["weights"] + counts["biases"] == total and counts["trainable"] == total
    assert counts["non-trainable"] == 0
    assert f"Total params: {total:,}" in out  # torchinfo agrees


def test_layers_of_the_course_examples(tmp_path, capsys):
    main(compose_job(tmp_path, "mode=inspect", "model=dummynet"))
    out = capsys.readouterr().out
    assert re.search(r"Conv2d.*\[1, 3, 7, 7\]\s+\[1, 9, 5, 5\]\s+252", out)
    assert re.search(r"Linear.*\[1, 225\]\s+\[1, 10\]\s+2,260", out)
    main(compose_job(tmp_path, "mode=inspect", "model=tinymodel"))
    assert "Softmax" in capsys.readouterr().out


def test_inspect_needs_no_data_and_no_store(tmp_path):
    result = run_py(
        tmp_path, "mode=inspect", "model=cnn3", "dataset=fashion_mnist", f"data_dir={tmp_path}/nothing-here"
    )
    assert result.returncode == 0, result.stderr
    assert figures(result.stdout)["total"] == 29_034
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "nothing-here").exists()
