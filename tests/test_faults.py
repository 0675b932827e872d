"""Fault injection: kills mid-training and mid-write, a tracking store that is down or dies, concurrent first runs.

Each fault is real: SIGKILL of a `python -m cldsgm train` process, a real `mlflow server` on 127.0.0.1 started and
killed by the test, two processes started together on a fresh SQLite store. The workflow tests extend this module.
"""

import signal
import time

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from cldsgm.tracking import TRACKING_FILE
from cldsgm.training import load_checkpoint

from conftest import MlflowServer, cli, free_port, run_cli, toy_config

pytestmark = [pytest.mark.slow, pytest.mark.e2e]  # processes killed and restarted, MLflow servers started and stopped


def _config_file(tmp_path, config, name="config.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return str(path)


def _wait_for(predicate, timeout=120.0, what="condition"):
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def _same_run(a, b):
    a, b = load_checkpoint(a / "checkpoint.pt"), load_checkpoint(b / "checkpoint.pt")
    assert a["step"] == b["step"] and a["history"] == b["history"]
    for key in ("model", "ema"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()


def _loss_csv_steps(run_dir):
    return [int(line.split(",")[0]) for line in (run_dir / "loss.csv").read_text().splitlines()[1:]]


def test_sigkill_during_training_then_resume_equals_uninterrupted_run(diamond_data, tmp_path):
    path = _config_file(tmp_path, toy_config(diamond_data, train={"steps": 1200, "checkpoint_every": 200,
                                                                  "log_every": 50}))
    killed = cli("train", "--config", path, "--run-dir", str(tmp_path / "killed"), "--no-progress")
    _wait_for((tmp_path / "killed" / "checkpoint.pt").exists, what="the first checkpoint")
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    stopped_at = load_checkpoint(tmp_path / "killed" / "checkpoint.pt")["step"]
    assert 0 < stopped_at < 1200
    for run in ("killed", "straight"):
        done = run_cli("train", "--config", path, "--run-dir", str(tmp_path / run), "--no-progress")
        assert done.returncode == 0, done.stdout + done.stderr
    _same_run(tmp_path / "killed", tmp_path / "straight")


# Inside the child: torch.save of the 2nd checkpoint writes its temporary file completely, announces it, then
# hangs before the rename, as a process killed in the middle of a 1 GB write would leave things.
_HANG_IN_SECOND_SAVE = """
import pathlib, sys, time, torch
import cldsgm.training.checkpoint as ck
real_save, calls = torch.save, []
def save(obj, f, *a, **k):
    real_save(obj, f, *a, **k)
    calls.append(f)
    if len(calls) == 2:
        pathlib.Path(sys.argv[1]).write_text(str(f))
        time.sleep(600)
ck.torch.save = save
from cldsgm.cli import main
main(sys.argv[2:])
"""


def test_sigkill_during_a_checkpoint_write_then_resume_equals_uninterrupted_run(diamond_data, tmp_path):
    import subprocess
    import sys

    from conftest import SUBPROCESS_ENV

    path = _config_file(tmp_path, toy_config(diamond_data, train={"steps": 60, "checkpoint_every": 20,
                                                                  "log_every": 5}))
    marker, run_dir = tmp_path / "writing", tmp_path / "killed"
    child = subprocess.Popen([sys.executable, "-c", _HANG_IN_SECOND_SAVE, str(marker), "train", "--config", path,
                              "--run-dir", str(run_dir), "--no-progress"], env=SUBPROCESS_ENV,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(marker.exists, what="the second checkpoint write")
    child.send_signal(signal.SIGKILL)
    child.wait()
    stale = list(run_dir.glob(".checkpoint.pt.*.tmp"))
    assert len(stale) == 1 and stale[0].stat().st_size > 0, "the kill should leave the half-renamed temporary"
    assert load_checkpoint(run_dir / "checkpoint.pt")["step"] == 20  # the previous checkpoint is whole
    for run in ("killed", "straight"):
        done = run_cli("train", "--config", path, "--run-dir", str(tmp_path / run), "--no-progress")
        assert done.returncode == 0, done.stdout + done.stderr
    assert not list(run_dir.glob(".*.tmp"))
    _same_run(run_dir, tmp_path / "straight")


def test_unreachable_store_warns_once_and_training_finishes(diamond_data, tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    config = toy_config(diamond_data, train={"steps": 30, "log_every": 5},
                        tracking={"enabled": True, "experiment": "down"})
    path = _config_file(tmp_path, config)
    started = time.monotonic()
    done = run_cli("train", "--config", path, "--run-dir", str(tmp_path / "run"), "--no-progress",
                   env={"MLFLOW_TRACKING_URI": uri}, timeout=120)
    wall = time.monotonic() - started
    assert done.returncode == 0, done.stdout + done.stderr
    assert "trained 30 steps" in done.stdout
    assert done.stderr.count(f"warning: MLflow tracking to {uri} failed") == 1
    assert "--no-tracking" in done.stderr and f"cldsgm track --run-dir {tmp_path / 'run'}" in done.stderr
    assert "Traceback" not in done.stderr
    assert wall < 60, f"an unreachable store held training for {wall:.0f} s"
    assert _loss_csv_steps(tmp_path / "run") == [5, 10, 15, 20, 25, 30]
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == 30

    server = MlflowServer(tmp_path / "later.db", tmp_path / "artifacts").start()
    try:  # the store is back: `cldsgm track` logs the records on disk
        relog = run_cli("track", "--run-dir", str(tmp_path / "run"), env={"MLFLOW_TRACKING_URI": server.uri})
        assert relog.returncode == 0, relog.stdout + relog.stderr
        assert "6 steps logged" in relog.stdout
        client = MlflowClient(server.uri)
        runs = client.search_runs([client.get_experiment_by_name("down").experiment_id])
        assert len(runs) == 1 and runs[0].info.status == "FINISHED"
        history = load_checkpoint(tmp_path / "run" / "checkpoint.pt")["history"]
        stored = sorted((m.step, m.value) for m in client.get_metric_history(runs[0].info.run_id, "loss"))
        assert stored == [(h["step"], h["loss"]) for h in history]
        assert runs[0].data.params["optim.lr"] == "0.001"
    finally:
        server.stop()


def test_store_killed_mid_run_then_relogged_into_the_same_run(diamond_data, tmp_path):
    server = MlflowServer(tmp_path / "store.db", tmp_path / "artifacts").start()
    env = {"MLFLOW_TRACKING_URI": server.uri}
    config = toy_config(diamond_data, train={"steps": 3000, "checkpoint_every": 500, "log_every": 10},
                        tracking={"enabled": True, "experiment": "dies"})
    path = _config_file(tmp_path, config)
    run_dir = tmp_path / "run"
    try:
        proc = cli("train", "--config", path, "--run-dir", str(run_dir), "--no-progress", env=env)
        client = MlflowClient(server.uri)

        def some_metrics():
            runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
            return bool(runs) and len(client.get_metric_history(runs[0].info.run_id, "loss")) >= 3

        _wait_for(some_metrics, what="the first metrics in the store")
        server.stop()
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out
        assert out.count("warning: MLflow tracking to") == 1 and "Traceback" not in out
        assert _loss_csv_steps(run_dir)[-1] == 3000
        server.start()  # the same store on the same port: the run recorded in tracking.json is found again
        relog = run_cli("track", "--run-dir", str(run_dir), env=env)
        assert relog.returncode == 0, relog.stdout + relog.stderr
        client = MlflowClient(server.uri)
        runs = client.search_runs([client.get_experiment_by_name("dies").experiment_id])
        assert len(runs) == 1 and runs[0].info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, "loss")]
        assert sorted(steps) == _loss_csv_steps(run_dir)  # every step once: nothing missing, nothing twice
        again = run_cli("track", "--run-dir", str(run_dir), env=env)
        assert "0 steps logged" in again.stdout
    finally:
        server.stop()


def test_killed_run_is_marked_then_continued_in_the_same_run(diamond_data, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = toy_config(diamond_data, train={"steps": 1500, "checkpoint_every": 300, "log_every": 20},
                        tracking={"enabled": True, "experiment": "kill"})
    path = _config_file(tmp_path, config)
    run_dir = tmp_path / "run"
    proc = cli("train", "--config", path, "--run-dir", str(run_dir), "--no-progress", env={"MLFLOW_TRACKING_URI": uri})
    _wait_for((run_dir / "checkpoint.pt").exists, what="the first checkpoint")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("kill").experiment_id
    (run,) = client.search_runs([exp])
    assert run.info.status == "RUNNING"  # its process is gone; only the next start can tell
    done = run_cli("train", "--config", path, "--run-dir", str(run_dir), "--no-progress",
                   env={"MLFLOW_TRACKING_URI": uri})
    assert done.returncode == 0, done.stderr
    runs = client.search_runs([exp])
    assert [r.info.run_id for r in runs] == [run.info.run_id]  # continued, not a second run of the same name
    assert runs[0].info.status == "FINISHED" and runs[0].data.tags["cldsgm.resumed"] == "true"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss")]
    assert sorted(steps) == list(range(20, 1501, 20))  # steps redone after the kill are not logged twice
    artifacts = tmp_path / "mlruns"  # beside mlflow.db, not in the working directory
    assert list(artifacts.rglob("loss.csv"))


def test_failed_run_is_failed_not_finished(diamond_data, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = toy_config(diamond_data, optim={"lr": 1e30}, train={"steps": 20},
                        tracking={"enabled": True, "experiment": "nan"})
    done = run_cli("train", "--config", _config_file(tmp_path, config), "--run-dir", str(tmp_path / "run"),
                   "--no-progress", env={"MLFLOW_TRACKING_URI": uri})
    assert done.returncode == 1 and "non-finite loss" in done.stderr
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("nan").experiment_id])
    assert run.info.status == "FAILED"


@pytest.mark.parametrize("how", ["train", "track-init"])
def test_two_concurrent_first_runs_on_a_fresh_store_both_succeed(diamond_data, tmp_path, how):
    uri = f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}"
    env = {"MLFLOW_TRACKING_URI": uri}
    config = toy_config(diamond_data, train={"steps": 5}, tracking={"enabled": True, "experiment": "race"})
    path = _config_file(tmp_path, config)
    if how == "track-init":
        procs = [cli("track", "--init", "--experiment", "race", env=env) for _ in range(2)]
        outs = [p.communicate(timeout=120)[0] for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outs
    procs = [cli("train", "--config", path, "--run-dir", str(tmp_path / f"run{i}"), "--no-progress", env=env)
             for i in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert not any("warning" in out for out in outs), outs
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("race").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["run0", "run1"]
    assert all(r.info.status == "FINISHED" for r in runs)
    for i in range(2):
        assert (tmp_path / f"run{i}" / TRACKING_FILE).is_file()


def test_track_refuses_a_study_file_that_is_not_a_study_and_logs_nothing(tmp_path):
    """`cldsgm track --parent-run P --study F` with F not a valid study: one line naming the file, the parent run
    left as it was (RUNNING), nothing logged to it."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    init = run_cli("track", "--init", "--experiment", "bad", "--parent-out", str(tmp_path / "parent.json"),
                   "--uri", uri)
    assert init.returncode == 0, init.stdout + init.stderr
    (tmp_path / "study.yaml").write_text("study: bad\nmodels: 3\n")
    done = run_cli("track", "--parent-run", str(tmp_path / "parent.json"), "--study", str(tmp_path / "study.yaml"),
                   "--uri", uri)
    assert done.returncode != 0 and "--study " in done.stderr and "study.yaml" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    client = MlflowClient(uri)
    (parent,) = client.search_runs([client.get_experiment_by_name("bad").experiment_id])
    assert parent.info.status == "RUNNING" and not parent.data.params
    assert client.get_experiment_by_name("bad").tags["mlflow.experimentKind"] == "custom_model_development"
