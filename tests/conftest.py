import os

import numpy as np
import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # one intra-op thread per xdist worker: two workers x two threads on two cores ran 5x slower
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


def f64(*values):
    return torch.tensor(values, dtype=torch.float64)


# -- helpers shared by the training, fault-injection and tracking tests -------------------------------------------
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
from concurrent.futures import Future, ThreadPoolExecutor  # noqa: E402
from concurrent.futures import wait as futures_wait  # noqa: E402
from pathlib import Path  # noqa: E402

# subprocesses of tests: one intra-op thread each (2 cores are shared with the xdist workers)
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cli(*args, env=None, **kwargs) -> subprocess.Popen:
    """`python -m cldsgm ARGS` in a subprocess, stdout and stderr together."""
    return subprocess.Popen([sys.executable, "-m", "cldsgm", *args], env={**SUBPROCESS_ENV, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def run_cli(*args, env=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cldsgm", *args], env={**SUBPROCESS_ENV, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


class MlflowServer:
    """A real `mlflow server` over a SQLite file (or any backend store URI, e.g. PostgreSQL's), listening on `host`
    (127.0.0.1; a cluster's nodes reach it on the host's bridge address); stop() and start() again on the same
    port."""

    def __init__(self, db, artifacts, port=None, host="127.0.0.1", backend=None):
        self.db, self.artifacts, self.port = db, artifacts, port or free_port()
        self.backend = backend or f"sqlite:///{db}"
        self.host = host
        self.uri, self.proc = f"http://{host}:{self.port}", None

    def start(self) -> "MlflowServer":
        env = {**SUBPROCESS_ENV, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                                      self.backend, "--artifacts-destination", str(self.artifacts),
                                      "--host", self.host, "--port", str(self.port), "-w", "1"],
                                     env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                    if response.read().decode().strip() == "OK":
                        return self
            except OSError:
                if time.time() > deadline or self.proc.poll() is not None:
                    self.stop()
                    pytest.fail("mlflow server did not come up")
                time.sleep(0.3)

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(30)
        self.proc = None


class Postgres:
    """A throwaway PostgreSQL server from Debian's `postgresql`: initdb in a temporary folder, 127.0.0.1 on a free
    port, trust authentication, one database `mlflow` (MLflow's backend store for a team). As root it runs as the
    `postgres` user (the server refuses root)."""

    def __init__(self):
        self.bin = self.bindir()
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="cldsgm-pg-"))  # not under pytest's 0700 folders: another user
        self.data = self.root / "data"
        self.uri = f"postgresql://mlflow@127.0.0.1:{self.port}/mlflow"

    @staticmethod
    def bindir() -> Path | None:
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
        initdb = found[-1] if found else shutil.which("initdb")
        return Path(initdb).parent if initdb else None

    @staticmethod
    def why_unavailable() -> str | None:
        if Postgres.bindir() is None:
            return "PostgreSQL's initdb not found (Debian: apt-get install postgresql)"
        try:
            import psycopg2  # noqa: F401  (MLflow's driver for postgresql:// stores)
        except ImportError:
            return "psycopg2 is not installed (pip install -e '.[dev]')"
        if os.geteuid() == 0 and not shutil.which("runuser"):
            return "PostgreSQL refuses root and runuser is not available"
        return None

    def _run(self, *argv: str) -> None:
        user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        done = subprocess.run([*user, str(self.bin / argv[0]), *argv[1:]], capture_output=True, text=True,
                              timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed: {done.stdout[-1500:]}{done.stderr[-1500:]}")

    def start(self) -> "Postgres":
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "mlflow", "--auth=trust", "-E", "UTF8", "--no-sync")
        # fsync off: a test database, thrown away at the end
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-o", options, "-w", "start")
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "mlflow", "mlflow")
        return self

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def mlflow_server(tmp_path):
    server = MlflowServer(tmp_path / "server.db", tmp_path / "artifacts").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def diamond_data(tmp_path_factory):
    """20,000 points of the diamond mixture, prepared once per test session (per xdist worker)."""
    from cldsgm.data import prepare

    out = tmp_path_factory.mktemp("data")
    prepare("diamond", "train", out, n=20_000, seed=0)
    return out / "diamond_train.npz"


def toy_config(path, **sections):
    """A resolved toy CLD training config on `path` (40 steps, toy_mlp, CPU, no tracking); sections override."""
    from cldsgm.config import resolve_config

    config = {"seed": 0, "data": {"path": str(path)}, "sde": {"name": "cld", "params": {"numerical_eps": 1e-6}},
              "model": {"name": "toy_mlp"}, "optim": {"lr": 1e-3},
              "train": {"steps": 40, "batch_size": 128, "ema_rate": 0.99, "checkpoint_every": 10, "log_every": 1,
                        "device": "cpu"},
              "tracking": {"enabled": False}}
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    return resolve_config(config)


@pytest.fixture(scope="session")
def digits_data(tmp_path_factory):
    """scikit-learn's digits, prepared: (train path, test path)."""
    from cldsgm.data import prepare

    out = tmp_path_factory.mktemp("digits")
    prepare("digits", "train", out)
    prepare("digits", "test", out)
    return out / "digits_train.npz", out / "digits_test.npz"


@pytest.fixture(scope="session")
def digits_run(digits_data, tmp_path_factory):
    """A briefly trained ncsnpp_digits CLD run directory (weights are far from converged: for plumbing tests)."""
    from cldsgm.training import train

    run_dir = tmp_path_factory.mktemp("digits_run") / "run"
    config = toy_config(digits_data[0], model={"name": "ncsnpp_digits"}, loss={"mixed_score": True},
                        train={"steps": 4, "batch_size": 16, "checkpoint_every": 4})
    train(config, run_dir, progress=False)
    return run_dir


@pytest.fixture(scope="session")
def toy_run(diamond_data, tmp_path_factory):
    """A toy_mlp CLD run on the diamond (300 steps)."""
    from cldsgm.training import train

    run_dir = tmp_path_factory.mktemp("toy_run") / "run"
    train(toy_config(diamond_data, train={"steps": 300, "batch_size": 256, "checkpoint_every": 300,
                                          "log_every": 50}), run_dir, progress=False)
    return run_dir


# -- the workflow as a user runs it: a copy of the project, snakemake in a subprocess ------------------------------

ROOT = Path(__file__).parents[1]
BIN = Path(sys.executable).parent
WORKFLOW_ENV = {**SUBPROCESS_ENV, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true", "DVC_NO_ANALYTICS": "1",
                # system metrics every second (MLflow's default 10 s is longer than the smoke study's trainings)
                "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1", "GIT_AUTHOR_NAME": "t",
                "GIT_AUTHOR_EMAIL": "t@example.org", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org"}
WORKFLOW_ENV.pop("MLFLOW_TRACKING_URI", None)


def project_copy(where: Path) -> Path:
    """A copy of what a user clones: Snakefile, workflow/, profiles/ (the default workflow profile), params/,
    dvc.yaml."""
    where.mkdir(parents=True, exist_ok=True)
    for name in ("Snakefile", "dvc.yaml"):
        shutil.copy(ROOT / name, where / name)
    for name in ("workflow", "profiles", "params", "reports", "src"):
        shutil.copytree(ROOT / name, where / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(ROOT / ".dvcignore", where / ".dvcignore")
    return where


def run_snakemake(cwd, *args, env=None, timeout=600, check=True):
    done = subprocess.run([str(BIN / "snakemake"), *map(str, args)], cwd=cwd, env={**WORKFLOW_ENV, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)
    if check:
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return done


# -- the smoke study end to end, shared by test_workflow.py and test_slurm.py (xdist group "smoke") -----------------
# Everything that runs on the live SLURM cluster (tests/slurm_local.py) starts together with the local smoke run
# (killed during training, then rerun): the smoke study under the SLURM profile, logging to an MLflow server on
# PostgreSQL that is killed and restarted mid-study, and the two-node training scenario (tests/slurm_scenarios.py).
# The cluster jobs spend much of their time waiting for the scheduler and its status polls, so the three overlap
# instead of adding up; the tests then only read what they left.
SLURM_PROFILE = ("--profile", "workflow/profiles/slurm")
# the tests poll the scheduler every second at first (the profile's 5 s suits a real cluster's queue); the rest of
# the profile is what users run
SLURM_FAST_POLL = ("--slurm-init-seconds-before-status-checks", "1")
CLUSTER_GPUS = 2  # fake GPUs per node, declared from the start: one cluster start serves every SLURM test


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A live SLURM cluster: two nodes (network namespaces) where the machine allows them, else one (then
    `cluster.one_node` says why); skipped where none can be stood up (off Debian, without root)."""
    from slurm_local import LocalSlurm, why_no_network_namespaces, why_unavailable

    reason = why_unavailable()
    if reason:
        pytest.skip(reason)
    one_node = why_no_network_namespaces()
    # 6 CPUs per node (the machine has 2 cores): a 4-CPU training job leaves room for the smoke study's small jobs
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm"), cpus=6 if not one_node else 4, nodes=1 if one_node else 2)
    cluster.one_node = one_node
    try:
        cluster.start(gpus=CLUSTER_GPUS)
        yield cluster
    finally:
        cluster.stop()


def _local_smoke(project: Path) -> dict:
    args = [str(BIN / "snakemake"), "--cores", "2", "--configfile", "params/smoke.yaml", "--rerun-incomplete"]
    proc = subprocess.Popen(args, cwd=project, env=WORKFLOW_ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not list((project / "results" / "smoke" / "runs").glob("*/checkpoint.pt")):
        assert time.time() < deadline and proc.poll() is None, "training did not start"
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)  # Snakemake and every job it started
    proc.wait()
    killed_at = {p.parent.name: p.stat().st_mtime for p in (project / "results/smoke/runs").glob("*/checkpoint.pt")}
    run_snakemake(project, "--unlock")
    started = time.time()
    done = run_snakemake(project, *args[1:], timeout=900)
    return {"project": project, "killed_at": killed_at, "log": done.stdout + done.stderr,
            "wall_s": time.time() - started}


def _outage(server: "MlflowServer", project: Path, facts: dict) -> None:
    """Kill the tracking server once the study's first training has finished; start it again on the same port
    after two more jobs have finished without it (their runs are the ones `cldsgm track` must log later)."""
    results = project / "results" / "smoke"

    def finished() -> int:
        return len(list(results.glob("runs/*/done.json"))) + len(list(results.glob("records/**/*.json")))

    deadline = time.time() + 600
    while not list(results.glob("runs/*/done.json")):
        if time.time() > deadline or facts.get("over"):
            return
        time.sleep(0.2)
    server.stop()
    facts["killed_after"], down_since = finished(), time.time()
    while finished() < facts["killed_after"] + 2 and time.time() < down_since + 60 and not facts.get("over"):
        time.sleep(0.2)
    facts["finished_while_down"] = finished() - facts["killed_after"]
    server.start()
    facts["down_s"] = time.time() - down_since


@pytest.fixture(scope="session")
def smoke_runs(request, tmp_path_factory):
    """{'local': the local smoke run, 'slurm': the SLURM one (or the reason it was skipped), 'nodes': the two-node
    scenario's future (or the reason it was skipped)}, all run at the same time."""
    from slurm_scenarios import two_node_training

    slurm_run, scenario = None, None
    try:
        cluster = request.getfixturevalue("slurm")
    except pytest.skip.Exception as skipped:
        slurm_run = {"skipped": str(skipped)}
    if slurm_run is None:
        remote = project_copy(tmp_path_factory.mktemp("slurm_smoke") / "project")
        # the store of a cluster run: an MLflow server (the slurm profile refuses a SQLite file, common.smk) on
        # PostgreSQL where there is one, listening where the nodes reach it
        no_postgres = Postgres.why_unavailable()
        postgres = None if no_postgres else Postgres().start()
        if postgres:
            request.addfinalizer(postgres.stop)
        server = MlflowServer(remote.parent / "server.db", remote.parent / "artifacts", host=cluster.host_address,
                              backend=postgres.uri if postgres else None).start()
        request.addfinalizer(server.stop)
        outage: dict = {}
        watcher = threading.Thread(target=_outage, args=(server, remote, outage), daemon=True)
        started = time.time()
        proc = subprocess.Popen([str(BIN / "snakemake"), *SLURM_PROFILE, *SLURM_FAST_POLL, "--configfile",
                                 "params/smoke.yaml"], cwd=remote, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env={**WORKFLOW_ENV, "SLURM_CONF": str(cluster.conf),
                                     "MLFLOW_TRACKING_URI": server.uri}, text=True)
        watcher.start()
        if cluster.one_node:
            scenario = {"skipped": cluster.one_node}
        else:
            pool = ThreadPoolExecutor(1)
            scenario = pool.submit(two_node_training, cluster, tmp_path_factory.mktemp("nodes"))
            pool.shutdown(wait=False)
    try:
        local = _local_smoke(project_copy(tmp_path_factory.mktemp("smoke") / "project"))
    except BaseException:
        if slurm_run is None:
            proc.kill()
            cluster.cancel_all()
        raise
    if slurm_run is None:
        output, _ = proc.communicate(timeout=900)
        outage["over"] = True
        watcher.join(120)
        assert proc.returncode == 0, output[-4000:]
        slurm_run = {"project": remote, "log": output, "wall_s": time.time() - started, "jobs": cluster.jobs(),
                     "store": server.uri, "backend": server.backend, "no_postgres": no_postgres, "outage": outage}
        if isinstance(scenario, Future):
            futures_wait([scenario], timeout=900)  # the cluster is the later tests' once the scenario is over
    return {"local": local, "slurm": slurm_run, "nodes": scenario}


@pytest.fixture(scope="session")
def smoke(smoke_runs):
    """The smoke study on a fresh SQLite store with 2 cores: killed (SIGKILL) during training, then rerun."""
    return smoke_runs["local"]
