"""archbench's own cost (issue 34): what a path that never trains leaves unloaded. Speed itself is
measured by the benchmarks, side by side, never here."""

import subprocess
import sys

from conftest import ALL_CORES, ROOT, all_runs, environment, run_py, small


def loaded_after(module: str) -> set[str]:
    code = f"import sys, {module}; print(' '.join(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(done.stdout.split())


def test_the_report_and_the_config_checks_load_no_torch():
    # `make compare` and its --help print a table: torch (2-4 s of imports) is never used there
    # nor reading a run's predictions back, which every comparison does
    for module in ("archbench.report", "archbench.config", "archbench.tracking.predictions"):
        assert "torch" not in loaded_after(module), module


def test_a_sweeps_parent_loads_no_torch(tmp_path):
    # the parent composes, checks reuse and compares; its jobs train in worker processes. torch
    # (1.5-2 s of imports) is theirs alone. The sweep runs as typed, its parent watched at exit, on
    # all cores: on one, joblib runs the jobs in the parent itself.
    args = ["run.py", "-m", "activation=relu,tanh", *small(tmp_path)]
    code = (
        "import atexit, runpy, sys; "
        "atexit.register(lambda: print('torch in the parent:', 'torch' in sys.modules)); "
        f"sys.argv = {args!r}; runpy.run_path('run.py', run_name='__main__')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
        env=environment(ALL_CORES),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(all_runs(tmp_path)) == 3  # the two jobs and their sweep's own run
    assert done.stdout.splitlines()[-1] == "torch in the parent: False"


def test_torchs_version_is_read_without_importing_it():
    code = (
        "import sys; from archbench import identity; v = identity.torch_version(); "
        "assert 'torch' not in sys.modules; import torch; "
        "assert v == torch.__version__, (v, torch.__version__)"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_the_report_after_a_sweep_prints_the_sweeps_comparison_without_reading_the_store(tmp_path):
    # the sweep keeps what `make compare` would print next (the latest sweep, or --parent it), so the
    # report, as typed right after it, prints at once: no MLflow, no scipy. It is what a report that
    # reads the store computes, to the character (another cache folder: nothing kept there).
    cache = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    sweep = run_py(tmp_path, "-m", "activation=relu,tanh", env=cache)
    assert sweep.returncode == 0, sweep.stderr[-2000:]
    (parent,) = [r.info.run_id for r in all_runs(tmp_path) if r.data.tags.get("archbench.sweep") == "parent"]
    uri, out = f"sqlite:///{tmp_path}/mlruns/mlflow.db", str(tmp_path / "outputs" / "comparison")

    def report(*args, env):
        cmd = [sys.executable, "-X", "importtime", "-m", "archbench.report", "--tracking-uri", uri]
        cmd += ["--out", out, *args]
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=environment(env))
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout, {line.split("|")[-1].strip() for line in done.stderr.splitlines() if "|" in line}

    for args in ([], ["--parent", parent]):
        printed, imported = report(*args, env=cache)
        assert "mlflow" not in imported and "scipy" not in imported, args
        assert f"written to {out}/{parent}: comparison.md" in printed and "activation=tanh" in printed
        computed, imported = report(*args, env={"XDG_CACHE_HOME": str(tmp_path / "cache2")})
        assert "mlflow" in imported and computed == printed, args
    # another margin's report into the same folder rewrites the files a kept output names: the next
    # report computes again, rather than name files that now hold another comparison
    assert report("--margin", "0.02", env=cache)[0] != printed
    again, imported = report(env=cache)
    assert "mlflow" in imported and again == printed
    assert report(env=cache)[1].isdisjoint({"mlflow", "scipy"})  # and keeps it
