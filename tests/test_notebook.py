"""archbench in Jupyter: notebooks/course.ipynb run top to bottom on a real kernel, a kernel interrupt
during a sweep, and `make notebook`."""

import json
import os
import re
import signal
import subprocess
import threading
import urllib.error
import urllib.request

import psutil
import pytest

from conftest import ROOT, all_runs, environment, free_port, patience, small, wait_for
from test_lifecycle import ENDLESS, epochs_logged

pytestmark = pytest.mark.slow


def small_parameters(tmp_path) -> dict:
    """The notebook's parameters cell, shrunk: synthetic data, 1 epoch, 2 seeds, a store in tmp_path."""
    where = [o for o in small(tmp_path) if o.startswith(("data_dir=", "train.threads="))]
    stamp = "${now:%H-%M-%S-%f}"  # a folder per call: the notebook's sweeps follow one another
    where += [
        f"hydra.run.dir={tmp_path}/outputs/runs/{stamp}",
        f"hydra.sweep.dir={tmp_path}/outputs/sweeps/{stamp}",
    ]
    tune = ["tune.settings=2", "tune.extend=0"]  # the tuned comparison's flow, not its search
    return {"EPOCHS": 1, "SEEDS": 2, "DATASET": "synthetic", "EXTRA": where, "TUNE": tune}


def test_the_course_notebook_runs_top_to_bottom_on_a_real_kernel(tmp_path, monkeypatch):
    import papermill

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlruns/mlflow.db")  # the kernel's store
    out = tmp_path / "course.ipynb"
    papermill.execute_notebook(
        ROOT / "notebooks" / "course.ipynb",
        out,
        parameters=small_parameters(tmp_path),
        kernel_name="python3",
        cwd=ROOT / "notebooks",
        progress_bar=False,
    )  # fmt: skip  (raises on the first cell that errors)
    cells = [c for c in json.loads(out.read_text())["cells"] if c["cell_type"] == "code"]

    def shown(start: str) -> str:
        (cell,) = [c for c in cells if "".join(c["source"]).startswith(start)]
        return "".join(
            "".join(o.get("data", {}).get("text/html", "")) + "".join(o.get("text", ""))
            for o in cell["outputs"]
        )

    table = shown("activations = archbench.sweep")
    (sweep_cell,) = [c for c in cells if "".join(c["source"]).startswith("activations = archbench.sweep")]
    widget = "application/vnd.jupyter.widget-view+json"
    bars = [o for o in sweep_cell["outputs"] if widget in o.get("data", {})]
    assert bars, "no tqdm bar of the sweep's jobs in the notebook"
    assert "<th>verdict</th>" in table
    rows = re.findall(r"<tr><td>([^<]+)</td><td>\d</td><td>(activation=\w+)</td>", table)
    assert sorted(c for _, c in rows) == ["activation=relu", "activation=sigmoid", "activation=tanh"]
    assert all(v.split()[0] in ("best", "worse", "equivalent", "open:", "open") for v, _ in rows), rows
    fair = shown("fair = archbench.sweep")
    assert "<th>tuned</th>" in fair and "Each configuration at its own optimizer.lr" in fair
    assert "image/png" in json.dumps(
        [c for c in cells if "".join(c["source"]) == 'fair.chart("sensitivity")']
    )
    assert "written to" in shown("from torch import nn") and "model=smallcnn" in shown("from torch import nn")
    assert "<td>model=smallcnn</td>" in shown("own = archbench.sweep")
    assert "27" in shown('archbench.inspect("model=wide")') and "21" in shown(
        'archbench.inspect("model=deep")'
    )
    statuses = {r.info.status for r in all_runs(tmp_path)}
    assert statuses == {"FINISHED"}


def test_interrupting_the_kernel_during_a_sweep_leaves_its_runs_killed(tmp_path):
    from jupyter_client.manager import start_new_kernel

    env = environment({"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlruns/mlflow.db"})
    manager, kernel = start_new_kernel(kernel_name="archbench", cwd=str(ROOT / "notebooks"), env=env)
    try:
        overrides = [*small(tmp_path), *ENDLESS]  # ENDLESS last: its epochs, not small's 1 (the last wins)
        code = f"import archbench\narchbench.sweep('activation=relu,tanh', *{overrides!r})"
        msg_id = kernel.execute(code)

        def epoch_logged():
            assert manager.is_alive(), "the kernel died"
            return epochs_logged(tmp_path / "mlruns" / "mlflow.db")

        wait_for(epoch_logged, "an epoch in the store", 180)  # a job at work, epochs from its end
        manager.interrupt_kernel()  # what Jupyter's stop button does: SIGINT to the kernel's process group
        reply = kernel.get_shell_msg(timeout=patience(120))
        while reply["parent_header"].get("msg_id") != msg_id:
            reply = kernel.get_shell_msg(timeout=patience(120))
        printed = []  # what the cell showed, for a failure's message
        while kernel.iopub_channel.msg_ready():
            message = kernel.get_iopub_msg(timeout=1)
            printed.append(message["content"].get("text", "") or str(message["content"].get("data", "")))
        shown = (reply["content"], "".join(printed)[-3000:])
        assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "KeyboardInterrupt", (
            shown
        )
        # the kernel lives on, and takes the next cell (once it has aborted what queued behind the error)
        answers = [kernel.execute_interactive("print(1 + 1)", timeout=patience(30)) for _ in range(3)]
        assert "ok" in [a["content"]["status"] for a in answers]
    finally:
        manager.shutdown_kernel(now=True)
    runs = all_runs(tmp_path)
    parent = [r for r in runs if r.data.tags.get("archbench.sweep") == "parent"]
    jobs = [r for r in runs if r not in parent]
    assert len(parent) == 1 and parent[0].info.status == "KILLED"
    assert jobs and {r.info.status for r in jobs} == {"KILLED"}


def answer(url: str):
    """The server's JSON at `url`, once it listens: it prints its address a moment before, under load."""

    def listening():
        try:
            with urllib.request.urlopen(url) as response:
                return [json.load(response)]
        except urllib.error.URLError as e:
            if not isinstance(e.reason, ConnectionRefusedError):
                raise
            return None

    (found,) = wait_for(listening, f"an answer from {url}", 120)
    return found


def test_make_notebook_serves_jupyterlab_on_loopback_with_the_venvs_kernel(tmp_path):
    port = free_port()
    process = subprocess.Popen(
        ["make", "notebook", f"NB_PORT={port}"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True, env=environment({"JUPYTER_RUNTIME_DIR": str(tmp_path)}),
    )  # fmt: skip
    lines = []  # what it printed, read as it comes (in a thread: a read blocks)

    def read():
        for line in process.stdout:
            lines.append(line)

    threading.Thread(target=read, daemon=True).start()
    address = rf"http://127\.0\.0\.1:{port}/lab\?token=(\w+)"
    try:
        found = lambda: next(iter(re.findall(address, "".join(lines))), None)  # noqa: E731
        said = lambda: "".join(lines)[-3000:]  # noqa: E731
        token = wait_for(found, "JupyterLab's address in its output", 120, process, details=said)
        specs = answer(f"http://127.0.0.1:{port}/api/kernelspecs?token={token}")
        listed = {
            item["name"] for item in answer(f"http://127.0.0.1:{port}/api/contents?token={token}")["content"]
        }
        servers = [p.cmdline() for p in psutil.Process(process.pid).children(recursive=True)]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=patience(30))
    # the notebook's kernel: the one make install put in the venv, with the venv's python
    assert specs["kernelspecs"]["archbench"]["spec"]["argv"][0] == str(ROOT / ".venv" / "bin" / "python")
    assert [str(ROOT / ".venv" / "bin" / "python"), str(ROOT / ".venv" / "bin" / "jupyter-lab")] in [
        c[:2] for c in servers
    ]
    assert "course.ipynb" in listed  # the server's root is notebooks/
