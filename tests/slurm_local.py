"""A throwaway SLURM cluster on this machine for the tests (Debian's slurm-wlm, as root, no systemd).

One node is this host on 127.0.0.1. Two nodes (`LocalSlurm(state, nodes=2)`) are two network namespaces joined by a
bridge (`Network`): each node has its own address, hostname (a UTS namespace) and /etc/hosts (a mount namespace
with a bind mount), and one slurmd runs in each; slurmctld and munged stay on the host, whose bridge address the
nodes reach (as compute nodes reach a login node). The file system is shared, as on a cluster.

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
import shlex
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


def why_no_network_namespaces() -> str | None:
    """A reason two nodes cannot be made here (no `ip`/`unshare`, or no right to make a namespace), or None."""
    for tool in ("ip", "unshare", "nsenter"):
        if not shutil.which(tool):
            return f"two SLURM nodes need network namespaces: `{tool}` not found (Debian: iproute2, util-linux)"
    probe = "cldsgm-probe"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=30)
    if made.returncode != 0:
        return f"two SLURM nodes need network namespaces: `ip netns add` failed ({made.stderr.strip()})"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=30)
    return None


class Network:
    """A bridge on the host (the controller's address .1) and one network namespace per node (.11, .12, ...).

    Each namespace gets a veth pair into the bridge and a default route through the host, so a node reaches every
    address of the host (srun's and the MLflow server's) and every other node.
    """

    PREFIX = "10.213.7"
    BRIDGE = "cldsgm-br0"

    def __init__(self, nodes: list[str]):
        self.nodes = nodes
        self.host = f"{self.PREFIX}.1"
        self.address = {node: f"{self.PREFIX}.{11 + k}" for k, node in enumerate(nodes)}

    @staticmethod
    def namespace(node: str) -> str:
        return f"cldsgm-{node}"

    @staticmethod
    def _ip(*args: str, check: bool = True) -> None:
        done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
        if check and done.returncode != 0:
            raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")

    def up(self) -> None:
        self.down()  # what a killed earlier session left
        self._ip("link", "add", self.BRIDGE, "type", "bridge")
        self._ip("addr", "add", f"{self.host}/24", "dev", self.BRIDGE)
        self._ip("link", "set", self.BRIDGE, "up")
        for k, node in enumerate(self.nodes):
            ns, veth = self.namespace(node), f"cldsgm-v{k}"
            self._ip("netns", "add", ns)
            self._ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            self._ip("link", "set", veth, "master", self.BRIDGE, "up")
            self._ip("-n", ns, "addr", "add", f"{self.address[node]}/24", "dev", "eth0")
            self._ip("-n", ns, "link", "set", "eth0", "up")
            self._ip("-n", ns, "link", "set", "lo", "up")
            self._ip("-n", ns, "route", "add", "default", "via", self.host)

    def down(self) -> None:
        for node in self.nodes:  # deleting a namespace deletes its end of the veth pair, and so the pair
            self._ip("netns", "del", self.namespace(node), check=False)
        self._ip("link", "del", self.BRIDGE, check=False)

    def hosts_file(self, path: Path, controller: str) -> Path:
        """/etc/hosts as every node sees it: the controller (host) and each node by name."""
        lines = ["127.0.0.1 localhost", f"{self.host} {controller}",
                 *(f"{address} {node}" for node, address in self.address.items())]
        path.write_text("\n".join(lines) + "\n")
        return path

    def run_in(self, node: str, hosts: Path, argv: list[str]) -> list[str]:
        """argv run as on `node`: its network namespace, its hostname, its /etc/hosts."""
        inner = f"hostname {node} && mount --bind {shlex.quote(str(hosts))} /etc/hosts && exec {shlex.join(argv)}"
        # nsenter, not `ip netns exec`: that one mounts a fresh /sys, without the cgroup tree slurmd needs
        return ["nsenter", f"--net=/var/run/netns/{self.namespace(node)}", "unshare", "--uts", "--mount", "sh", "-c",
                inner]


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
    """One partition `debug` of one node (this host as 127.0.0.1) or two (network namespaces, `Network`), accounting
    off, optional fake GPUs on every node."""

    def __init__(self, state: Path, cpus: int = 4, port: int = 6817, nodes: int = 1):
        self.state = Path(state).resolve()
        self.cpus, self.port = cpus, port
        self.host = socket.gethostname().split(".")[0]  # where slurmctld runs (and Snakemake, sbatch, squeue)
        self.network = Network([f"node{k + 1}" for k in range(nodes)]) if nodes > 1 else None
        self.nodes = self.network.nodes if self.network else [self.host]
        # the controller's address as the nodes reach it: where a server for the jobs (MLflow) must listen
        self.host_address = self.network.host if self.network else "127.0.0.1"
        self.conf = self.state / "slurm.conf"
        self.pids: dict[str, int] = {}
        self.network_up = False
        self.gpus = 0
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    def node_address(self, node: str) -> str:
        return self.network.address[node] if self.network else "127.0.0.1"

    # -- configuration ---------------------------------------------------------------------------------------------
    def _node_memory_mb(self) -> int:
        probe = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, timeout=30).stdout
        real = int(probe.split("RealMemory=")[1].split()[0])
        # under the machine's memory, which each node advertises whole (config_overrides): the profile's 8 GB per
        # training would otherwise run one training per node at a time
        return real * 9 // 10

    def write_config(self, gpus: int) -> None:
        """slurm.conf for the nodes; `gpus` fake GPUs per node are empty files declared as gres (no CUDA behind
        them)."""
        s = self.state
        lines = [
            "ClusterName=local", f"SlurmctldHost={self.host}({self.host_address})", f"SlurmctldPort={self.port}",
            f"SlurmdPort={self.port + 1}", "SlurmUser=root", "SlurmdUser=root", "AuthType=auth/munge",
            "CredType=cred/munge", f"AuthInfo=socket={s / 'munge.sock'}", f"StateSaveLocation={s / 'ctld'}",
            # %n: the node's name, one spool, pid file and log per slurmd
            f"SlurmdSpoolDir={s / 'd' / '%n'}", f"SlurmctldPidFile={s / 'slurmctld.pid'}",
            f"SlurmdPidFile={s / 'slurmd-%n.pid'}", f"SlurmctldLogFile={s / 'slurmctld.log'}",
            f"SlurmdLogFile={s / 'slurmd-%n.log'}", "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
            # accounting off: `sacct` fails, so the profile's status command must be squeue (MinJobAge keeps
            # finished jobs visible to squeue for an hour: the tests list every job of a study run that takes
            # minutes, SLURM's default of 300 s would forget the first ones)
            "AccountingStorageType=accounting_storage/none", "JobAcctGatherType=jobacct_gather/none",
            "JobCompType=jobcomp/none", "MpiDefault=none", "SelectType=select/cons_tres",
            # CR_LLN: each job on the least loaded node, so that shard jobs spread over two nodes; without a
            # default memory per CPU, a job with no --mem takes the whole node
            "SelectTypeParameters=CR_Core_Memory,CR_LLN", "DefMemPerCPU=256", "SchedulerType=sched/backfill",
            # refuse impossible requests at submission instead of leaving them PENDING forever
            "EnforcePartLimits=ALL", "ReturnToService=2", "MinJobAge=3600",
            # advertise more CPUs than the machine has, so that 3 small jobs run at once on 2 cores
            "SlurmdParameters=config_overrides",
        ]
        gres = ""
        if gpus:
            conf = []
            for node in self.nodes:
                for k in range(gpus):
                    device = s / f"fake-gpu-{node}-{k}"
                    device.touch()
                    conf.append(f"NodeName={node} Name=gpu File={device}\n")
            (s / "gres.conf").write_text("".join(conf))
            lines.append("GresTypes=gpu")
            gres = f" Gres=gpu:{gpus}"
        else:
            (s / "gres.conf").unlink(missing_ok=True)
        memory = self._node_memory_mb()
        for node in self.nodes:
            lines.append(f"NodeName={node} NodeAddr={self.node_address(node)} CPUs={self.cpus} "
                         f"RealMemory={memory}{gres} State=UNKNOWN")
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
        for node in self.nodes:
            (self.state / "d" / node).mkdir(parents=True, exist_ok=True)
        if self.network and not self.network_up:
            self.network.up()  # the namespaces stay until stop(), across restarts
            self.network_up = True
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
        hosts = self.network.hosts_file(self.state / "hosts", self.host) if self.network else None
        for node in self.nodes:
            argv = ["slurmd", "-f", str(self.conf)]
            if self.network:
                argv = self.network.run_in(node, hosts, argv)
            self._start(f"slurmd-{node}", argv, self.state / f"slurmd-{node}.pid")
        self._wait_idle()

    def _daemons(self) -> list[str]:
        return ["slurmctld", *(f"slurmd-{node}" for node in self.nodes)]

    def _wait_idle(self, timeout: float = 60) -> None:
        deadline, states = time.time() + timeout, {}
        while time.time() < deadline:
            for name in self._daemons():
                if not _alive(self.pids[name]):
                    raise RuntimeError(f"{name} died: {self._tail(name)}")
            try:  # sinfo blocks when slurmctld is gone: bound every call
                out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True, text=True,
                                     env=self.env, timeout=5).stdout
                states = dict(line.split() for line in out.splitlines() if line.strip())
            except subprocess.TimeoutExpired:
                states = {"sinfo": "timed out"}
            if all(states.get(node) in ("idle", "mix", "alloc") for node in self.nodes):
                break
            time.sleep(0.2)
        else:
            raise RuntimeError(f"nodes not idle after {timeout} s (states {states}): "
                               f"{''.join(self._tail(name) for name in self._daemons())}")
        n = str(len(self.nodes))  # one task on every node: each slurmd runs a step
        probe = subprocess.run(["srun", "-N", n, "-n", n, "-t", "1", "-J", "probe", "true"], capture_output=True,
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
        self._stop(*self._daemons())
        self.start(gpus)

    def cancel_all(self) -> None:
        if "slurmctld" in self.pids and _alive(self.pids["slurmctld"]):
            subprocess.run(["scancel", "--full", "--partition=debug"], env=self.env, capture_output=True, timeout=30)

    def stop(self) -> None:
        """Cancel every job, stop the daemons this object started (by PID) and remove the config link."""
        self.cancel_all()
        self._stop(*self._daemons())
        self._stop("munged")
        if self.network_up:
            self.network.down()
            self.network_up = False
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
