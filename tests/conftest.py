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
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402

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
    """A real `mlflow server` on 127.0.0.1 over a SQLite file; stop() and start() again on the same port."""

    def __init__(self, db, artifacts, port=None):
        self.db, self.artifacts, self.port = db, artifacts, port or free_port()
        self.uri, self.proc = f"http://127.0.0.1:{self.port}", None

    def start(self) -> "MlflowServer":
        env = {**SUBPROCESS_ENV, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                                      f"sqlite:///{self.db}", "--artifacts-destination", str(self.artifacts),
                                      "--host", "127.0.0.1", "--port", str(self.port), "-w", "1"],
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
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

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
# Both runs of the smoke study, the local one (killed during training, then rerun) and the one on the live SLURM
# cluster (tests/slurm_local.py), start together: the SLURM run spends most of its time waiting for the scheduler
# and its status polls, so the two overlap instead of adding up.
SLURM_PROFILE = ("--profile", "workflow/profiles/slurm")
# the tests poll the scheduler every second at first (the profile's 5 s suits a real cluster's queue); the rest of
# the profile is what users run
SLURM_FAST_POLL = ("--slurm-init-seconds-before-status-checks", "1")


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A live single-node SLURM cluster (skipped where one cannot be stood up: off Debian, without root)."""
    from slurm_local import LocalSlurm, why_unavailable

    reason = why_unavailable()
    if reason:
        pytest.skip(reason)
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm"), cpus=4)
    try:
        cluster.start(gpus=0)
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


@pytest.fixture(scope="session")
def smoke_runs(request, tmp_path_factory):
    """{'local': the local smoke run, 'slurm': the SLURM one or the reason it was skipped}, run at the same time."""
    slurm_run = None
    try:
        cluster = request.getfixturevalue("slurm")
    except pytest.skip.Exception as skipped:
        slurm_run = {"skipped": str(skipped)}
    if slurm_run is None:
        if cluster.gpus:
            cluster.restart(0)
        remote = project_copy(tmp_path_factory.mktemp("slurm_smoke") / "project")
        # the store of a cluster run: an MLflow server (the slurm profile refuses a SQLite file, common.smk)
        server = MlflowServer(remote.parent / "server.db", remote.parent / "artifacts").start()
        request.addfinalizer(server.stop)
        started = time.time()
        proc = subprocess.Popen([str(BIN / "snakemake"), *SLURM_PROFILE, *SLURM_FAST_POLL, "--configfile",
                                 "params/smoke.yaml"], cwd=remote, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env={**WORKFLOW_ENV, "SLURM_CONF": str(cluster.conf),
                                     "MLFLOW_TRACKING_URI": server.uri}, text=True)
    try:
        local = _local_smoke(project_copy(tmp_path_factory.mktemp("smoke") / "project"))
    except BaseException:
        if slurm_run is None:
            proc.kill()
            cluster.cancel_all()
        raise
    if slurm_run is None:
        output, _ = proc.communicate(timeout=900)
        assert proc.returncode == 0, output[-4000:]
        slurm_run = {"project": remote, "log": output, "wall_s": time.time() - started, "jobs": cluster.jobs(),
                     "store": server.uri}
    return {"local": local, "slurm": slurm_run}


@pytest.fixture(scope="session")
def smoke(smoke_runs):
    """The smoke study on a fresh SQLite store with 2 cores: killed (SIGKILL) during training, then rerun."""
    return smoke_runs["local"]
