"""Networks: parameter counts of the paper's configurations, shapes, FIR resampling and registry errors."""

import pytest
import torch

from cldsgm.models.layers import fir_downsample, fir_upsample
from cldsgm.models.registry import PRESETS, build_network, count_parameters


@pytest.mark.parametrize(("name", "trainable", "total"), [
    ("ncsnpp_cifar10_cld", 107_593_859, 107_593_987),  # the paper's 107.6M (128 frozen Fourier weights)
    ("ncsnpp_cifar10_vpsde", 107_586_947, 107_587_075),
    ("toy_mlp", 50_562, 50_562),
    ("toy_resnet", 84_996, 84_996),
])
def test_parameter_counts_match_the_paper(name, trainable, total):
    with torch.device("meta"):  # no memory: the CIFAR model has 107.6M parameters
        net = build_network(name)
    assert count_parameters(net) == trainable
    assert count_parameters(net, trainable_only=False) == total


@pytest.mark.parametrize("name", ["ncsnpp_cifar10_cld", "ncsnpp_cifar10_psld", "ncsnpp_cifar10_psld_small",
                                  "ncsnpp_cifar10_vpsde"])
def test_cifar_networks_forward_at_reduced_width(name):
    net = build_network(name, nf=16, num_res_blocks=1)
    options = PRESETS[name][1]
    out = net(torch.randn(2, options["in_channels"], 32, 32), torch.rand(2) * 0.99 + 0.01)
    assert out.shape == (2, options["out_channels"], 32, 32) and torch.isfinite(out).all()


def test_digits_network_and_toy_networks_forward():
    out = build_network("ncsnpp_digits")(torch.randn(3, 2, 8, 8), torch.rand(3) + 1e-3)
    assert out.shape == (3, 1, 8, 8)
    for name in ("toy_mlp", "toy_resnet"):
        assert build_network(name)(torch.randn(5, 4), torch.rand(5) + 1e-3).shape == (5, 2)


def test_fir_resampling_is_the_1_3_3_1_filter_and_adjoint():
    x = torch.randn(1, 1, 16, 16, dtype=torch.float64)
    down = fir_downsample(x)
    taps = torch.tensor([1.0, 3.0, 3.0, 1.0], dtype=torch.float64) / 8
    # interior pixel (i, j) of the output averages rows/cols 2i-1 .. 2i+2 of the input
    i, j = 3, 4
    patch = x[0, 0, 2 * i - 1:2 * i + 3, 2 * j - 1:2 * j + 3]
    assert float(down[0, 0, i, j]) == pytest.approx(float(taps @ patch @ taps))
    y = torch.randn(1, 1, 8, 8, dtype=torch.float64)
    # upsampling (gain 4) is 4x the adjoint of downsampling
    lhs = float((fir_downsample(x) * y).sum())
    rhs = float((x * fir_upsample(y)).sum()) / 4
    assert lhs == pytest.approx(rhs, rel=1e-10)
    assert fir_upsample(torch.ones(1, 1, 4, 4))[0, 0, 2:6, 2:6].allclose(torch.ones(4, 4))


def test_registry_rejects_unknown_network_and_option():
    with pytest.raises(ValueError, match="unknown network 'unet'"):
        build_network("unet")
    with pytest.raises(ValueError, match="unknown option"):
        build_network("toy_mlp", channels=3)
    with pytest.raises(ValueError, match="not divisible"):
        build_network("ncsnpp_digits", image_size=7)
