"""A throwaway single-node SLURM cluster on 127.0.0.1 for the tests (Debian's slurm-wlm, as root, no systemd).

`LocalSlurm(state_dir).start(gpus=0)` installs `slurmctld slurmd slurm-client munge` with apt when they are absent,
writes `slurm.conf` (and `gres.conf` for fake GPUs) under `state_dir`, links it to `/etc/slurm/slurm.conf` (the
Snakemake job-step plugin strips `SLURM_CONF` before `srun`, so only the compiled-in path works inside jobs), starts a
private munged, slurmctld and slurmd, and waits until the node is idle and an `srun true` probe passes.
`stop()` stops every daemon it started, by PID (TERM, then KILL), and removes the link. Facts and pitfalls:
docs/cluster.md.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
BINARIES = ("slurmctld", "slurmd", "sinfo", "sbatch", "munged")
ETC_CONF = Path("/etc/slurm/slurm.conf")


def why_unavailable() -> str | None:
    """A reason to skip the SLURM tests on this machine, or None where a cluster can be stood up."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "a local SLURM cluster needs root (it starts slurmctld/slurmd and links /etc/slurm/slurm.conf)"
    if not Path("/etc/debian_version").exists() or not shutil.which("apt-get"):
        return "a local SLURM cluster needs Debian's slurm-wlm packages (apt-get not found)"
    if ETC_CONF.exists() and not ETC_CONF.is_symlink():
        return f"{ETC_CONF} belongs to a real SLURM installation; the tests do not touch it"
    return None


def install_packages(log: Path) -> None:
    """apt-get install the SLURM daemons and munge if any binary is missing (update only if the first try fails)."""
    if all(shutil.which(b) for b in BINARIES):
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
    with open(log, "w") as out:
        if subprocess.run(install, stdout=out, stderr=subprocess.STDOUT, env=env, timeout=600).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], stdout=out, stderr=subprocess.STDOUT, env=env, timeout=600)
            subprocess.run(install, stdout=out, stderr=subprocess.STDOUT, env=env, timeout=600, check=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    # a zombie still answers kill(0); its state letter says it is gone
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


class LocalSlurm:
    """One node (this host as 127.0.0.1), one partition `debug`, accounting off, optional fake GPUs."""

    def __init__(self, state: Path, cpus: int = 4, port: int = 6817):
        self.state = Path(state).resolve()
        self.cpus, self.port = cpus, port
        self.node = socket.gethostname().split(".")[0]
        self.conf = self.state / "slurm.conf"
        self.pids: dict[str, int] = {}
        self.gpus = 0
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    # -- configuration ---------------------------------------------------------------------------------------------
    def _node_memory_mb(self) -> int:
        probe = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, timeout=30).stdout
        real = int(probe.split("RealMemory=")[1].split()[0])
        return real * 9 // 10  # slurmd refuses a node that advertises more than it measures

    def write_config(self, gpus: int) -> None:
        """slurm.conf for one node; `gpus` fake GPUs are empty files declared as gres (no CUDA behind them)."""
        s = self.state
        lines = [
            "ClusterName=local", f"SlurmctldHost={self.node}(127.0.0.1)", f"SlurmctldPort={self.port}",
            f"SlurmdPort={self.port + 1}", "SlurmUser=root", "SlurmdUser=root", "AuthType=auth/munge",
            "CredType=cred/munge", f"AuthInfo=socket={s / 'munge.sock'}", f"StateSaveLocation={s / 'ctld'}",
            f"SlurmdSpoolDir={s / 'd'}", f"SlurmctldPidFile={s / 'slurmctld.pid'}",
            f"SlurmdPidFile={s / 'slurmd.pid'}", f"SlurmctldLogFile={s / 'slurmctld.log'}",
            f"SlurmdLogFile={s / 'slurmd.log'}", "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
            # accounting off: `sacct` fails, so the profile's status command must be squeue (MinJobAge keeps
            # finished jobs visible to squeue for an hour: the tests list every job of a study run that takes
            # minutes, SLURM's default of 300 s would forget the first ones)
            "AccountingStorageType=accounting_storage/none", "JobAcctGatherType=jobacct_gather/none",
            "JobCompType=jobcomp/none", "MpiDefault=none", "SelectType=select/cons_tres",
            # without a default memory per CPU, a job with no --mem takes the whole node
            "SelectTypeParameters=CR_Core_Memory", "DefMemPerCPU=256", "SchedulerType=sched/backfill",
            # refuse impossible requests at submission instead of leaving them PENDING forever
            "EnforcePartLimits=ALL", "ReturnToService=2", "MinJobAge=3600",
            # advertise more CPUs than the machine has, so that 3 small jobs run at once on 2 cores
            "SlurmdParameters=config_overrides",
        ]
        gres = ""
        if gpus:
            devices = []
            for k in range(gpus):
                device = s / f"fake-gpu{k}"
                device.touch()
                devices.append(str(device))
            (s / "gres.conf").write_text(
                "".join(f"NodeName={self.node} Name=gpu File={d}\n" for d in devices))
            lines.append("GresTypes=gpu")
            gres = f" Gres=gpu:{gpus}"
        else:
            (s / "gres.conf").unlink(missing_ok=True)
        lines.append(f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} "
                     f"RealMemory={self._node_memory_mb()}{gres} State=UNKNOWN")
        lines.append("PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP")
        self.conf.write_text("\n".join(lines) + "\n")

    # -- daemons ---------------------------------------------------------------------------------------------------
    def _start(self, name: str, argv: list[str], pidfile: Path) -> None:
        pidfile.unlink(missing_ok=True)
        with open(self.state / f"{name}.out", "w") as out:
            # the daemons fork into the background and write their pid file
            subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                           timeout=60, check=True)
        deadline = time.time() + 10
        while time.time() < deadline:
            if pidfile.exists() and pidfile.read_text().strip():
                pid = int(pidfile.read_text())
                if _alive(pid):
                    self.pids[name] = pid
                    return
            time.sleep(0.05)
        raise RuntimeError(f"{name} did not start: {self._tail(name)}")

    def _tail(self, name: str) -> str:
        text = ""
        for suffix in (".out", ".log"):
            path = self.state / f"{name}{suffix}"
            if path.exists():
                text += path.read_text()[-1500:]
        return text

    def _wait_ports_free(self, timeout: float = 30) -> None:
        """A restarted slurmctld/slurmd cannot bind while the old one's sockets linger; wait for both ports."""
        deadline = time.time() + timeout
        for port in (self.port, self.port + 1):
            while True:
                with socket.socket() as probe:
                    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    try:
                        probe.bind(("0.0.0.0", port))
                        break
                    except OSError:
                        if time.time() > deadline:
                            raise RuntimeError(f"port {port} still in use after {timeout} s: another SLURM "
                                               "daemon runs on this machine") from None
                time.sleep(0.2)

    def start(self, gpus: int = 0) -> None:
        """Bring the cluster up (idempotent for munged); `gpus` > 0 declares that many fake GPUs on the node."""
        self.state.mkdir(parents=True, exist_ok=True)
        install_packages(self.state / "apt.log")
        (self.state / "ctld").mkdir(exist_ok=True)
        (self.state / "d").mkdir(exist_ok=True)
        self.gpus = gpus
        self.write_config(gpus)
        ETC_CONF.parent.mkdir(parents=True, exist_ok=True)
        if ETC_CONF.is_symlink():
            ETC_CONF.unlink()
        ETC_CONF.symlink_to(self.conf)
        sock = self.state / "munge.sock"
        if len(str(sock)) >= 100:  # sun_path limit of a unix socket
            raise RuntimeError(f"state dir too deep for a unix socket: {sock}")
        if "munged" not in self.pids:
            key = self.state / "munge.key"
            if not key.exists():
                key.write_bytes(os.urandom(1024))
                key.chmod(0o400)
            # --force: a private munged as root under a 0700 parent (pytest's tmp dirs)
            self._start("munged", ["munged", "--force", f"--socket={sock}", f"--key-file={key}",
                                   f"--pid-file={self.state / 'munged.pid'}", f"--log-file={self.state / 'munged.log'}",
                                   f"--seed-file={self.state / 'munged.seed'}"], self.state / "munged.pid")
        self._wait_ports_free()
        # -c: a clean controller state, so that a node drained by an earlier config cannot stay drained
        self._start("slurmctld", ["slurmctld", "-c", "-f", str(self.conf)], self.state / "slurmctld.pid")
        self._start("slurmd", ["slurmd", "-f", str(self.conf)], self.state / "slurmd.pid")
        self._wait_idle()

    def _wait_idle(self, timeout: float = 60) -> None:
        deadline, state = time.time() + timeout, ""
        while time.time() < deadline:
            for name in ("slurmctld", "slurmd"):
                if not _alive(self.pids[name]):
                    raise RuntimeError(f"{name} died: {self._tail(name)}")
            try:  # sinfo blocks when slurmctld is gone: bound every call
                state = subprocess.run(["sinfo", "-h", "-N", "-n", self.node, "-o", "%t"], capture_output=True,
                                       text=True, env=self.env, timeout=5).stdout.strip()
            except subprocess.TimeoutExpired:
                state = "sinfo timed out"
            if state in ("idle", "mix", "alloc"):
                break
            time.sleep(0.2)
        else:
            raise RuntimeError(f"node {self.node} not idle after {timeout} s (state {state!r}): "
                               f"{self._tail('slurmctld')}{self._tail('slurmd')}")
        probe = subprocess.run(["srun", "-N1", "-n1", "-t", "1", "-J", "probe", "true"], capture_output=True,
                               text=True, env=self.env, timeout=60)
        if probe.returncode != 0:
            raise RuntimeError(f"srun probe failed: {probe.stderr}")

    def _stop(self, *names: str) -> None:
        pids = {n: self.pids.pop(n) for n in names if n in self.pids}
        for pid in pids.values():
            if _alive(pid):
                os.kill(pid, signal.SIGTERM)
        deadline = time.time() + 10
        while time.time() < deadline and any(_alive(p) for p in pids.values()):
            time.sleep(0.05)
        for pid in pids.values():
            if _alive(pid):  # slurmd can ignore TERM for long once slurmctld is gone
                os.kill(pid, signal.SIGKILL)

    def restart(self, gpus: int) -> None:
        """The same cluster with another node configuration (e.g. with or without fake GPUs)."""
        self.cancel_all()
        self._stop("slurmd", "slurmctld")
        self.start(gpus)

    def cancel_all(self) -> None:
        if "slurmctld" in self.pids and _alive(self.pids["slurmctld"]):
            subprocess.run(["scancel", "--full", "--partition=debug"], env=self.env, capture_output=True, timeout=30)

    def stop(self) -> None:
        """Cancel every job, stop the daemons this object started (by PID) and remove the config link."""
        self.cancel_all()
        self._stop("slurmd", "slurmctld")
        self._stop("munged")
        if ETC_CONF.is_symlink() and Path(os.readlink(ETC_CONF)) == self.conf:
            ETC_CONF.unlink()

    # -- queries ---------------------------------------------------------------------------------------------------
    def jobs(self) -> dict[str, tuple[str, str]]:
        """Every job the controller still knows (MinJobAge = 3600 s): id -> (state, Snakemake rule or "").

        The SLURM executor comments each job `rule_<name>` or `rule_<name>_wildcards_<values>`.
        """
        out = subprocess.run(["squeue", "-t", "all", "-h", "-o", "%i|%T|%k"], capture_output=True, text=True,
                             env=self.env, timeout=30, check=True).stdout
        jobs = {}
        for line in out.splitlines():
            jobid, state, comment = line.split("|", 2)
            rule = re.match(r"rule_(.+?)(_wildcards_.*)?$", comment)
            jobs[jobid] = (state, rule.group(1) if rule else "")
        return jobs

    def job_field(self, jobid: str, field: str) -> str:
        """One `Key=Value` field of `scontrol show job` (e.g. TresPerJob=gres:gpu:2 for `sbatch --gpus=2`)."""
        out = subprocess.run(["scontrol", "show", "job", jobid], capture_output=True, text=True, env=self.env,
                             timeout=30, check=True).stdout
        match = re.search(rf"\b{field}=(\S*)", out)
        return match.group(1) if match else ""
