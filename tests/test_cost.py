"""archbench's own cost (issue 34): what a path that never trains leaves unloaded. Speed itself is
measured by the benchmarks, side by side, never here."""

import subprocess
import sys

from conftest import ROOT


def loaded_after(module: str) -> set[str]:
    code = f"import sys, {module}; print(' '.join(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(done.stdout.split())


def test_the_report_and_the_config_checks_load_no_torch():
    # `make compare` and its --help print a table: torch (2-4 s of imports) is never used there
    # nor reading a run's predictions back, which every comparison does
    for module in ("archbench.report", "archbench.config", "archbench.tracking.predictions"):
        assert "torch" not in loaded_after(module), module
