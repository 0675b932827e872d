"""Importing the authors' released checkpoints: the reference network's own output is the oracle.

tests/data/reference/ was written once by scripts/make_reference_fixture.py, which ran the authors' NCSN++ modules
(nv-tlabs/CLD-SGM, mandt-lab/PSLD) with every weight randomised: nf = 16 on 8x8 images, CLD-SGM with the FIR input
pyramid and Fourier embedding, PSLD with the plain (padded, strided) pyramid and positional embedding, attention in
both. These tests need no reference code.
"""

import json
import math
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
import yaml

from cldsgm.models import reference
from cldsgm.models.layers import AttnBlock, PadConvDown
from cldsgm.models.ncsnpp import NCSNpp
from cldsgm.models.reference import from_reference, read_reference

from conftest import run_cli

DATA = Path(__file__).parent / "data" / "reference"
FILES = {"cld-sgm": DATA / "cld-sgm.pth", "psld": DATA / "psld.ckpt"}
SDE = {"cld-sgm": {"name": "cld", "params": {"beta_min": 4.0, "beta_max": 4.0, "m_inv": 4.0, "gamma": 0.04,
                                             "numerical_eps": 1.0e-9}},
       "psld": {"name": "psld", "params": {"numerical_eps": 1.0e-9}}}
TOL = 1e-6  # float32 rounding of a 0.3-sized output through ~20 layers (measured: 1.0e-7)


def _expected(layout):
    return torch.load(DATA / f"{layout}_expected.pt", weights_only=True)


def _net(layout) -> NCSNpp:
    options = _expected(layout)["options"]
    return NCSNpp(**{k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}).eval()


def _config(tmp_path, layout) -> Path:
    options = _expected(layout)["options"]
    name = "ncsnpp_cifar10_cld" if layout == "cld-sgm" else "ncsnpp_cifar10_psld"
    config = {"data": {"path": "unused.npz"}, "sde": SDE[layout],
              "loss": {"objective": "hsm", "mixed_score": layout == "cld-sgm"},
              "model": {"name": name, "options": options}}
    path = tmp_path / f"{layout}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _import(tmp_path, layout, *extra, file=None):
    params = ["--sde-param", "Gamma=0.02", "--sde-param", "nu=4.02"] if layout == "psld" else []
    return run_cli("import-checkpoint", "--format", layout, str(file or FILES[layout]), "--out",
                   str(tmp_path / "run"), "--config", str(_config(tmp_path, layout)), *params, *extra)


def _output(net, state):
    net.load_state_dict(state, strict=True)
    expected = _expected("cld-sgm" if net.embedding == "fourier" else "psld")
    with torch.no_grad():
        return (net(expected["u"], expected["t"]) - expected["output"]).abs().max().item()


@pytest.mark.parametrize("layout", ["cld-sgm", "psld"])
def test_imported_network_reproduces_the_reference_output(tmp_path, layout):
    done = _import(tmp_path, layout)
    assert done.returncode == 0, done.stderr
    assert f"imported {layout}" in done.stdout and "step 7" in done.stdout
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    expected = _expected(layout)
    net = _net(layout)
    assert len(state["ema"]) == expected["reference_tensors"]
    assert _output(net, state["ema"]) <= TOL
    # the raw weights are imported too, and they are not the EMA
    assert _output(net, state["model"]) > 1e-3
    assert state["imported_from"]["format"] == layout and len(state["imported_from"]["sha256"]) == 64
    if layout == "psld":
        assert state["config"]["sde"]["params"]["Gamma"] == 0.02 and state["config"]["sde"]["params"]["nu"] == 4.02


def test_an_imported_run_samples_like_a_trained_one(tmp_path):
    assert _import(tmp_path, "cld-sgm").returncode == 0
    done = run_cli("sample", "--run-dir", str(tmp_path / "run"), "--sampler", "sscs", "--nfe", "4",
                   "--num-samples", "4", "--out", str(tmp_path / "samples"), "--no-progress")
    assert done.returncode == 0, done.stderr
    assert list((tmp_path / "samples").glob("shard_*.npz"))
    # no training data beside an imported checkpoint: sigma_d is not measured, it falls back to 0 and says so
    assert "sigma_d not measured" in done.stderr
    identity = json.loads((tmp_path / "samples" / "manifest.json").read_text())["identity"]
    assert identity["options"] == {"precision_sigma": 0.0}
    assert identity["precision_sigma_from"]["method"].startswith("none: prepared dataset file")


def _reference_ema(layout):
    net = _net(layout)
    state = torch.load(FILES[layout], weights_only=True)
    return net, read_reference(state, layout, fourier=net.embedding == "fourier")["ema"]


@pytest.mark.parametrize("layout", ["cld-sgm", "psld"])
def test_the_nin_matrices_need_their_transpose(layout):
    net, ema = _reference_ema(layout)
    ours = from_reference(net, ema)
    assert _output(net, ours) <= TOL
    wrong = dict(ours)
    for name, module in net.named_modules():
        if isinstance(module, AttnBlock):
            for k in range(4):  # W reshaped to a 1x1 kernel without the transpose: loads fine (square), wrong
                key = f"{name}.NIN_{k}.weight"
                wrong[key] = ours[key][:, :, 0, 0].t()[:, :, None, None].contiguous()
    assert _output(net, wrong) > 1e-3


def test_the_input_pyramid_in_our_order_does_not_fit(monkeypatch):
    """A positional copy in our module order (pyramid after all levels) must not load."""
    net, ema = _reference_ema("cld-sgm")
    right = reference.reference_modules(net)
    pyramid = [m for m in right if any(m is p for p in net.pyramid)]
    ours_order = [m for m in right if not any(m is p for p in pyramid)]
    at = ours_order.index(net.mid[0])
    monkeypatch.setattr(reference, "reference_modules", lambda n: ours_order[:at] + pyramid + ours_order[at:])
    with pytest.raises(ValueError, match="mis-shaped"):
        from_reference(net, ema)


def test_the_plain_pyramid_pads_right_and_bottom():
    torch.manual_seed(0)
    layer = PadConvDown(3, 4)
    x = torch.randn(2, 3, 8, 8)
    reference_way = F.conv2d(F.pad(x, (0, 1, 0, 1)), layer.weight, layer.bias, stride=2)
    symmetric = F.conv2d(x, layer.weight, layer.bias, stride=2, padding=1)
    assert torch.allclose(layer(x), reference_way, atol=1e-6)
    assert (layer(x) - symmetric).abs().max() > 0.1


def test_attention_projections_start_at_scale_one_tenth():
    torch.manual_seed(0)
    block = AttnBlock(256, init_scale=0.0)
    bound = math.sqrt(3 * 0.1 / 256)  # uniform fan-avg variance scaling: fan_avg = (256 + 256) / 2
    for k in range(3):
        w = getattr(block, f"NIN_{k}").weight
        assert 0.9 * bound < w.abs().max() <= bound
    assert block.NIN_3.weight.abs().max() < 1e-4  # the output projection takes init_scale (0: near zero)


def test_time_embedding_stays_fp32_under_autocast():
    torch.manual_seed(0)
    net = NCSNpp(in_channels=2, out_channels=1, image_size=8, nf=16, ch_mult=(1, 2), num_res_blocks=1,
                 attn_resolutions=(4,), dropout=0.0)
    t = torch.tensor([1e-3, 1.1e-3, 0.5])
    plain = net._time_embedding(t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = net._time_embedding(t)
    assert mixed.dtype == torch.float32 and torch.equal(mixed, plain)
    assert not torch.equal(plain[0], plain[1])  # nearby times stay apart


# -- bad input: one clear error each, nothing written, nothing executed ------------------------------------------
def test_a_file_of_the_other_format_is_named(tmp_path):
    done = _import(tmp_path, "psld", file=FILES["cld-sgm"])
    assert done.returncode != 0 and "a CLD-SGM checkpoint? use --format cld-sgm" in done.stderr
    done = _import(tmp_path, "cld-sgm", file=FILES["psld"])
    assert done.returncode != 0 and "a PSLD checkpoint? use --format psld" in done.stderr
    assert not (tmp_path / "run").exists()


def test_a_truncated_file_is_refused(tmp_path):
    cut = tmp_path / "cut.pth"
    cut.write_bytes(FILES["cld-sgm"].read_bytes()[:100_000])
    done = _import(tmp_path, "cld-sgm", file=cut)
    assert done.returncode != 0 and "truncated or corrupted" in done.stderr
    assert not (tmp_path / "run").exists()


class _Payload:
    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.flag}",))


def test_a_pickle_that_would_run_code_is_refused_before_it_runs(tmp_path):
    payload = _Payload()
    payload.flag = tmp_path / "ran"
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as handle:
        pickle.dump({"model": {}, "ema": {"shadow_params": []}, "step": payload}, handle)
    done = _import(tmp_path, "cld-sgm", file=evil)
    assert done.returncode != 0 and "refusing to unpickle code" in done.stderr
    assert not (tmp_path / "ran").exists()


def test_psld_needs_gamma_and_nu(tmp_path):
    done = run_cli("import-checkpoint", "--format", "psld", str(FILES["psld"]), "--out", str(tmp_path / "run"),
                   "--config", str(_config(tmp_path, "psld")), "--sde-param", "Gamma=0.02")
    assert done.returncode != 0 and "pass --sde-param nu=..." in done.stderr
    assert not (tmp_path / "run").exists()


def test_an_ema_list_of_the_wrong_length_is_refused(tmp_path):
    state = torch.load(FILES["cld-sgm"], weights_only=True)
    state["ema"]["shadow_params"] = state["ema"]["shadow_params"][:-1]
    short = tmp_path / "short.pth"
    torch.save(state, short)
    done = _import(tmp_path, "cld-sgm", file=short)
    assert done.returncode != 0
    assert "the EMA list holds 155 tensors but the model has 156 trainable parameters" in done.stderr


def test_tensors_that_do_not_fit_are_listed_together(tmp_path):
    config = yaml.safe_load(_config(tmp_path, "cld-sgm").read_text())
    config["model"]["options"]["nf"] = 32
    (tmp_path / "cld-sgm.yaml").write_text(yaml.safe_dump(config))
    done = run_cli("import-checkpoint", "--format", "cld-sgm", str(FILES["cld-sgm"]), "--out", str(tmp_path / "r"),
                   "--config", str(tmp_path / "cld-sgm.yaml"))
    assert done.returncode != 0 and "156 mis-shaped: all_modules.0.W [16] -> fourier.W [32], " in done.stderr
    assert "all_modules.1.weight [64, 32] -> temb.0.weight [128, 64]" in done.stderr and "missing" not in done.stderr
    assert not (tmp_path / "r").exists()


def test_the_report_puts_our_numbers_beside_the_papers():
    import pandas as pd

    from cldsgm.report import published_match
    from cldsgm.report.published import PUBLISHED

    df = pd.DataFrame([
        {"sde": "cld", "sampler": "sscs", "nfe_budget": 150, "nfe": 150.0, "metric": "fid", "value": 3.1},
        {"sde": "cld", "sampler": "ode", "nfe_budget": None, "nfe": 305.0, "metric": "fid", "value": 2.3},
        {"sde": "cld", "sampler": "ode", "nfe_budget": None, "nfe": 290.0, "metric": "nll_bpd", "value": 3.3},
    ])
    paper = pd.DataFrame(PUBLISHED, columns=["sde", "sampler", "NFE", "metric", "paper", "status", "source"])
    cld = paper[paper.sde == "cld"]
    ours = {(r["sampler"], r["NFE"], r["metric"]): published_match(df, r) for _, r in cld.iterrows()}
    assert ours[("sscs", 150, "fid")] == "3.1"
    assert ours[("ode", 312, "fid")] == "2.3 (NFE 305)"  # adaptive: shown with our NFE
    assert [v for (_, _, metric), v in ours.items() if metric == "nll_bpd"] == ["3.3 (NFE 290)"]
    assert ours[("em", 150, "fid")] == "not computed"
