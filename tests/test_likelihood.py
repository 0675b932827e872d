"""Likelihood oracles: the PF-ODE NLL of Gaussian data with the exact score (closed form)."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from cldsgm.eval.likelihood import bits_per_dim, dequantize, ode_likelihood, velocity_entropy
from cldsgm.oracles import GaussianMixture
from cldsgm.samplers import PerSampleNoise, sample_seeds
from cldsgm.sde import CLD, PSLD, VPSDE

from conftest import f64

S2 = 0.3
GAUSS = GaussianMixture.gaussian(2, math.sqrt(S2))


def data(n, seed=0):
    return GAUSS.sample(n, generator=torch.Generator().manual_seed(seed))


def test_vpsde_nll_equals_analytic_gaussian_nll():
    sde, x = VPSDE(), data(16)
    result = ode_likelihood(sde, GAUSS.score_fn(sde), x, probes="exact")
    expected = -multivariate_normal(np.zeros(2), float(sde.var(f64(1e-5), S2)) * np.eye(2)).logpdf(x.numpy())
    np.testing.assert_allclose(result.nll_nats.numpy(), expected, atol=2e-4)
    assert result.probes == 0 and result.nfe > 10 and result.bpd is None


@pytest.mark.parametrize("sde", [CLD(numerical_eps=1e-6), PSLD()], ids=["cld", "psld"])
def test_phase_space_joint_nll_is_exact_per_sample(sde):
    """Joint NLL + H[q] = -log N(u; 0, Sigma_{t_min}) for the v drawn from the sample's seed (first draw)."""
    x = data(16)
    result = ode_likelihood(sde, GAUSS.score_fn(sde), x, probes="exact", seed=3)
    v = math.sqrt(sde.init_v_var) * PerSampleNoise(sample_seeds(3, 0, 16)).like(x)
    cov = sde.cov(f64(1e-5), S2, sde.init_v_var)
    sigma = np.array([[float(cov.xx), float(cov.xv)], [float(cov.xv), float(cov.vv)]])
    expected = [-multivariate_normal(np.zeros(2), sigma).logpdf(np.stack([x[i].numpy(), v[i].numpy()], 1)).sum()
                for i in range(16)]
    joint = result.nll_nats + velocity_entropy(sde, 2)
    np.testing.assert_allclose(joint.numpy(), expected, atol=2e-3)


def test_cld_bound_averaged_over_v_is_the_data_nll():
    """E_v[bound] = -log p(x) + KL(q(v) || p(v | x)) and the KL vanishes as t_min -> 0."""
    sde = CLD(numerical_eps=1e-6)
    x = data(1).expand(3000, 2).contiguous()
    result = ode_likelihood(sde, GAUSS.score_fn(sde), x, probes="exact", rtol=1e-4, atol=1e-4)
    true_nll = float(-GAUSS.log_prob(x[:1]))
    mean, se = float(result.nll_nats.mean()), float(result.nll_nats.std()) / math.sqrt(3000)
    assert abs(mean - true_nll) < 4 * se + 2e-3, (mean, true_nll, se)
    # the entropy term matters: H[q] = -1.77 nats for D = 2, far outside the error bar
    assert velocity_entropy(sde, 2) == pytest.approx(-1.7673, abs=1e-4) and 1.7 > 20 * se


@pytest.mark.parametrize("probes", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased_for_the_exact_divergence(probes):
    """Same seeds give the same v, so hutchinson_i - exact_i is pure probe noise: zero mean, shrinking with probes.

    The noise is large for CLD: the symmetric part of the x-v coupling, beta (M^-1 - 1) = 12, enters z^T J z
    with random signs. The references use one probe per image and rely on averaging over images and pixels.
    """
    sde, x = CLD(numerical_eps=1e-6), data(512, seed=4)
    score = GAUSS.score_fn(sde)
    exact = ode_likelihood(sde, score, x, probes="exact", rtol=1e-4, atol=1e-4).nll_nats
    spread = {}
    for n_probes in (1, 16):
        result = ode_likelihood(sde, score, x, probes=probes, n_probes=n_probes, rtol=1e-4, atol=1e-4)
        diff = result.nll_nats - exact
        se = float(diff.std()) / math.sqrt(len(diff))
        assert abs(float(diff.mean())) < 4 * se, (n_probes, float(diff.mean()), se)
        assert result.probes == n_probes
        spread[n_probes] = float(diff.std())
    assert spread[16] < spread[1] / 2.5  # ideally 1/4


def test_bits_per_dim_conversion():
    # a density uniform on [-1, 1]^D has NLL D ln 2 nats: 8 bits per 8-bit pixel after the 7-bit offset
    dims = 3072
    assert float(bits_per_dim(torch.tensor(dims * math.log(2.0)), dims)) == pytest.approx(8.0)
    assert float(bits_per_dim(torch.tensor(0.0), dims, offset=8.0)) == 8.0
    # the velocity-entropy correction for gamma M = 0.01 adds 1.274833 bits per dim
    assert -velocity_entropy(CLD(), dims) / (dims * math.log(2)) == pytest.approx(1.274833, abs=1e-6)
    assert velocity_entropy(CLD(), 3072) == pytest.approx(-2714.56, abs=0.01)


def test_dequantize_range_and_mean():
    pixels = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    x = dequantize(pixels, generator=torch.Generator().manual_seed(0))
    assert x.dtype == torch.float32 and float(x.min()) >= -1 and float(x.max()) < 1
    # each value stays inside its own bin [2k/256 - 1, 2(k+1)/256 - 1)
    k = pixels.to(torch.float32)
    assert bool(((x >= 2 * k / 256 - 1) & (x < 2 * (k + 1) / 256 - 1)).all())
    with pytest.raises(ValueError, match="uint8"):
        dequantize(pixels.float())


@pytest.mark.parametrize(("kwargs", "match"), [({"probes": "sobol"}, "probes"), ({"n_probes": 0}, "n_probes"),
                                               ({"t_min": 0.0}, "t_min"), ({"method": "rk4"}, "ODE method")])
def test_bad_likelihood_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ode_likelihood(VPSDE(), GAUSS.score_fn(VPSDE()), data(2), **kwargs)
