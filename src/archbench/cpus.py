"""CPU threads for archbench's processes: the cores a job may use, shared with every other archbench
job on the machine through a lease, and OpenMP told not to spin on cores it shares.

Why: two processes of 2 OpenMP threads on 2 cores wait on each other's spin loops. A 3-epoch mlp
run took 51-52 s instead of 4.6-5.1 s beside a second one on a 2-core Xeon (issue 22). Two cures,
each from the field:
- OMP_WAIT_POLICY=PASSIVE: a waiting thread sleeps instead of spinning, so a job that shares its
  cores (with a foreign process, or at a user's own train.threads) slows down in proportion rather
  than collapsing. libgomp reads it once, when torch loads it, so `prepare_environment` runs in
  run.py before anything imports torch (loky workers and Slurm jobs inherit the environment).
- A lease on cores: one lock file per CPU under the temp folder, held with flock by the job that
  uses it. The kernel drops a flock when its process ends, killed or not, so a lease never
  outlives its job. A job takes as many free cores as it wants threads (at least one thread when
  none is free), so a second sweep in another terminal, or `make test` beside a sweep, gets the
  cores the first leaves and no more.
The cores a process may use at all come from joblib's (loky's) cpu_count: affinity (a Slurm
allocation, taskset), the cgroup CPU quota (a container) and LOKY_MAX_CPU_COUNT.

A sweep runs its jobs side by side (Hydra's joblib launcher, `sweep_jobs` jobs at once), one thread
each by default: small networks gain little from a second thread (the mlp: 4.6 s an epoch at 1 or 2
threads on a 2-core Xeon), so two 1-thread jobs finish two runs in the time of one. Such a job waits
for a core no other archbench job holds, so a second sweep started beside the first queues its jobs
for the same cores instead of doubling up on them: each job trains as fast as alone. Its thread
count is always 1, whatever runs beside it, so the same seed gives the same figures.
"""

import fcntl
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

from omegaconf import OmegaConf

log = logging.getLogger(__name__)

LEASE_DIR = Path(tempfile.gettempdir()) / "archbench-cores"
# the most a Fashion-MNIST job takes (cnn3: 2.3 GB at its peak, measured), with room: a sweep runs no
# more jobs at once than the machine's memory holds
JOB_MEMORY = 3 * 2**30
WAIT_S = 0.2  # how often a sweep's job that waits for a core looks for one
USER_THREADS = "ARCHBENCH_OMP_NUM_THREADS"  # the user's OMP_NUM_THREADS, as run.py found it
_held: list[int] = []  # the open lock files of this process's lease


def prepare_environment() -> None:
    """Before torch loads: waiting OpenMP threads sleep, unless the user chose a policy; and the
    user's own OMP_NUM_THREADS (or none) is kept where the sweep's jobs find it, as joblib sets
    OMP_NUM_THREADS in its workers (cores / n_jobs) where the user has not."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault(USER_THREADS, os.environ.get("OMP_NUM_THREADS", ""))


def users_threads() -> int | None:
    """OMP_NUM_THREADS as the user set it before archbench started, if at all."""
    value = os.environ.get(USER_THREADS, os.environ.get("OMP_NUM_THREADS", ""))
    return int(value) if value.isdigit() and int(value) > 0 else None


def usable_cores() -> int:
    """The CPUs this process may run on: affinity, the cgroup quota, LOKY_MAX_CPU_COUNT."""
    from joblib import cpu_count  # loky's count; joblib comes with Hydra's joblib launcher

    return max(1, cpu_count())


def lease(wanted: int) -> int:
    """Hold up to `wanted` free cores of this process's affinity for as long as it lives (or until
    `release`); returns how many it holds. A process that holds some already keeps them and only
    tops up, so the jobs of one sweep run in one process reuse their lease."""
    LEASE_DIR.mkdir(mode=0o777, exist_ok=True)
    for cpu in sorted(os.sched_getaffinity(0)):
        if len(_held) >= wanted:
            break
        fd = os.open(LEASE_DIR / f"cpu{cpu}.lock", os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # another archbench process holds this core (or this process, on another fd)
            os.close(fd)
            continue
        _held.append(fd)
    while len(_held) > wanted:  # a later job of the same process wants fewer
        os.close(_held.pop())
    return len(_held)


def release() -> None:
    """Give the lease back (a process's exit does it too)."""
    while _held:
        os.close(_held.pop())


def sweep_jobs(threads, device) -> int:
    """How many jobs a sweep runs side by side (the joblib launcher's n_jobs): as many as the usable
    cores hold at `threads` each (train.threads, else OMP_NUM_THREADS, else 1), and the memory holds;
    one where the jobs would share one accelerator (device=cuda..., or auto on a machine with one)."""
    device = str(device)
    if device.startswith(("cuda", "mps")) or (device == "auto" and _accelerator()):
        return 1
    per_job = int(threads) if threads else users_threads() or 1
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")  # the total: the same in every job
    return max(1, min(usable_cores() // per_job, memory // JOB_MEMORY))


def _accelerator() -> bool:
    """A GPU that device=auto would take, seen without importing torch (the launcher's process)."""
    return sys.platform == "darwin" or Path("/dev/nvidia0").exists() or Path("/dev/kfd").exists()


OmegaConf.register_new_resolver("archbench.jobs", sweep_jobs, replace=True)


LEASED = "leased cores"  # threads_for_job's reason where the lease alone chose


def threads_for_job(asked: int | None, share: int, hold: str = "shared") -> tuple[int, str]:
    """The CPU threads of one job and why: `asked` (train.threads) wins, then OMP_NUM_THREADS, then
    by `hold`: "allocated", a Slurm job's own CPUs (`share` of them, which the scheduler gave it
    alone); "queued", a job of a side-by-side sweep, which waits for a free core and takes one
    thread; "shared", the free cores of the lease up to `share` (the usable cores divided among the
    parallel jobs), or one thread beside the others where none is free."""
    if asked:
        lease(asked)  # counted as busy by the others, even where the user asks for more than is free
        return asked, "train.threads"
    if wanted := users_threads():
        lease(wanted)
        return wanted, "OMP_NUM_THREADS"
    if hold == "allocated":
        lease(share)  # the others see them taken, where a node's jobs share one temp folder
        return share, "the Slurm job's CPUs"
    if hold == "queued":
        if not lease(1):
            log.info("waiting for a free core: other archbench jobs hold them all")
            while not lease(1):  # a sleep, not a blocking flock: Ctrl-C and SIGTERM end it at once
                time.sleep(WAIT_S)
        return 1, "a core of its own, 1 thread per job of a sweep"
    free = lease(max(1, min(share, usable_cores())))
    if free == 0:
        return 1, "no free core: other archbench jobs lease them all"
    return free, LEASED


def native_bf16() -> bool:
    """Whether this CPU computes bf16 itself (AVX-512 BF16 or AMX); without either, oneDNN emulates it
    in fp32 and bf16 autocast runs slower than fp32 (2x for the mlp and cnn2 on a Skylake-SP)."""
    import torch

    found = torch.cpu.get_capabilities()
    return bool(found.get("avx512_bf16") or found.get("amx_bf16"))
