"""Training: learning on toy data, exact resume, failure modes, DDP under torchrun, MLflow logging."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from cldsgm.config import ConfigError, load_config
from cldsgm.data.prepared import save_prepared
from cldsgm.eval.distances import energy_distance
from cldsgm.models.registry import build_network
from cldsgm.models.score import ScoreParameterisation
from cldsgm.oracles import diamond
from cldsgm.samplers import generate
from cldsgm.training import load_checkpoint, train
from cldsgm.training.trainer import build_sde

from conftest import toy_config


def test_toy_cld_learns_the_diamond(diamond_data, tmp_path):
    config = toy_config(diamond_data, train={"steps": 1500, "batch_size": 256, "ema_rate": 0.999,
                                             "checkpoint_every": 1500, "log_every": 10})
    result = train(config, tmp_path / "run", progress=False)
    losses = np.array([h["loss"] for h in result.history])
    assert losses[-20:].mean() < 0.25 * losses[0], (losses[0], losses[-20:].mean())
    sde = build_sde(config)
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    trained, untrained = build_network("toy_mlp"), build_network("toy_mlp")
    trained.load_state_dict(state["ema"])
    param = ScoreParameterisation(sde, objective="hsm", mixed_score=False)
    data = diamond().sample(3000, generator=torch.Generator().manual_seed(5)).float()
    dist = {}
    for label, net in (("trained", trained), ("untrained", untrained)):
        with torch.no_grad():
            samples = generate(sde, param.score_fn(net.eval()), 3000, (2,), sampler="sscs", nfe=100).x
        dist[label] = energy_distance(samples, data)
    assert dist["trained"] < 0.2 * dist["untrained"], dist


def test_resume_after_stop_equals_uninterrupted_run(diamond_data, tmp_path):
    config = toy_config(diamond_data, model={"name": "toy_resnet"}, optim={"warmup_steps": 8})
    straight = train(config, tmp_path / "a", progress=False)
    first = train(config, tmp_path / "b", stop_after=15, progress=False)
    assert first.step == 15
    resumed = train(config, tmp_path / "b", progress=False)
    assert resumed.step == 40 and resumed.history == straight.history
    a, b = (load_checkpoint(tmp_path / d / "checkpoint.pt") for d in ("a", "b"))
    for key in ("model", "ema"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)
    assert (tmp_path / "a" / "loss.csv").read_text() == (tmp_path / "b" / "loss.csv").read_text()


def test_snapshots_are_the_checkpoints_of_their_steps_and_survive_a_resume(diamond_data, tmp_path):
    """train.snapshot_every keeps snapshots/step_<k>.pt (the learning curve's checkpoints): the state of step k, also
    across a stop and resume; a resumed run may change snapshot_every (it changes no maths)."""
    config = toy_config(diamond_data, train={"snapshot_every": 20})
    train(config, tmp_path / "a", stop_after=25, progress=False)
    train(config, tmp_path / "a", progress=False)
    snapshots = sorted(p.name for p in (tmp_path / "a" / "snapshots").iterdir())
    assert snapshots == ["step_20.pt", "step_40.pt"]
    short = train(toy_config(diamond_data, train={"steps": 20}), tmp_path / "b", progress=False)
    assert short.step == 20
    a = load_checkpoint(tmp_path / "a" / "snapshots" / "step_20.pt")
    b = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert a["step"] == 20 and all(torch.equal(a["ema"][k], b["ema"][k]) for k in a["ema"])
    with pytest.raises(ConfigError, match="snapshot_every"):
        toy_config(diamond_data, train={"snapshot_every": -1})


def test_non_finite_loss_stops_with_advice_and_keeps_checkpoint(diamond_data, tmp_path):
    # lr 1e30: the first update blows the weights up and the second loss overflows
    config = toy_config(diamond_data, optim={"lr": 1e30}, train={"steps": 20, "checkpoint_every": 1})
    with pytest.raises(FloatingPointError, match="non-finite loss .* at step 1; the last checkpoint is intact"):
        train(config, tmp_path / "run", progress=False)
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == 1


def test_non_finite_loss_between_reads_names_its_step_and_writes_nothing(diamond_data, tmp_path):
    # the losses are read (one host sync) only before a log or checkpoint: the error still names the first bad step,
    # and the checkpoint due at step 5 is never written with the blown-up weights
    config = toy_config(diamond_data, optim={"lr": 1e30}, train={"steps": 20, "checkpoint_every": 5, "log_every": 5})
    with pytest.raises(FloatingPointError, match=r"non-finite loss \((nan|inf)\) at step 1; the last checkpoint"):
        train(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_resume_refuses_another_dataset(diamond_data, tmp_path):
    train(toy_config(diamond_data, train={"steps": 5}), tmp_path / "run", progress=False)
    points = np.random.default_rng(0).normal(size=(256, 2)).astype(np.float32)
    save_prepared(tmp_path, "other", "train", points, kind="points", source="test")
    with pytest.raises(ValueError, match="another dataset"):
        train(toy_config(tmp_path / "other_train.npz", train={"steps": 10}), tmp_path / "run", progress=False)


def test_bad_config_checkpoint_and_architecture(diamond_data, tmp_path):
    with pytest.raises(ConfigError, match="train.*'epochs' was unexpected"):
        toy_config(diamond_data, train={"epochs": 3})
    with pytest.raises(ConfigError, match="optim.lr"):
        toy_config(diamond_data, optim={"lr": -1})
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ValueError, match="unknown network"):
        train(toy_config(diamond_data, model={"name": "unet"}), tmp_path / "x", progress=False)
    with pytest.raises(ValueError, match="m_inv"):
        train(toy_config(diamond_data, sde={"params": {"m_inv": -4.0}}), tmp_path / "y", progress=False)
    config = toy_config(diamond_data, train={"steps": 5})
    train(config, tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match="another architecture"):
        train(toy_config(diamond_data, model={"name": "toy_resnet"}, train={"steps": 5}), tmp_path / "run",
              progress=False)
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:500])
    with pytest.raises(ValueError, match="truncated or corrupted"):
        train(config, tmp_path / "run", progress=False)


def test_two_process_gloo_ddp_matches_single_process(diamond_data, tmp_path):
    config = toy_config(diamond_data, train={"steps": 30, "checkpoint_every": 30, "log_every": 10})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "cldsgm",
           "train", "--config", str(path), "--run-dir", str(tmp_path / "ddp"), "--no-progress"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    single = train(config, tmp_path / "single", progress=False)
    ddp = load_checkpoint(tmp_path / "ddp" / "checkpoint.pt")
    assert ddp["step"] == 30 and len(ddp["history"]) == len(single.history)
    for h_ddp, h_single in zip(ddp["history"], single.history, strict=True):
        assert h_ddp["loss"] == pytest.approx(h_single["loss"], rel=1e-4)
    ref = load_checkpoint(tmp_path / "single" / "checkpoint.pt")
    for k in ref["model"]:
        torch.testing.assert_close(ddp["model"][k], ref["model"][k], rtol=1e-4, atol=1e-5)


def _mlflow_runs(uri, experiment):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    return client, client.search_runs([exp.experiment_id])


def test_metrics_land_in_a_sqlite_mlflow_store(diamond_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    config = toy_config(diamond_data, train={"steps": 20, "log_every": 5},
                        tracking={"enabled": True, "experiment": "sqlite-test"})
    train(config, tmp_path / "run", progress=False)
    client, runs = _mlflow_runs(uri, "sqlite-test")
    assert len(runs) == 1
    run = runs[0]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [5, 10, 15, 20]
    assert run.data.params["optim.lr"] == "0.001" and run.data.params["model.name"] == "toy_mlp"
    assert len(run.data.tags["dataset_sha256"]) == 64 and "mlflow.source.git.commit" in run.data.tags
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["loss.csv"]


def test_metrics_reach_a_real_mlflow_server(diamond_data, tmp_path, monkeypatch, mlflow_server):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    config = toy_config(diamond_data, train={"steps": 10, "log_every": 5},
                        tracking={"enabled": True, "experiment": "server-test"})
    train(config, tmp_path / "run", progress=False)
    client, runs = _mlflow_runs(mlflow_server.uri, "server-test")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "loss")] == [5, 10]
    assert any(Path(tmp_path / "artifacts").rglob("loss.csv"))


@pytest.mark.parametrize("path", sorted(Path(__file__).parents[1].joinpath("params", "train").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_training_configs_validate(path):
    config = load_config(path)
    options = dict(config["model"]["options"])
    if config.get("task") == "classifier":  # num_classes comes from the data's labels at training time
        options.setdefault("num_classes", 10)
    with torch.device("meta"):
        build_network(config["model"]["name"], **options)
    build_sde(config)
