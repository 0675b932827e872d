"""The network's fast paths (cldsgm.models.fast) against the eager network: regional compilation (inductor on the
CPU), GroupNorm in the compute dtype, weights cast once for sampling, CUDA-graph replay, and the batch-size rule of
the learning rate. Each changes how fast, and at most the last bits of what is computed."""

import copy

import numpy as np
import pytest
import torch

from cldsgm.models.fast import GraphedNet, cast_for_inference, compile_blocks, repeated_blocks, set_norm_dtype
from cldsgm.models.registry import build_network

from conftest import toy_config


def _tiny_ncsnpp(**overrides):
    """An NCSN++ with every block kind (plain, channel-changing, down, up residual blocks; attention) at 8x8."""
    torch.manual_seed(0)
    options = {"nf": 8, "ch_mult": (1, 2), "num_res_blocks": 1, "attn_resolutions": (4,), "init_scale": 1.0,
               **overrides}
    return build_network("ncsnpp_digits", **options)


def _state(batch=4, channels=2, size=8, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, channels, size, size, generator=gen), 0.05 + 0.9 * torch.rand(batch, generator=gen)


def _rel_error(x, exact):
    """Relative RMS error of x against exact."""
    return ((x.float() - exact).square().mean().sqrt() / exact.square().mean().sqrt()).item()


def _fp32_and_bf16_autocast(net):
    """(u, t, the float32 output, the bf16 autocast output) of `net` on a fixed batch of 16."""
    u, t = _state(batch=16)
    with torch.no_grad():
        exact = net(u, t)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = net(u, t).float()
    return u, t, exact, autocast


def _block_signatures(net, u, t):
    """The distinct (block class, input shapes, resampling) of one eager forward: the graphs regional compilation
    must make, one each."""
    seen = set()
    hooks = [m.register_forward_pre_hook(lambda m, args: seen.add(
        (type(m).__name__, tuple(tuple(a.shape) for a in args), getattr(m, "up", None), getattr(m, "down", None))))
        for m in repeated_blocks(net)]
    with torch.no_grad():
        net(u, t)
    for hook in hooks:
        hook.remove()
    return seen


def _compiled_against_eager(backend: str, **overrides):
    """(graphs made, graphs expected) after one forward and backward of block-compiled and eager copies of a tiny
    NCSN++, whose outputs and parameter gradients are checked to agree within float32 rounding."""
    from torch._dynamo.utils import counters

    eager = _tiny_ncsnpp(**overrides)
    fast = copy.deepcopy(eager)
    u, t = _state()
    expected = len(_block_signatures(eager, u, t))
    torch._dynamo.reset()
    counters.clear()
    compile_blocks(fast, backend=backend)
    out_fast = fast(u, t)
    out_fast.square().mean().backward()
    out_eager = eager(u, t)
    out_eager.square().mean().backward()
    torch.testing.assert_close(out_fast, out_eager, rtol=1e-5, atol=1e-5 * out_eager.abs().max().item())
    # one scale for all gradients: some are zero in exact arithmetic (attention's key bias) and only rounding noise
    scale = max(p.grad.abs().max().item() for p in eager.parameters() if p.grad is not None)
    for (name, p_fast), p_eager in zip(fast.named_parameters(), eager.parameters(), strict=True):
        if p_eager.grad is not None:
            torch.testing.assert_close(p_fast.grad, p_eager.grad, rtol=1e-4, atol=1e-5 * scale, msg=name)
    assert fast.state_dict().keys() == eager.state_dict().keys()  # checkpoints do not see the compilation
    return counters["stats"]["unique_graphs"], expected


@pytest.mark.slow
def test_inductor_compiled_blocks_equal_the_eager_network():
    """inductor (C++ on the CPU) per block, on one resolution (three block graphs: about 20 s to compile)."""
    made, expected = _compiled_against_eager("inductor", ch_mult=(1,), attn_resolutions=(8,))
    assert made == expected == 3


def test_every_block_shape_is_compiled_once_and_none_falls_back():
    """Every block kind (plain, channel-changing, down, up, attention) at two resolutions: exactly one graph per
    distinct block shape (past dynamo's recompile limit a block would silently run eagerly)."""
    made, expected = _compiled_against_eager("aot_eager")
    assert made == expected > 8


def test_a_network_without_repeated_blocks_is_refused_by_name():
    with pytest.raises(ValueError, match="ToyMLP declares no repeated blocks"):
        compile_blocks(build_network("toy_mlp"))


def test_group_norm_in_the_compute_dtype_is_as_accurate_as_autocasts_float32_one():
    """bf16 autocast on a fixed batch: the output's error against float32 with GroupNorm in bf16 is within 10 % of
    the error with autocast's float32 GroupNorm (both mostly the convolutions' bf16 rounding); without autocast the
    setting changes nothing at all."""
    net = _tiny_ncsnpp(nf=16).eval()
    u, t, exact, fp32_norm = _fp32_and_bf16_autocast(net)
    with torch.no_grad():
        set_norm_dtype(net, "compute")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            compute_norm = net(u, t).float()
        unchanged = net(u, t)
    error, error_fp32_norm = _rel_error(compute_norm, exact), _rel_error(fp32_norm, exact)
    assert 0 < error <= 1.1 * error_fp32_norm and error < 0.02
    assert torch.equal(unchanged, exact)
    with pytest.raises(ValueError, match="norm dtype must be one of"):
        set_norm_dtype(net, "fp8")


def test_weights_cast_once_keep_the_time_embedding_in_float32():
    net = _tiny_ncsnpp(nf=16).eval()
    u, t, exact, autocast = _fp32_and_bf16_autocast(net)
    with torch.no_grad():
        cast = cast_for_inference(copy.deepcopy(net), torch.bfloat16)
        out = cast(u.bfloat16(), t).float()
    assert cast.fourier.W.dtype == torch.float32 and cast.temb[0].weight.dtype == torch.float32
    assert cast.conv_in.weight.dtype == torch.bfloat16
    err, err_autocast = _rel_error(out, exact), _rel_error(autocast, exact)
    assert err < 2 * err_autocast and err < 0.03, (err, err_autocast)
    with pytest.raises(ValueError, match="ToyMLP does not declare which of its parts must stay float32"):
        cast_for_inference(build_network("toy_mlp"), torch.bfloat16)


def test_a_graphed_network_on_the_cpu_is_the_eager_call():
    net = _tiny_ncsnpp().eval()
    u, t = _state()
    with torch.no_grad():
        assert torch.equal(GraphedNet(net)(u, t), net(u, t))


def test_samples_with_cpu_speedups_in_float32_equal_the_eager_path(digits_run, tmp_path):
    """The sampler's arithmetic is untouched: on a CPU the CUDA-graph wrapper is the eager call, so the samples'
    bytes are the eager path's; the speedups are recorded in the set's manifest."""
    import json

    from cldsgm.sampling import sample_to_dir
    from cldsgm.sources import checkpoint_source

    sets = {}
    for name, speedups in (("eager", ()), ("graphed", ("cuda-graph",))):
        source = checkpoint_source(digits_run, net_batch=8, speedups=speedups)
        sample_to_dir(source, tmp_path / name, sampler="em", nfe=4, n=8, batch_size=8, shard_size=8,
                      progress=False)
        sets[name] = np.load(next((tmp_path / name).glob("shard_*.npz")))["samples"]
    assert np.array_equal(sets["eager"], sets["graphed"])
    manifest = json.loads((tmp_path / "graphed" / "manifest.json").read_text())
    assert "cuda-graph" in json.dumps(manifest) and "speedups" not in (tmp_path / "eager" / "manifest.json").read_text()
    with pytest.raises(ValueError, match="cast-weights needs precision bf16 or fp16, not fp32"):
        checkpoint_source(digits_run, speedups=("cast-weights",))


def test_cast_weights_sample_close_to_autocast(digits_run, tmp_path):
    """bf16 weights cast once against bf16 autocast: one network call's outputs on the same states agree to bf16's
    rounding (a sampler's trajectories then diverge as any two roundings do)."""
    from cldsgm.sources import checkpoint_source

    u, t = _state(batch=8)
    u = torch.cat([u, u], dim=1)[:, :2]
    outs = {}
    for name, speedups in (("autocast", ()), ("cast", ("cast-weights",))):
        source = checkpoint_source(digits_run, precision="bf16", net_batch=8, speedups=speedups)
        outs[name] = source.score_fn(u, t)
    exact = checkpoint_source(digits_run, net_batch=8).score_fn(u, t)
    scale = exact.square().mean().sqrt()
    assert (outs["cast"] - exact).square().mean().sqrt() / scale < 0.05
    assert (outs["cast"] - outs["autocast"]).square().mean().sqrt() / scale < 0.05


@pytest.mark.parametrize(("rule", "lr", "warmup"), [("none", 2e-4, 1000), ("sqrt", 4e-4, 250), ("linear", 8e-4, 250)])
def test_the_learning_rate_rule_for_a_larger_batch(rule, lr, warmup):
    from cldsgm.training.trainer import scaled_lr

    ocfg = {"lr": 2e-4, "warmup_steps": 1000, "lr_scaling": rule, "lr_reference_batch": 128}
    assert scaled_lr(ocfg, 512) == (pytest.approx(lr), warmup)
    assert scaled_lr(ocfg, 128) == (pytest.approx(2e-4), 1000)


def test_training_follows_the_scaled_rate_and_blocks_compile(digits_data, tmp_path):
    """A digits NCSN++ trained with blocks compiled (aot_eager: the compile path without a C++ build) and GroupNorm
    in the compute dtype gives the eager run's losses; under the sqrt rule at 4x the reference batch the logged rate
    is twice optim.lr after the (quartered) warm-up."""
    from cldsgm.training import train

    def run(name, **train_options):
        config = toy_config(digits_data[0], model={"name": "ncsnpp_digits"}, loss={"mixed_score": True},
                            optim={"lr": 1e-3, "warmup_steps": 8, "lr_scaling": "sqrt", "lr_reference_batch": 4},
                            train={"steps": 4, "batch_size": 16, "checkpoint_every": 4, **train_options})
        return train(config, tmp_path / name, progress=False).history

    eager = run("eager")
    fast = run("fast", compile="blocks:aot_eager", norm_dtype="compute")
    assert [h["loss"] for h in fast] == pytest.approx([h["loss"] for h in eager], rel=1e-4)
    assert [h["lr"] for h in eager] == pytest.approx([0.0, 1e-3, 2e-3, 2e-3])


def test_blocks_compile_of_a_toy_network_is_a_config_error(diamond_data, tmp_path):
    from cldsgm.training import train

    with pytest.raises(ValueError, match="train.compile: ToyMLP declares no repeated blocks"):
        train(toy_config(diamond_data, train={"compile": "blocks:aot_eager", "steps": 2}), tmp_path / "r",
              progress=False)


def test_speedups_are_applied_by_name_and_unknown_ones_refused():
    from cldsgm.sources import fast_network

    net = fast_network(_tiny_ncsnpp().eval(), ("compile-blocks", "cuda-graph"), "fp32")
    assert isinstance(net, GraphedNet)
    assert all(block._compiled_call_impl is not None for block in repeated_blocks(net.net))
    with pytest.raises(ValueError, match=r"unknown speedup\(s\) \['turbo'\]"):
        fast_network(_tiny_ncsnpp(), ("turbo",), "fp32")
