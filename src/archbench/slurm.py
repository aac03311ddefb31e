"""Sweeps on a real Slurm cluster through Hydra's submitit launcher: what archbench adds around it.

- A GPU is asked for only when the run wants one (the preset's `archbench.gpus` resolver).
- Before any run exists, `sbatch --test-only` tries the jobs' own script: a refusal is one line
  naming the `hydra.launcher.*` setting to change.
- Where accounting is off (no slurmdbd), job states come from squeue instead of sacct (squeue.py).
- Inside a job: its Slurm id (a tag on its run), and whether a SIGTERM means Slurm requeued it
  (pre-emption, `scontrol requeue`, submitit's requeue before the time limit) or ended it (scancel).
"""

import logging
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from hydra.errors import CompactHydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

LAUNCHER = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
SINFO = "sinfo -o '%P %c %m %G %l'"  # what each partition's nodes have: CPUs, memory (MB), GPUs, time
# sbatch's refusal -> the setting to change and what to look at; the first match wins
REFUSALS = [
    ("invalid partition", "partition", "`sinfo -s` lists the partitions"),
    ("generic resource", "gpus_per_node", f"device=cpu needs none; `{SINFO}` shows the GPUs"),
    ("memory specification", "mem_gb", f"`{SINFO}` shows the nodes' memory"),
    ("more processors", "cpus_per_task", f"`{SINFO}` shows the nodes' CPUs"),
    ("time limit", "timeout_min", f"`{SINFO}` shows each partition's limit"),
    ("invalid account", "account", "`sacctmgr show assoc user=$USER` lists yours"),
    ("invalid qos", "qos", "`sacctmgr show assoc user=$USER` lists yours"),
    ("node configuration is not available", "mem_gb or cpus_per_task", f"`{SINFO}` shows the nodes"),
]
FITS = {"mem_gb": "--mem=1", "cpus_per_task": "--cpus-per-task=1"}  # the smallest request of each


def gpus(device: str) -> int | None:
    """GPUs per node for `device`: cuda:N needs N+1 of them, cpu/mps/auto none (the preset's default)."""
    match = re.fullmatch(r"cuda(?::(\d+))?", str(device))
    return int(match.group(1) or 0) + 1 if match else None


OmegaConf.register_new_resolver("archbench.gpus", gpus, replace=True)


class SlurmCheck(Callback):
    """In the launching process of a Slurm sweep: check the request, and read job states from squeue."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        launcher = config.hydra.launcher
        if launcher.get("_target_") != LAUNCHER:
            return
        if shutil.which("sbatch") is None:
            raise SystemExit(
                "error: hydra/launcher=slurm needs Slurm's sbatch on PATH: run on the cluster's login "
                "node, or use hydra/launcher=submitit_local on this machine; nothing was run"
            )
        params = OmegaConf.to_container(launcher, resolve=True)
        if params["signal_delay_s"] >= 60 * params["timeout_min"]:
            raise SystemExit(
                f"error: hydra.launcher.signal_delay_s={params['signal_delay_s']} must be less than "
                f"hydra.launcher.timeout_min={params['timeout_min']} minutes: Slurm would signal every job "
                "to requeue as soon as it starts; nothing was run"
            )
        refusal = refused(params)
        if refusal:
            raise SystemExit(f"error: {refusal}; nothing was run")
        from submitit.slurm.slurm import SlurmJob

        from archbench.squeue import QueueWatcher  # imports submitit: only for Slurm sweeps

        SlurmJob.watcher = QueueWatcher()  # submitit's one watcher for every job; a fresh one per sweep


def refused(params: dict) -> str | None:
    """None if sbatch takes these jobs (`sbatch --test-only` on the script submitit would submit),
    else one line naming the setting to change."""
    import submitit

    # the executor as hydra_submitit_launcher's BaseSubmititLauncher.launch builds it
    base = {"timeout_min", "cpus_per_task", "gpus_per_node", "tasks_per_node", "mem_gb", "nodes", "name"}
    base.add("stderr_to_stdout")
    skip = {"_target_", "submitit_folder", "max_num_timeout"}
    with tempfile.TemporaryDirectory() as folder:
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
        executor.update_parameters(
            **{k if k in base else f"slurm_{k}": v for k, v in params.items() if k not in skip}
        )
        script = Path(folder) / "check.sh"
        script.write_text(executor._executor._make_submission_file_text("true", "check"))

        def test(*flags: str) -> subprocess.CompletedProcess:  # flags before the script override it
            return subprocess.run(
                ["sbatch", "--test-only", *flags, str(script)], capture_output=True, text=True
            )

        done = test()
        if done.returncode == 0:
            return None
        text = done.stderr.lower()
        key, hint = next(((k, h) for m, k, h in REFUSALS if m in text), (None, ""))
        if key == "mem_gb or cpus_per_task":  # the test says only that no node fits: which request?
            key = next((k for k, f in FITS.items() if test(f).returncode == 0), key)
    said = [line for line in done.stderr.splitlines() if line.strip()] or [f"exit code {done.returncode}"]
    reason = re.sub(r"^(sbatch: error: |allocation failure: )", "", said[-1]).strip()
    if key is None:
        return f"sbatch refuses the jobs ({reason}): see hydra.launcher.* in conf/hydra/launcher/slurm.yaml"
    settings = " or ".join(f"hydra.launcher.{k} (now {params.get(k)})" for k in key.split(" or "))
    where = f" in partition {params['partition']}" if params.get("partition") else ""
    return f"sbatch refuses the jobs{where} ({reason}): change {settings}; {hint}"


def job_id() -> str | None:
    """This process's Slurm job, as squeue and scancel name it (`123_4` for a task of an array)."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID")


def requeued() -> bool:
    """Whether this Slurm job has been requeued while it runs: Slurm counts the restart before it sends
    SIGTERM, so the controller's count is then ahead of the one this run started with."""
    if not os.environ.get("SLURM_JOB_ID"):
        return False
    done = subprocess.run(
        ["scontrol", "show", "job", "--oneliner", os.environ["SLURM_JOB_ID"]],
        capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    count = re.search(r"\bRestarts=(\d+)", done.stdout)
    return bool(count) and int(count.group(1)) > int(os.environ.get("SLURM_RESTART_COUNT") or 0)


def restarted() -> bool:
    """Whether this is a requeued Slurm job started again (after pre-emption or its time limit)."""
    return bool(os.environ.get("SLURM_JOB_ID")) and int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0


class Cancelled(CompactHydraException):
    """A Slurm job stopped for good (scancel, a time limit past its requeues): its run is KILLED, and
    the sweep, told like this of a failed job, goes on to compare the others."""
