"""A single-node Slurm cluster on 127.0.0.1 from Debian's packages (slurmctld, slurmd, munge), for the
tests of ``reproduce --launcher slurm`` against a real scheduler.

Everything lives in one folder (configuration, state, spool, logs, munge socket); the daemons run as
this user on ports of their own, so they never touch a cluster the machine may belong to. The node
declares this machine's CPUs and no GPU: a CPU partition. ``nox -s slurm`` installs the packages and
runs the tests that use it (``tests/integration/test_slurm_cluster.py``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo")


def missing() -> list[str]:
    """The programs this needs that are not on PATH (or in /usr/sbin)."""
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    return [name for name in DAEMONS if shutil.which(name, path=path) is None]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Cluster:
    """``with Cluster(folder) as cluster:`` starts munged, slurmctld and slurmd, waits until the node is
    idle, and sets ``SLURM_CONF`` in this process (and so in every child) until it stops them."""

    def __init__(self, folder: Path, cpus: int | None = None, memory_mb: int = 4000):
        self.folder = Path(folder)
        self.cpus = cpus or os.cpu_count() or 1
        self.memory_mb = memory_mb
        self.conf = self.folder / "slurm.conf"
        self.node = socket.gethostname()
        self._old_conf = None

    def _write_conf(self) -> None:
        f = self.folder
        for sub in ("state", "spool", "log", "munge"):
            (f / sub).mkdir(parents=True, exist_ok=True)
        self.munge_socket = f / "munge" / "munge.socket"
        self.conf.write_text("\n".join([
            "ClusterName=acdctest",
            f"SlurmctldHost={self.node}(127.0.0.1)",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            "SlurmUser=root" if os.geteuid() == 0 else f"SlurmUser={os.environ.get('USER', 'root')}",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            # cred_expire: also how long a requeued job waits before it starts again (default 120 s)
            f"AuthInfo=socket={self.munge_socket},cred_expire=10",
            f"StateSaveLocation={f / 'state'}",
            f"SlurmdSpoolDir={f / 'spool'}",
            f"SlurmctldPidFile={f / 'slurmctld.pid'}",
            f"SlurmdPidFile={f / 'slurmd.pid'}",
            f"SlurmctldLogFile={f / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={f / 'log' / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SchedulerType=sched/backfill",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "ReturnToService=2",
            "MpiDefault=none",
            "JobCompType=jobcomp/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "SwitchType=switch/none",
            "KillWait=2",  # seconds from SIGTERM to SIGKILL (submitit ignores SIGTERM)
            f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb} State=UNKNOWN",
            f"PartitionName=cpu Nodes={self.node} Default=YES MaxTime=INFINITE State=UP",
            "",
        ]))

    def _start(self, *command: str) -> None:
        started = subprocess.run(list(command), capture_output=True, text=True, env=self.env)
        if started.returncode != 0:
            raise RuntimeError(f"{command[0]} did not start: {started.stderr.strip()} (logs in {self.folder / 'log'})")

    def __enter__(self) -> "Cluster":
        self._write_conf()
        self.env = dict(os.environ, SLURM_CONF=str(self.conf), PATH=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
        m = self.folder / "munge"
        self._start("munged", "--force", f"--socket={self.munge_socket}", f"--pid-file={m / 'munged.pid'}",
                    f"--log-file={self.folder / 'log' / 'munged.log'}", f"--seed-file={m / 'seed'}")
        self._start("slurmctld", "-f", str(self.conf))
        self._start("slurmd", "-f", str(self.conf))
        self._old_conf = os.environ.get("SLURM_CONF")
        os.environ["SLURM_CONF"] = str(self.conf)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            state = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env=self.env).stdout
            if state.strip() == "idle":
                return self
            time.sleep(0.5)
        self.__exit__(None, None, None)
        raise RuntimeError(f"the Slurm node never became idle (logs in {self.folder / 'log'})")

    def __exit__(self, *exc) -> None:
        subprocess.run(["scancel", "--full", "-u", os.environ.get("USER", "root")], capture_output=True, env=self.env)
        for pid_file in ("slurmd.pid", "slurmctld.pid", "munge/munged.pid"):
            pid = self.folder / pid_file
            if pid.exists():
                try:
                    os.kill(int(pid.read_text().split()[0]), 15)
                except (ProcessLookupError, ValueError):
                    pass
        if self._old_conf is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = self._old_conf

    def run(self, *command: str) -> str:
        """A Slurm command's output (squeue, scontrol, ...) against this cluster."""
        return subprocess.run(list(command), capture_output=True, text=True, env=self.env, check=True).stdout
