"""Loopback by default, no credentials in what is recorded, nothing from the config in a shell."""

import re
import subprocess
from pathlib import Path

from archbench.tracking.runs import flatten, redact, redact_overrides, resolved_yaml
from conftest import ROOT, compose_job

URI = "postgresql://alice:s3cret@db.example:5432/mlflow"


def test_redact():
    assert redact(URI) == "postgresql://alice:***@db.example:5432/mlflow"
    assert redact("http://bob:pw@127.0.0.1/") == "http://bob:***@127.0.0.1/"
    assert redact("sqlite:///mlruns/mlflow.db") == "sqlite:///mlruns/mlflow.db"
    assert redact_overrides([f"tracking.uri={URI}", "optimizer.lr=0.1"]) == [
        "tracking.uri=postgresql://alice:***@db.example:5432/mlflow",
        "optimizer.lr=0.1",
    ]


def test_config_records_carry_no_password(tmp_path):
    cfg = compose_job(tmp_path, f"tracking.uri={URI}")
    assert flatten(cfg)["tracking.uri"] == redact(URI)
    assert "s3cret" not in resolved_yaml(cfg) and "s3cret" not in str(flatten(cfg))


def test_servers_bind_to_loopback_by_default():
    for target in ("ui", "server"):
        plan = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True).stdout
        assert "--host 127.0.0.1" in plan, target
    assert 'default="127.0.0.1"' in (ROOT / "src" / "archbench" / "server.py").read_text()


def test_no_shell_anywhere_in_the_package():
    # archbench starts processes with argument lists only, so no config value is ever parsed by a shell
    sources = "\n".join(p.read_text() for p in Path(ROOT, "src").rglob("*.py"))
    assert not re.search(r"shell\s*=\s*True|os\.system\(|os\.popen\(", sources)
