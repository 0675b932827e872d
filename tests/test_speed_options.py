"""Speed options: compile, channels-last and fused Adam change how fast, never what is computed."""

import pytest
import torch

from cldsgm.training import train

from conftest import toy_config


def _losses(diamond_data, tmp_path, name, **train_options):
    fused = train_options.pop("fused", False)
    config = toy_config(diamond_data, train={"steps": 12, "log_every": 1, "checkpoint_every": 12, **train_options},
                        optim={"lr": 1e-3, "fused": fused})
    return [row["loss"] for row in train(config, tmp_path / name, progress=False).history]


def test_compile_channels_last_and_fused_adam_train_the_same_model(diamond_data, tmp_path):
    eager = _losses(diamond_data, tmp_path, "eager")
    # aot_eager: the compile path without a C++ toolchain in the test (inductor takes minutes on a CPU)
    fast = _losses(diamond_data, tmp_path, "fast", compile="aot_eager", channels_last=True, fused=True)
    assert fast == pytest.approx(eager, rel=1e-4, abs=1e-6)


def test_an_unknown_compile_backend_is_named(diamond_data, tmp_path):
    with pytest.raises(ValueError, match="train.compile: unknown torch.compile backend 'turbo'"):
        _losses(diamond_data, tmp_path, "bad", compile="turbo")


def test_flops_of_the_paper_network_per_image():
    """The CIFAR-10 NCSN++ of the CLD paper: the FLOP count the MFU benchmark divides by (forward, one image)."""
    from torch.utils.flop_counter import FlopCounterMode

    from cldsgm.models.registry import build_network

    net = build_network("ncsnpp_cifar10_cld").eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        net(torch.zeros(1, 6, 32, 32), torch.full((1,), 0.5))
    gflops = counter.get_total_flops() / 1e9
    # 2 x multiply-adds: measured 37.19 GFLOP; a hand count of the convolutions (128 channels at 32^2, 256 at
    # 16^2 and below, 8 blocks per level, 9 on the way up) plus attention at 16^2 gives 30-37
    assert 30 < gflops < 45, gflops
