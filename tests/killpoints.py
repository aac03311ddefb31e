"""Kill a training job at every instant around an epoch's end, then resume it (tests/test_reliability.py).

    python tests/killpoints.py FOLDER OVERRIDES...

An event is each call the job's main thread makes into MLflow's client (one before it, one after
it), each torch.save, and each epoch's training's end. The driver first runs the job uninterrupted
and records its events. Then, for every event from the second epoch's end to the run's end, a
child process runs the job and SIGKILLs itself at that event: nothing of archbench runs after it,
as after the out-of-memory killer or a node losing power. Where the event is a checkpoint's
upload, one more child tears the file: it writes half of it, then dies. Another child resumes each
killed run (`resume=<id>`, as a sweep's reuse does). The test then reads the store.

Each child is forked from this process, which has imported torch, MLflow and archbench once, so an
instant costs a job's own work, not a Python start-up. It has run nothing of torch's (no thread
pool to lose in a fork) and opened no store. FOLDER/instants.json lists what was done.
"""

import json
import os
import signal
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from archbench import cpus  # noqa: E402

cpus.prepare_environment()

import runpy  # noqa: E402

import torch  # noqa: E402, F401
from mlflow.tracking import MlflowClient  # noqa: E402

import archbench.app  # noqa: E402, F401  (imported once, before the forks)
from archbench.train import Trainer  # noqa: E402

CALLS = ("log_batch", "log_artifact", "log_artifacts", "log_text", "log_inputs", "set_tag", "delete_tag",
         "set_terminated", "update_run", "log_param", "create_run")  # fmt: skip

events: list[str] = []
kill_at: tuple[int, str] | None = None  # (event number, "kill" or "tear")


def event(label: str, tear=None) -> None:
    if threading.current_thread() is not threading.main_thread():  # the heartbeat's: not numbered
        return
    events.append(label)
    if kill_at and kill_at[0] == len(events):
        if kill_at[1] == "tear" and tear is not None:
            tear()
        os.kill(os.getpid(), signal.SIGKILL)


def instrument() -> None:
    def wrap(owner, name):
        original = getattr(owner, name)

        def wrapped(self, *args, **kwargs):
            event(f"before {name}", tear=lambda: torn_upload(self, name, args))
            result = original(self, *args, **kwargs)
            event(f"after {name}")
            return result

        setattr(owner, name, wrapped)

    for name in CALLS:
        wrap(MlflowClient, name)
    train = Trainer.train_one_epoch

    def trained(self, x, y, epoch):
        result = train(self, x, y, epoch)
        event(f"epoch {epoch} trained")
        return result

    Trainer.train_one_epoch = trained
    save = torch.save

    def saved(*args, **kwargs):
        event("before torch.save")
        save(*args, **kwargs)
        event("after torch.save")

    torch.save = saved


def torn_upload(mlflow_client, name: str, args) -> None:
    """Half of the file a log_artifact call uploads, written where the store keeps it: a copy that
    the kill cut short."""
    if name != "log_artifact":
        return
    run_id, local, folder = args[0], Path(args[1]), args[2] if len(args) > 2 else ""
    store = Path(mlflow_client.get_run(run_id).info.artifact_uri.removeprefix("file://")) / (folder or "")
    store.mkdir(parents=True, exist_ok=True)
    data = local.read_bytes()
    (store / local.name).write_bytes(data[: len(data) // 2])


def child(argv: list[str], kill: tuple[int, str] | None, record: Path | None = None) -> int:
    """Run run.py with `argv` in a forked child; its exit status (-9: it killed itself)."""
    pid = os.fork()
    if pid == 0:
        global kill_at
        kill_at = kill
        code = 0
        from archbench import exiting

        exiting.now = lambda code=0: None  # run.py ends its process at once; this one records first
        try:
            sys.argv = ["run.py", *argv]
            runpy.run_path(str(ROOT / "run.py"), run_name="__main__")
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:  # noqa: BLE001
            import traceback

            traceback.print_exc()
            code = 1
        if record is not None:
            record.write_text(json.dumps(events))
            record.with_suffix(".modules").write_text("\n".join(sorted(sys.modules)))
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def the_run(uri: str, experiment: str) -> str:
    """The id and status of the one run of `experiment`."""
    mlflow_client = MlflowClient(uri)
    (run,) = mlflow_client.search_runs([mlflow_client.get_experiment_by_name(experiment).experiment_id])
    return f"{run.info.run_id} {run.info.status}"


def warm(modules: list[str]) -> None:
    """Import here what the reference job imported (torch._dynamo, MLflow's store, matplotlib...):
    then each child has them already, and an instant costs seconds less."""
    import importlib

    for name in modules:
        if name not in sys.modules and not name.startswith(("__main__", "__mp_main__")):
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 (a module that imports only as part of another)
                pass


def main() -> None:
    folder, overrides = Path(sys.argv[1]), sys.argv[2:]
    uri = next(o.split("=", 1)[1] for o in overrides if o.startswith("tracking.uri="))
    instrument()
    reference = folder / "reference-events.json"
    assert child([*overrides, "tracking.experiment=reference"], None, reference) == 0
    labels = json.loads(reference.read_text())
    warm(reference.with_suffix(".modules").read_text().split())
    first = labels.index("epoch 2 trained") + 1  # from the second epoch's end (event numbers count from 1)
    chosen = [(k, "kill") for k in range(first, len(labels) + 1)]
    chosen += [(k, "tear") for k in range(first, len(labels) + 1) if labels[k - 1] == "before log_artifact"]
    done = []
    for number, how in chosen:
        experiment = f"{how}-{number}"
        status = child([*overrides, f"tracking.experiment={experiment}"], (number, how))
        resumed = None
        if status == -signal.SIGKILL:
            pid = os.fork()
            if pid == 0:  # read in a child of its own: this process opens no store
                (folder / "run").write_text(the_run(uri, experiment))
                os._exit(0)
            os.waitpid(pid, 0)
            identifier, state = (folder / "run").read_text().split()
            if state != "FINISHED":  # (killed after its end was recorded: nothing to resume)
                resumed = child([*overrides, f"resume={identifier}"], None)
        done.append({"event": number, "label": labels[number - 1], "how": how, "experiment": experiment,
                     "killed": status, "resumed": resumed})  # fmt: skip
    (folder / "instants.json").write_text(json.dumps(done, indent=1))


if __name__ == "__main__":
    main()
