"""`cldsgm sample`: shards that are the same bytes however the run is batched or split, resumable, checked."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cldsgm.cli import main
from cldsgm.sampling import quantize_images
from cldsgm.shards import load_samples

from conftest import SUBPROCESS_ENV, cli, run_cli

pytestmark = pytest.mark.slow


def _sample(*args):
    result = CliRunner().invoke(main, ["sample", "--no-progress", *map(str, args)])
    assert result.exit_code == 0, result.output
    return result


def _shard_bytes(out_dir):
    return {p.name: p.read_bytes() for p in sorted(out_dir.glob("shard_*.npz"))}


def _digits(run, out, *extra):
    return _sample("--run-dir", run, "--sampler", "em", "--nfe", 6, "--n", 60, "--shard-size", 20,
                   "--net-batch", 16, "--device", "cpu", "--out", out, *extra)


def test_shards_are_the_same_bytes_for_batch_sizes_7_and_64(digits_run, tmp_path):
    _digits(digits_run, tmp_path / "b7", "--batch-size", 7)
    _digits(digits_run, tmp_path / "b64", "--batch-size", 64)
    a, b = _shard_bytes(tmp_path / "b7"), _shard_bytes(tmp_path / "b64")
    assert list(a) == ["shard_000000-000019.npz", "shard_000020-000039.npz", "shard_000040-000059.npz"]
    assert a == b
    images, manifest = load_samples(tmp_path / "b7")
    assert images.dtype == np.uint8 and images.shape == (60, 1, 8, 8)
    assert manifest["identity"]["source"]["weights"] == "ema" and manifest["identity"]["nfe_budget"] == 6
    assert all(entry["nfe"] == 6 for entry in manifest["shards"].values())
    assert (tmp_path / "b7" / "grid.png").stat().st_size > 0


def test_oracle_points_are_the_same_bytes_for_any_batch_size_and_sampler_options(tmp_path):
    common = ["--oracle", "diamond", "--sampler", "sscs", "--nfe", 10, "--n", 300, "--shard-size", 100,
              "--score-time", "start"]
    _sample(*common, "--batch-size", 7, "--out", tmp_path / "a")
    _sample(*common, "--batch-size", 300, "--out", tmp_path / "b")
    assert _shard_bytes(tmp_path / "a") == _shard_bytes(tmp_path / "b")
    points, manifest = load_samples(tmp_path / "a")
    assert points.dtype == np.float32 and points.shape == (300, 2)
    assert manifest["identity"]["options"] == {"score_time": "start", "precision_sigma": 0.04}  # sigma_d measured


def test_first_count_slices_give_the_same_set_as_one_run(digits_run, tmp_path):
    _digits(digits_run, tmp_path / "one", "--batch-size", 64)
    # halves on the shard grid: the same files; an off-grid split: the same images
    _digits(digits_run, tmp_path / "halves", "--first", 0, "--count", 40)
    _digits(digits_run, tmp_path / "halves", "--first", 40, "--count", 20)
    assert _shard_bytes(tmp_path / "halves") == _shard_bytes(tmp_path / "one")
    _digits(digits_run, tmp_path / "odd", "--first", 0, "--count", 33)
    _digits(digits_run, tmp_path / "odd", "--first", 33)
    assert np.array_equal(load_samples(tmp_path / "odd")[0], load_samples(tmp_path / "one")[0])


def test_two_processes_under_torchrun_write_the_same_shards(digits_run, tmp_path):
    _digits(digits_run, tmp_path / "one")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "cldsgm",
           "sample", "--run-dir", str(digits_run), "--sampler", "em", "--nfe", "6", "--num-samples", "60",
           "--shard-size", "20",
           "--net-batch", "16", "--device", "cpu", "--out", str(tmp_path / "two"), "--no-progress"]
    done = subprocess.run(cmd, env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert _shard_bytes(tmp_path / "two") == _shard_bytes(tmp_path / "one")
    shards = json.loads((tmp_path / "two" / "manifest.json").read_text())["shards"].values()
    assert sorted(e["rank"] for e in shards) == [0, 0, 1] and {e["world"] for e in shards} == {2}


@pytest.mark.e2e
def test_killed_after_the_first_shard_then_rerun_gives_the_same_bytes(digits_run, tmp_path):
    args = ["sample", "--run-dir", str(digits_run), "--sampler", "em", "--nfe", "40", "--n", "200",
            "--shard-size", "10", "--batch-size", "10", "--net-batch", "16", "--device", "cpu", "--no-progress"]
    proc = cli(*args, "--out", str(tmp_path / "killed"))
    manifest = tmp_path / "killed" / "manifest.json"

    def shards_done():
        try:
            return len(json.loads(manifest.read_text())["shards"])
        except (OSError, ValueError, KeyError):
            return 0

    deadline = time.time() + 120
    while shards_done() < 1:
        assert time.time() < deadline, "no shard within 120 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 1 <= shards_done() < 20
    for out in ("killed", "straight"):
        done = run_cli(*args, "--out", str(tmp_path / out))
        assert done.returncode == 0, done.stderr
    assert _shard_bytes(tmp_path / "killed") == _shard_bytes(tmp_path / "straight")
    assert "kept" in done.stdout


def test_a_corrupted_shard_is_detected_and_remade(digits_run, tmp_path):
    _digits(digits_run, tmp_path / "s")
    good = _shard_bytes(tmp_path / "s")
    shard = tmp_path / "s" / "shard_000020-000039.npz"
    shard.write_bytes(shard.read_bytes()[:-7] + b"garbage")
    with pytest.raises(ValueError, match="missing or corrupted"):
        load_samples(tmp_path / "s")
    result = _digits(digits_run, tmp_path / "s")
    assert "shard_000020-000039.npz is corrupted" in result.output and "remaking it" in result.output
    assert "sampled 1 shard(s), kept 2" in result.output
    assert _shard_bytes(tmp_path / "s") == good


# sscs with its sigma_d given: the refusal does not wait for an estimate from the model (30 Jacobian passes)
@pytest.mark.parametrize("change", [["--seed", "1"], ["--sampler", "sscs", "--nfe", "6", "--precision-sigma", "0.5"],
                                    ["--raw-weights"]], ids=["seed", "sampler", "weights"])
def test_a_directory_of_another_run_is_refused_not_mixed(digits_run, tmp_path, change):
    _digits(digits_run, tmp_path / "s", "--first", 0, "--count", 20)
    before = _shard_bytes(tmp_path / "s")
    args = ["sample", "--no-progress", "--run-dir", str(digits_run), "--sampler", "em", "--nfe", "6", "--n", "60",
            "--shard-size", "20", "--net-batch", "16", "--device", "cpu", "--out", str(tmp_path / "s"), "--first", "20"]
    result = CliRunner().invoke(main, [*args, *change])  # a repeated option: click takes the last value
    assert result.exit_code == 1 and "holds shards of another run" in result.output
    assert _shard_bytes(tmp_path / "s") == before


def test_nfe_budgets_the_sampler_cannot_honour_are_refused(tmp_path):
    runner = CliRunner()
    cases = [(["--oracle", "gaussian", "--sde", "vpsde", "--sampler", "pc", "--nfe", "20"], "choose nfe = 2k+1"),
             (["--oracle", "diamond", "--sampler", "em", "--nfe", "1"], "cannot be honoured"),
             (["--oracle", "diamond", "--sampler", "ode", "--nfe", "20"], "adaptive"),
             (["--oracle", "diamond", "--sampler", "sscs"], "needs --nfe"),
             (["--oracle", "diamond", "--sde", "vpsde", "--sampler", "sscs", "--nfe", "10"], "phase-space"),
             (["--oracle", "diamond", "--sampler", "em", "--nfe", "10", "--snr", "0.1"], "--snr"),
             (["--oracle", "diamond", "--run-dir", str(tmp_path), "--sampler", "em", "--nfe", "10"], "exactly one")]
    for args, message in cases:
        result = runner.invoke(main, ["sample", "--n", "10", "--out", str(tmp_path / "x"), *args])
        assert result.exit_code in (1, 2) and message in result.output, (args, result.output)
    assert not list((tmp_path / "x").glob("shard_*")) if (tmp_path / "x").exists() else True


def test_pc_with_an_honourable_budget_and_the_ode_sampler_run(tmp_path):
    _sample("--oracle", "gaussian", "--sde", "vpsde", "--sampler", "pc", "--nfe", 21, "--n", 50, "--out",
            tmp_path / "pc")
    _sample("--oracle", "gaussian", "--sampler", "ode", "--rtol", 1e-3, "--atol", 1e-3, "--n", 50, "--batch-size",
            25, "--shard-size", 25, "--out", tmp_path / "ode")
    manifest = json.loads((tmp_path / "ode" / "manifest.json").read_text())
    assert manifest["identity"]["ode_batch"] == 25 and all(e["nfe"] > 2 for e in manifest["shards"].values())


def test_a_checkpoint_that_does_not_fit_is_named(toy_run, digits_run, tmp_path):
    # a digits checkpoint whose recorded data shape was tampered with: the network no longer fits it
    state = torch.load(digits_run / "checkpoint.pt", weights_only=True)
    state["data"] = {"kind": "points", "shape": [2]}
    torch.save(state, tmp_path / "bad.pt")
    result = CliRunner().invoke(main, ["sample", "--checkpoint", str(tmp_path / "bad.pt"), "--sampler", "em", "--nfe",
                                       "5", "--n", "4", "--device", "cpu", "--out", str(tmp_path / "out")])
    assert result.exit_code == 1 and "does not fit data of shape [2]" in result.output
    assert not list((tmp_path / "out").glob("shard_*"))


def test_bf16_autocast_touches_the_network_only(digits_run, tmp_path):
    _digits(digits_run, tmp_path / "bf16", "--precision", "bf16")
    images, manifest = load_samples(tmp_path / "bf16")
    assert manifest["identity"]["precision"] == "bf16" and images.shape == (60, 1, 8, 8)


def test_quantisation_truncates_as_the_references():
    x = torch.tensor([-1.0, 1.0, 0.0, 0.999, 1.5, -3.0, 2 * 200.9 / 255 - 1])
    # (x + 1) / 2 * 255 = 0, 255, 127.5, 254.87, 318.75, -255, 200.9 -> clip, truncate
    assert quantize_images(x).tolist() == [0, 255, 127, 254, 255, 0, 200]


def _rows_spec(tmp_path, name, **extra):
    return json.dumps({"out": str(tmp_path / name), "sampler": "em", "n": 60, "nfe": 6, "striding": "quadratic",
                       "labels": {"source": "digits_cld", "row": name, "seed": 0}, **extra})


def test_sample_rows_makes_each_set_with_the_bytes_of_a_one_set_run(digits_run, tmp_path):
    """One process, several sets (a snapshot among them), and in two --part slices: each set's shards equal those
    of `cldsgm sample` with the same arguments; a rerun keeps everything; DIR/done.json per set and the job marker."""
    common = ["--run-dir", digits_run, "--shard-size", 20, "--net-batch", 16, "--device", "cpu", "--no-progress"]
    rows = [_rows_spec(tmp_path, "em"), _rows_spec(tmp_path, "sscs", sampler="sscs", options={"precision_sigma": 0.1}),
            _rows_spec(tmp_path, "snap", checkpoint=str(digits_run / "checkpoint.pt"), nfe=8)]
    args = ["sample-rows", *map(str, common), *(x for r in rows for x in ("--row", r))]
    for part in (0, 1, 2):
        result = CliRunner().invoke(main, [*args, "--part", str(part), "--parts", "3", "--done",
                                           str(tmp_path / f"part{part}.json")])
        assert result.exit_code == 0, result.output
    assert not (tmp_path / "em" / "done.json").exists()  # slices: the gathering call marks the sets
    result = CliRunner().invoke(main, [*args, "--done", str(tmp_path / "rows.json")])
    assert result.exit_code == 0 and result.output.count("made 0 shard(s), kept 3") == 3, result.output
    assert json.loads((tmp_path / "rows.json").read_text())["sets"][0]["complete"]
    for name, extra in (("em", []), ("sscs", ["--sampler", "sscs", "--precision-sigma", 0.1]), ("snap", ["--nfe", 8])):
        _sample("--run-dir", digits_run, "--sampler", "em", "--nfe", 6, "--n", 60, "--striding", "quadratic",
                "--shard-size", 20, "--net-batch", 16, "--device", "cpu", "--out", tmp_path / f"one_{name}", *extra)
        assert _shard_bytes(tmp_path / name) == _shard_bytes(tmp_path / f"one_{name}"), name
        manifest = json.loads((tmp_path / name / "manifest.json").read_text())
        assert manifest["labels"]["seed"] == "0" and (tmp_path / name / "done.json").is_file()


@pytest.mark.parametrize("row, message", [
    ("{not json", "not JSON"),
    ('{"out": "x", "sampler": "em", "n": 4, "colour": 1}', "unknown ['colour']"),
    ('{"out": "x", "sampler": "em", "n": 4, "options": {"order": 2}}', "order"),
    ('{"out": "x", "sampler": "warp", "n": 4}', "unknown sampler"),
])
def test_sample_rows_refuses_a_bad_row_before_writing(tmp_path, row, message):
    result = CliRunner().invoke(main, ["sample-rows", "--oracle", "diamond", "--row", row.replace('"x"', json.dumps(
        str(tmp_path / "x"))), "--no-progress"])
    assert result.exit_code != 0 and message in result.output, result.output
    assert not (tmp_path / "x").exists()
