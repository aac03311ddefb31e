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
"""

import fcntl
import os
import tempfile
from pathlib import Path

LEASE_DIR = Path(tempfile.gettempdir()) / "archbench-cores"
_held: list[int] = []  # the open lock files of this process's lease


def prepare_environment() -> None:
    """Before torch loads: waiting OpenMP threads sleep, unless the user chose a policy."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


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


def threads_for_job(asked: int | None, share: int, allocated: bool = False) -> tuple[int, str]:
    """The CPU threads of one job and why: `asked` (train.threads) wins, then OMP_NUM_THREADS, then
    a Slurm job's own allocation (`allocated`: `share` CPUs the scheduler gave it alone), then the
    free cores of the lease, up to `share` (the usable cores divided among the parallel jobs)."""
    if asked:
        lease(asked)  # counted as busy by the others, even where the user asks for more than is free
        return asked, "train.threads"
    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        wanted = int(os.environ["OMP_NUM_THREADS"])
        lease(wanted)
        return wanted, "OMP_NUM_THREADS"
    if allocated:
        lease(share)  # the others see them taken, where a node's jobs share one temp folder
        return share, "the Slurm job's CPUs"
    free = lease(max(1, min(share, usable_cores())))
    if free == 0:
        return 1, "no free core: other archbench jobs lease them all"
    return free, "leased cores"


def native_bf16() -> bool:
    """Whether this CPU computes bf16 itself (AVX-512 BF16 or AMX); without either, oneDNN emulates it
    in fp32 and bf16 autocast runs slower than fp32 (2x for the mlp and cnn2 on a Skylake-SP)."""
    import torch

    found = torch.cpu.get_capabilities()
    return bool(found.get("avx512_bf16") or found.get("amx_bf16"))
