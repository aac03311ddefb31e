"""A real one-node Slurm cluster on loopback, for the tests marked `slurm`: Debian's slurm-wlm and munge
(`make test-deps`), configured in a folder of its own and stopped by process id.

No cgroups (proctrack/linuxproc, task/none) and no accounting database, as on many small clusters.
conftest.py's session fixture `slurm_cluster` starts one for every test module that asks for it.
"""

import getpass
import os
import shutil
import signal
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from waiting import patience, wait_for

DAEMONS = ("munged", "slurmctld", "slurmd")
PARTITION = "debug"
START_S = 30  # until the node is idle (a ceiling, scaled by waiting.patience); about 3 s on 2 cores
STOP_S = 30  # until scancel's jobs have ended (a ceiling, scaled)
LIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING", "SIGNALING"}


class Unavailable(Exception):
    """The cluster cannot start here; the message says why."""


@dataclass
class Cluster:
    folder: Path
    env: dict[str, str]  # SLURM_CONF: what every Slurm command, and every job, reads
    cpus: int
    memory_mb: int
    partition: str = PARTITION
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess:
        """A Slurm command (squeue, scontrol, scancel, ...) against this cluster."""
        done = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=patience(60))
        assert done.returncode == 0 or not check, f"{' '.join(command)}: {done.stdout}{done.stderr}"
        return done

    def jobs(self) -> dict[str, str]:
        """Every job Slurm still lists: its id (`12_0` for a task of an array) and its state."""
        out = self.run("squeue", "--states=all", "--noheader", "-o", "%i %T").stdout
        return dict(line.split() for line in out.splitlines() if line.strip())

    def log(self, daemon: str) -> str:
        path = self.folder / f"{daemon}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop(self) -> None:
        """Cancel what still runs, then stop the three daemons by process id."""
        if "slurmctld" in self.processes:
            self.run("scancel", "--full", f"--user={getpass.getuser()}", check=False)
            try:
                wait_for(lambda: not set(self.jobs().values()) & LIVE, "the cancelled jobs to end", STOP_S)
            except AssertionError:  # the daemons stop all the same
                pass
        for name in reversed(DAEMONS):
            process = self.processes.pop(name, None)
            if process is None or process.poll() is not None:
                continue
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=patience(30))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def which(program: str) -> str | None:
    """Where a Slurm or munge program is: the daemons are in /usr/sbin, which a user's PATH may lack."""
    return shutil.which(program, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_line() -> str:
    """This machine as slurmd sees it: `NodeName=vm CPUs=2 ... RealMemory=24105`."""
    done = subprocess.run([which("slurmd"), "-C"], capture_output=True, text=True, timeout=patience(30))
    line = next((x for x in done.stdout.splitlines() if x.startswith("NodeName=")), "")
    if not line:
        raise Unavailable(f"slurmd -C did not describe this machine: {done.stdout}{done.stderr}")
    return line


def config(folder: Path, node: str, user: str) -> str:
    """slurm.conf for one node on loopback, everything in `folder`."""
    name = node.split()[0].removeprefix("NodeName=")
    return "\n".join(
        [
            "ClusterName=archbench-test",
            f"SlurmctldHost={name}(127.0.0.1)",
            f"SlurmctldPort={free_port()}",
            f"SlurmdPort={free_port()}",
            f"SlurmUser={user}",
            f"SlurmdUser={user}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={folder}/munge.socket",
            f"StateSaveLocation={folder}/ctld",
            f"SlurmdSpoolDir={folder}/d",
            f"SlurmctldPidFile={folder}/slurmctld.pid",
            f"SlurmdPidFile={folder}/slurmd.pid",
            f"SlurmctldLogFile={folder}/slurmctld.log",
            f"SlurmdLogFile={folder}/slurmd.log",
            "ProctrackType=proctrack/linuxproc",  # no cgroups
            "TaskPlugin=task/none",
            "MpiDefault=none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",  # sacct: "accounting storage is disabled"
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",  # memory is requested and counted, as on real clusters
            "DefMemPerCPU=1024",
            "EnforcePartLimits=ALL",  # refuse at submission what no node can run, not pend forever
            "ReturnToService=2",
            "KillWait=10",  # SIGTERM to SIGKILL, in seconds
            f"{node} NodeAddr=127.0.0.1 State=UNKNOWN",
            f"PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
            "",
        ]
    )


def start(folder: Path) -> Cluster:
    """munged, slurmctld and slurmd in the foreground, each its own process; returns once the node is idle."""
    missing = [d for d in (*DAEMONS, "sbatch", "squeue", "sinfo", "scontrol") if not which(d)]
    if missing:
        raise Unavailable(
            f"Slurm not installed ({', '.join(missing)} missing: sudo apt-get install slurm-wlm munge)"
        )
    user = getpass.getuser()
    folder.mkdir(parents=True, exist_ok=True)
    for sub in ("ctld", "d"):
        (folder / sub).mkdir(exist_ok=True)
    node = node_line()
    (folder / "slurm.conf").write_text(config(folder, node, user))
    key = folder / "munge.key"
    key.write_bytes(os.urandom(1024))  # this cluster's own: no other munged can vouch for its users
    key.chmod(0o600)
    cpus = int(node.split("CPUs=")[1].split()[0])
    memory = int(node.split("RealMemory=")[1].split()[0])
    cluster = Cluster(folder, {**os.environ, "SLURM_CONF": str(folder / "slurm.conf")}, cpus, memory)
    commands = {
        "munged": [which("munged"), "--foreground", "--force", f"--key-file={key}"]
        + [f"--{k}={folder}/munge{e}" for k, e in (("socket", ".socket"), ("pid-file", "d.pid"))]
        + [f"--{k}={folder}/munged.{e}" for k, e in (("log-file", "log"), ("seed-file", "seed"))],
        "slurmctld": [which("slurmctld"), "-D", "-i"],  # -i: no state from an earlier run (there is none)
        "slurmd": [which("slurmd"), "-D", "-N", node.split()[0].removeprefix("NodeName=")],
    }
    try:
        for name, command in commands.items():
            with open(folder / f"{name}.out", "w") as out:
                cluster.processes[name] = subprocess.Popen(
                    command, env=cluster.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
                )
            if name == "munged":
                _wait(lambda: (folder / "munge.socket").exists(), cluster, "munged's socket")
        _wait(lambda: cluster.run("sinfo", "-h", "-o", "%t", check=False).stdout.strip() == "idle", cluster,
              "the node to be idle")  # fmt: skip
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _wait(ready, cluster: Cluster, what: str) -> None:
    """Until `ready()`; Unavailable, with the daemons' logs, when a daemon exits or at the ceiling."""

    def ready_while_alive():
        dead = [n for n, p in cluster.processes.items() if p.poll() is not None]
        if dead:
            raise Unavailable(f"the Slurm test cluster did not start ({', '.join(dead)} exited):\n{logs()}")
        return ready()

    def logs() -> str:
        return "\n".join(
            f"--- {n}: {cluster.log(n) or (cluster.folder / f'{n}.out').read_text()[-2000:]}"
            for n in cluster.processes
        )

    try:
        wait_for(ready_while_alive, what, START_S)
    except AssertionError as e:
        raise Unavailable(f"the Slurm test cluster did not start ({e}):\n{logs()}") from None
