"""User mistakes and unsafe files: each gives one clear line, runs no code, and loses nothing.

One test per row of the hardening issue; each failed on the code before it.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from cldsgm.cli import main
from cldsgm.config import ConfigError, load_config
from cldsgm.data import prepare
from cldsgm.data.prepared import load_prepared
from cldsgm.training import load_checkpoint, train
from cldsgm.training.checkpoint import FORMAT, UnsafeCheckpointError, save_checkpoint
from cldsgm.utils.io import atomic_path

from conftest import SUBPROCESS_ENV, run_cli, toy_config

SRC = Path(__file__).parents[1] / "src"


class _Payload:
    """Unpickling this runs `touch <marker>`: what a hostile checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _hostile_checkpoint(path, marker, *, where="top"):
    state = {"format": FORMAT, "step": 1, "history": []}
    if where == "top":
        torch.save(_Payload(marker), path)
    else:  # hidden inside an otherwise plain checkpoint
        state["history"] = [{"step": 1, "loss": _Payload(marker)}]
        torch.save(state, path)


@pytest.mark.parametrize("where", ["top", "history"])
def test_checkpoint_with_code_is_refused_and_nothing_runs(tmp_path, where):
    marker = tmp_path / "pwned"
    _hostile_checkpoint(tmp_path / "checkpoint.pt", marker, where=where)
    with pytest.raises(UnsafeCheckpointError, match="not a plain checkpoint: refusing to unpickle code"):
        load_checkpoint(tmp_path / "checkpoint.pt")
    assert not marker.exists()


def test_train_resume_refuses_a_hostile_checkpoint(diamond_data, tmp_path):
    run_dir, marker = tmp_path / "run", tmp_path / "pwned"
    run_dir.mkdir()
    _hostile_checkpoint(run_dir / "checkpoint.pt", marker, where="history")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(toy_config(diamond_data)))
    done = run_cli("train", "--config", str(config), "--run-dir", str(run_dir), "--no-progress")
    assert done.returncode == 1
    assert "not a plain checkpoint: refusing to unpickle code" in done.stderr
    assert "truncated" not in done.stderr and "Traceback" not in done.stderr
    assert not marker.exists()


def test_our_own_checkpoints_load_as_plain_data(diamond_data, tmp_path):
    train(toy_config(diamond_data, train={"steps": 3}), tmp_path / "run", progress=False)
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == 3


def test_no_unsafe_torch_load_anywhere_in_the_source():
    root = Path(__file__).parents[1]
    offenders = [f"{p.relative_to(root)}:{i + 1}" for base in ("src", "benchmarks") for p in (root / base).rglob("*.py")
                 for i, line in enumerate(p.read_text().splitlines())
                 if re.search(r"weights_only\s*=\s*False", line)]
    assert offenders == [], f"torch.load(weights_only=False) can run code from a file: {offenders}"


# -- one row each --------------------------------------------------------------------------------------------------
def _write_config(tmp_path, config, name="c.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


def test_network_that_does_not_fit_the_data_fails_in_one_line_and_leaves_nothing(diamond_data, tmp_path):
    config = toy_config(diamond_data, model={"name": "ncsnpp_digits"})
    result = CliRunner().invoke(main, ["train", "--config", str(_write_config(tmp_path, config)),
                                       "--run-dir", str(tmp_path / "run"), "--no-progress"])
    assert result.exit_code == 1
    assert "network 'ncsnpp_digits'" in result.output and "does not fit data of shape [2]" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_truncated_manifest_is_named(tmp_path):
    prepare("diamond", "train", tmp_path, n=50)
    manifest = tmp_path / "diamond_train.json"
    manifest.write_text(manifest.read_text()[:40])
    with pytest.raises(ValueError, match=f"manifest {re.escape(str(manifest))} is not valid JSON"):
        load_prepared(tmp_path / "diamond_train.npz")


def test_manifest_without_sha256_is_named(tmp_path):
    prepare("diamond", "train", tmp_path, n=50)
    manifest = tmp_path / "diamond_train.json"
    record = json.loads(manifest.read_text())
    del record["sha256"]
    manifest.write_text(json.dumps(record))
    with pytest.raises(ValueError, match="lacks key 'sha256'"):
        load_prepared(tmp_path / "diamond_train.npz")


def test_empty_test_split_is_refused_and_nothing_is_written(tmp_path):
    result = CliRunner().invoke(main, ["prepare", "--dataset", "digits", "--split", "test", "--test-fraction", "0",
                                       "--out", str(tmp_path / "data")])
    assert result.exit_code == 2 and "test split of 'digits' would be empty" in result.output
    assert "--test-fraction > 0" in result.output
    assert not (tmp_path / "data").exists()


def test_unwritable_run_dir_parent_and_prepare_out(diamond_data, tmp_path):
    # /sys refuses mkdir even to root, so this is a real permission error wherever the tests run
    config = str(_write_config(tmp_path, toy_config(diamond_data)))
    runner = CliRunner()
    for args in (["train", "--config", config, "--run-dir", "/sys/cldsgm-test-run"],
                 ["train", "--config", config, "--run-dir", "/sys/cldsgm-parent/run"],
                 ["prepare", "--dataset", "diamond", "--n", "10", "--out", "/sys/cldsgm-test-out"]):
        result = runner.invoke(main, args)
        assert result.exit_code == 1, result.output
        assert "cannot be created: Operation not permitted" in result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = runner.invoke(main, ["train", "--config", config, "--run-dir", str(blocker / "run")])
    assert result.exit_code == 1 and "--run-dir" in result.output and "Traceback" not in result.output


def test_disk_full_during_a_write_is_one_line(diamond_data, tmp_path, monkeypatch):
    import cldsgm.training.trainer as trainer

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device", str(tmp_path / "run" / "checkpoint.pt"))

    monkeypatch.setattr(trainer, "save_checkpoint", full)
    config = str(_write_config(tmp_path, toy_config(diamond_data, train={"steps": 3})))
    result = CliRunner().invoke(main, ["train", "--config", config, "--run-dir", str(tmp_path / "run"),
                                       "--no-progress"])
    assert result.exit_code == 1
    assert f"cannot write {tmp_path / 'run' / 'checkpoint.pt'}: No space left on device" in result.output


@pytest.mark.parametrize("change", [{"sde": {"name": "psld"}}, {"loss": {"objective": "dsm"}}, {"optim": {"lr": 5e-4}},
                                    {"seed": 3}], ids=["sde", "loss", "lr", "seed"])
def test_resume_with_a_changed_config_is_refused_then_allowed_keeping_both(diamond_data, tmp_path, change):
    base = toy_config(diamond_data, train={"steps": 10})
    train(base, tmp_path / "run", progress=False)
    before = (tmp_path / "run" / "config.yaml").read_text()
    raw = {**yaml.safe_load(before), "train": {**base["train"], "steps": 20}}
    for key, value in change.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) else value
    if change.get("sde", {}).get("name") == "psld":
        raw["sde"]["params"] = {}
        raw["model"]["options"] = {"in_channels": 4, "out_channels": 4}
    path = _write_config(tmp_path, raw)
    result = CliRunner().invoke(main, ["train", "--config", str(path), "--run-dir", str(tmp_path / "run"),
                                       "--no-progress"])
    if "sde" in change:  # another SDE changes the network's shape: refused as another architecture
        assert result.exit_code == 1 and "another architecture" in result.output
        return
    assert result.exit_code == 1 and "under another config" in result.output, result.output
    key = next(iter(change)) if "seed" in change else f"{next(iter(change))}.{next(iter(change[next(iter(change))]))}"
    assert key in result.output and "--allow-config-change" in result.output
    assert (tmp_path / "run" / "config.yaml").read_text() == before  # the record is untouched
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == 10
    result = CliRunner().invoke(main, ["train", "--config", str(path), "--run-dir", str(tmp_path / "run"),
                                       "--no-progress", "--allow-config-change"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "config.until-step-10.yaml").read_text() == before
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == 20


def test_resume_may_change_steps_and_logging(diamond_data, tmp_path):
    train(toy_config(diamond_data, train={"steps": 10}), tmp_path / "run", progress=False)
    result = train(toy_config(diamond_data, train={"steps": 15, "log_every": 5, "checkpoint_every": 5}),
                   tmp_path / "run", progress=False)
    assert result.step == 15 and not list((tmp_path / "run").glob("config.until-*"))


def test_rerunning_a_finished_run_reports_the_stored_loss_and_opens_no_run(diamond_data, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    config = toy_config(diamond_data, train={"steps": 5}, tracking={"enabled": True, "experiment": "rerun"})
    path = str(_write_config(tmp_path, config))
    first = CliRunner().invoke(main, ["train", "--config", path, "--run-dir", str(tmp_path / "run"), "--no-progress"])
    assert first.exit_code == 0, first.output
    stored = load_checkpoint(tmp_path / "run" / "checkpoint.pt")["history"][-1]["loss"]
    again = CliRunner().invoke(main, ["train", "--config", path, "--run-dir", str(tmp_path / "run"), "--no-progress"])
    assert again.exit_code == 0
    assert f"nothing to do: {tmp_path / 'run'} already finished 5 steps, final loss {stored:.4g}" in again.output
    assert "nan" not in again.output
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("rerun").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"


def test_yaml_exponent_without_dot_gets_advice(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: {path: x.npz}\nsde: {name: cld}\nmodel: {name: toy_mlp}\noptim: {lr: 1e-3}\n")
    with pytest.raises(ConfigError, match=re.escape("optim.lr") + ".*write 1.0e-3"):
        load_config(path)


def test_prepare_cifar10_without_source_names_the_flag():
    result = CliRunner().invoke(main, ["prepare", "--dataset", "cifar10"])
    assert result.exit_code == 2 and "needs --source PATH" in result.output


def test_stale_checkpoint_temporaries_are_removed_at_start(diamond_data, tmp_path):
    run_dir = tmp_path / "run"
    train(toy_config(diamond_data, train={"steps": 5}), run_dir, progress=False)
    stale = run_dir / ".checkpoint.pt.k1ll3d.tmp"
    stale.write_bytes(b"half a checkpoint")
    other = run_dir / "notes.txt.tmp"  # not ours: left alone
    other.write_text("keep")
    train(toy_config(diamond_data, train={"steps": 8}), run_dir, progress=False)
    assert not stale.exists() and other.exists()


def test_atomic_writes_honour_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "a.txt") as tmp:
            tmp.write_text("x")
        save_checkpoint(tmp_path / "c.pt", {"step": 0})
        prepare("diamond", "train", tmp_path / "data", n=10)
        os.umask(0o027)
        with atomic_path(tmp_path / "b.txt") as tmp:
            tmp.write_text("x")
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in [*tmp_path.glob("*.*"), *(tmp_path / "data").iterdir()]}
    assert modes == {"a.txt": 0o644, "c.pt": 0o644, "diamond_train.npz": 0o644, "diamond_train.json": 0o644,
                     "b.txt": 0o640}


def test_config_mistakes_are_reported_without_importing_torch(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {path: x.npz}\nsde: {name: cld}\nmodel: {name: toy_mlp}\ntrain: {epochs: 3}\n")
    probe = ("import sys\nfrom cldsgm.cli import main\n"
             f"try:\n    main(['train', '--config', {str(bad)!r}, '--run-dir', {str(tmp_path / 'r')!r}])\n"
             "except SystemExit as e:\n    print('exit', e.code)\n"
             "print('torch imported' if 'torch' in sys.modules else 'torch not imported')\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=SUBPROCESS_ENV,
                          timeout=60)
    assert "'epochs' was unexpected" in done.stderr
    assert done.stdout.split() == ["exit", "1", "torch", "not", "imported"]
    probe = ("import sys\nfrom cldsgm.cli import main\ntry:\n    main(['prepare', '--dataset', 'digits', '--split', "
             "'test', '--test-fraction', '0'])\nexcept SystemExit as e:\n    print('exit', e.code)\n"
             "print('torch imported' if 'torch' in sys.modules else 'torch not imported')\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=SUBPROCESS_ENV,
                          timeout=60)
    assert done.stdout.split() == ["exit", "2", "torch", "not", "imported"]


def test_missing_data_is_named_before_training(tmp_path):
    config = _write_config(tmp_path, {"data": {"path": str(tmp_path / "nope.npz")}, "sde": {"name": "cld"},
                                      "model": {"name": "toy_mlp"}})
    result = CliRunner().invoke(main, ["train", "--config", str(config), "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 1 and "nope.npz (data.path) not found; run `cldsgm prepare` first" in result.output
    assert not (tmp_path / "run").exists()


def test_empty_prepared_dataset_is_refused(tmp_path):
    from cldsgm.data.prepared import save_prepared

    with pytest.raises(ValueError, match="empty dataset"):
        save_prepared(tmp_path, "x", "train", np.zeros((0, 2), np.float32), kind="points", source="test")


def test_paths_are_stored_relative_to_the_project_and_old_absolute_ones_still_match(tmp_path, monkeypatch):
    from cldsgm.tracking.store import absolute_uri
    from cldsgm.utils.io import portable, portable_uri, project_path

    monkeypatch.chdir(tmp_path)
    assert project_path(tmp_path / "results" / "x.npz") == "results/x.npz" == project_path("results/x.npz")
    assert project_path("/elsewhere/x.npz") == "/elsewhere/x.npz"  # outside the project: absolute
    assert portable_uri(f"sqlite:///{tmp_path}/mlflow.db") == "sqlite:///mlflow.db"
    assert portable_uri("http://host:5000") == "http://host:5000"
    assert absolute_uri("sqlite:///mlflow.db") == f"sqlite:///{tmp_path}/mlflow.db"
    old = {"source": {"checkpoint": f"{tmp_path}/results/runs/a/checkpoint.pt", "step": 3}, "n": [f"{tmp_path}/b"]}
    assert portable(old) == {"source": {"checkpoint": "results/runs/a/checkpoint.pt", "step": 3}, "n": ["b"]}
