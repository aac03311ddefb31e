"""Slurm job states for submitit from squeue, where sacct has no accounting storage to read.

submitit reads job states with sacct only. Without accounting (no slurmdbd, as on many small
clusters) every poll logs "Bypassing sacct error" three times over (submitit's logger, its warning
and Hydra's), and a job that dies without its result file is never seen to end.
"""

import getpass
import logging
import subprocess

from submitit.slurm.slurm import SlurmInfoWatcher

log = logging.getLogger(__name__)

POLL_S = 60  # at most between polls: squeue is answered from slurmctld's memory, and results come as files


class QueueWatcher(SlurmInfoWatcher):
    """submitit's watcher, on squeue when sacct says accounting is off (one line says so)."""

    def __init__(self) -> None:
        super().__init__(delay_s=POLL_S)
        self.squeue: bool | None = None  # decided on the first poll

    def _make_command(self) -> list[str] | None:
        command = super()._make_command()
        if command is None:
            return None
        if self.squeue is None:
            probe = subprocess.run(["sacct", "--noheader", "-X", "-j", "1"], capture_output=True, text=True)
            said = " ".join((probe.stderr + probe.stdout).split())
            self.squeue = probe.returncode != 0 and "accounting storage is disabled" in said.lower()
            if self.squeue:
                log.warning("Slurm accounting is off (sacct: %s): job states come from squeue", said)
        # every job of this user, so that no id is unknown (squeue fails on one)
        mine = ["squeue", f"--user={getpass.getuser()}", "--states=all", "--noheader", "-o", "%i|%T|%N"]
        return mine if self.squeue else command

    def read_info(self, string) -> dict[str, dict[str, str]]:
        if not self.squeue:
            return super().read_info(string)
        text = string.decode() if isinstance(string, bytes) else string
        info = super().read_info("JobID|State|NodeList\n" + text)  # sacct's header, for submitit's parser
        # squeue forgets a job MinJobAge (300 s by default) after it ended: one it no longer lists has ended
        gone = {j for j in self._registered - self._finished if j not in info and j in self._info_dict}
        return info | {j: {**self._info_dict[j], "State": "ENDED (no longer in squeue)"} for j in gone}
