"""run.py's process ends without the interpreter's teardown (archbench/exiting.py), and loses nothing
by it. How much that saves is benchmarks/overhead.py's."""

import subprocess
import sys

import psutil

from conftest import patience, run_py


def test_run_py_ends_after_the_exit_handlers_with_its_idle_children_stopped():
    # archbench/exiting.py: what Python's exit would do that matters, without its teardown
    code = (
        "import atexit, multiprocessing, time\n"
        "from archbench import exiting\n"
        "if __name__ == '__main__':\n"
        "    child = multiprocessing.Process(target=time.sleep, args=(600,))\n"
        "    child.start()\n"
        "    atexit.register(lambda: print('the handler ran'))\n"
        "    print(child.pid, end=' ')\n"
        "    exiting.now(3)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=patience(60))
    assert done.returncode == 3, done.stderr
    pid, said = done.stdout.split(" ", 1)
    assert said == "the handler ran\n"
    assert not psutil.pid_exists(int(pid)) or psutil.Process(int(pid)).status() == psutil.STATUS_ZOMBIE


def test_a_side_by_side_sweep_ends_with_nothing_leaked(tmp_path):
    # its workers end without Python's exit: a multiprocessing lock made in one (tqdm's, for the
    # progress bars) was left for the resource tracker, which warned of "leaked semaphore objects"
    args = ("-m", "activation=relu,tanh", "hydra.launcher.n_jobs=2", "train.progress=true")
    done = run_py(tmp_path, *args, env={"LOKY_MAX_CPU_COUNT": None})  # two worker processes
    assert done.returncode == 0, done.stderr
    assert "leaked" not in done.stderr and "Traceback" not in done.stderr
