"""Loss oracles: closed-form losses at the exact score, and HSM = DSM in expectation."""

import math

import numpy as np
import pytest
import torch

from cldsgm.losses import sample_time, score_matching_loss
from cldsgm.models.score import ScoreParameterisation
from cldsgm.sde import CLD, PSLD, VPSDE

from conftest import f64


def zero_net(channels):
    return lambda u, t: torch.zeros(u.shape[0], channels, *u.shape[2:], dtype=u.dtype)


def test_sample_time_range_and_dtype():
    t = sample_time(100_000, 1e-5)
    assert t.dtype == torch.float64 and float(t.min()) >= 1e-5 and float(t.max()) <= 1
    assert abs(float(t.mean()) - 0.5) < 0.005


def test_exact_output_gives_zero_loss_with_mixed_score():
    """A network returning eps_v - v_t / (l_t Sigma_vv) makes the reweightedv2 loss vanish."""
    sde = CLD()
    x0 = torch.randn(32, 3, 2, 2, dtype=torch.float64)
    t = sample_time(32)
    eps = torch.randn(32, 6, 2, 2, dtype=torch.float64)
    ell = sde.ell(t)[:, None, None, None]
    vv = sde.perturbation_cov(t).vv[:, None, None, None]

    def exact_net(u, t_net):
        return sde.split(eps)[1] - sde.split(u)[1] / (ell * vv)

    loss = score_matching_loss(sde, exact_net, x0, mixed_score=True, t=t, eps=eps)
    assert float(loss.abs().max()) < 1e-9


@pytest.mark.parametrize(("sde", "objective"), [(CLD(), "hsm"), (CLD(), "dsm"), (PSLD(), "hsm"), (VPSDE(), "dsm")],
                         ids=["cld-hsm", "cld-dsm", "psld", "vpsde"])
def test_zero_network_loss_equals_dimension(sde, objective):
    n, dims = 20_000, 12
    x0 = torch.randn(n, 3, 2, 2)
    noise_ch = sde.noise_channels(3)
    loss = score_matching_loss(sde, zero_net(noise_ch), x0, objective=objective)
    expected = dims * len(sde.noise_blocks)
    assert abs(float(loss.mean()) - expected) < 5 * math.sqrt(2 * expected / n)
    mean_loss = score_matching_loss(sde, zero_net(noise_ch), x0, objective=objective, reduction="mean")
    assert abs(float(mean_loss.mean()) - 1) < 5 * math.sqrt(2 / (expected * n))


def test_likelihood_weighting_is_gamma_beta_times_score_error():
    sde = CLD(beta_min=1.0, beta_max=6.0)
    x0 = torch.randn(16, 2, dtype=torch.float64)
    t, eps = sample_time(16), torch.randn(16, 4, dtype=torch.float64)
    out = torch.randn(16, 2, dtype=torch.float64)
    net = lambda u, t_net: out  # noqa: E731
    drawn = sde.perturb(x0, t, eps=eps)
    ell = sde.ell(t)[:, None]
    vv = sde.perturbation_cov(t).vv[:, None]
    model_score = -sde.split(drawn.u)[1] / vv - ell * out
    true_score = -ell * sde.split(eps)[1]
    gamma_beta = (sde.friction * sde.beta(t))[:, None]
    expected = (gamma_beta * (model_score - true_score) ** 2).sum(1)
    got = score_matching_loss(sde, net, x0, weighting="likelihood", mixed_score=True, t=t, eps=eps)
    torch.testing.assert_close(got, expected)
    v1 = score_matching_loss(sde, net, x0, weighting="reweightedv1", mixed_score=True, t=t, eps=eps)
    v2 = score_matching_loss(sde, net, x0, weighting="reweightedv2", mixed_score=True, t=t, eps=eps)
    torch.testing.assert_close(v1, gamma_beta[:, 0] * v2)


@pytest.mark.parametrize("sde", [CLD(), PSLD(), PSLD(Gamma=0.3, nu=2.0)], ids=["cld", "psld", "psld-b"])
def test_gaussian_oracle_network_attains_irreducible_loss(sde):
    """For x0 ~ N(0, s^2) the best eps is -L^T s*(u_t); its loss is tr(I - L^T Sigma_t^{-1} L) on noise blocks."""
    s2, n, t0 = 0.3, 200_000, 0.2
    t = torch.full((n,), t0, dtype=torch.float64)
    marginal = sde.cov(f64(t0), s2, sde.init_v_var).add_diag(sde.numerical_eps)

    def oracle_net(u, t_net):
        x, v = sde.split(u)
        s_x, s_v = marginal.solve(x, v)
        return sde.eps_from_score(sde.join(-s_x, -s_v), t, "hsm")

    x0 = math.sqrt(s2) * torch.randn(n, 1, dtype=torch.float64)
    loss = score_matching_loss(sde, oracle_net, x0, t=t)
    f = sde.factor(f64(t0))
    lmat = np.array([[float(f.a), 0.0], [float(f.b), float(f.c)]])
    sigma = np.array([[float(marginal.xx), float(marginal.xv)], [float(marginal.xv), float(marginal.vv)]])
    residual = np.eye(2) - lmat.T @ np.linalg.solve(sigma, lmat)
    expected = sum(residual[i, i] for i, b in enumerate(("x", "v")) if b in sde.noise_blocks)
    assert 0.01 < expected < 2
    assert abs(float(loss.mean()) - expected) < 5 * float(loss.std()) / math.sqrt(n)
    # the oracle beats a zero network by a wide margin
    assert float(loss.mean()) < 0.8 * len(sde.noise_blocks)


def test_hsm_and_dsm_gradients_agree_in_expectation():
    """E[grad DSM] = E[grad HSM] for the same score model and the likelihood weighting (paper App. C)."""
    sde = CLD(numerical_eps=1e-6)
    n, chunks = 400_000, 20
    gen = torch.Generator().manual_seed(7)
    x0 = torch.where(torch.rand(n, 1, generator=gen) < 0.5, -0.5, 0.5).double() + 0.1 * torch.randn(
        n, 1, generator=gen, dtype=torch.float64)
    t = sample_time(n, 0.05, generator=gen)
    theta = torch.tensor([0.3, -1.2, 0.1, 0.5], dtype=torch.float64, requires_grad=True)

    def model_score(u):  # a fixed, objective-independent score model s_theta(u) for v
        return theta[0] * u[:, :1] + theta[1] * u[:, 1:] + theta[2] + theta[3] * u[:, :1] * u[:, 1:]

    def grads(objective, sde=sde):
        ell = sde.ell(t, objective)[:, None]
        net = lambda u, t_net: -model_score(u) / ell  # noqa: E731  (mixed off: s = -l_t * output)
        losses = score_matching_loss(sde, net, x0, objective=objective, weighting="likelihood", t=t, generator=gen)
        per_chunk = [torch.autograd.grad(chunk.mean(), theta, retain_graph=True)[0]
                     for chunk in losses.chunk(chunks)]
        stacked = torch.stack(per_chunk)
        return stacked.mean(0), stacked.std(0) / math.sqrt(chunks)

    g_hsm, se_hsm = grads("hsm")
    g_dsm, se_dsm = grads("dsm")
    z = (g_hsm - g_dsm).abs() / torch.sqrt(se_hsm**2 + se_dsm**2)
    assert (z < 4.5).all(), (g_hsm, g_dsm, z)
    # The test has power: HSM that marginalises the wrong v0 law (gamma 4, not 0.04) is told apart.
    g_wrong, se_wrong = grads("hsm", CLD(numerical_eps=1e-6, gamma=4.0))
    z_wrong = (g_wrong - g_dsm).abs() / torch.sqrt(se_wrong**2 + se_dsm**2)
    assert (z_wrong > 4.5).any(), z_wrong


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"weighting": "fid"}, "weighting"), ({"reduction": "max"}, "reduction"), ({"t_min": 0.0}, "t_min"),
     ({"objective": "ism"}, "objective")],
)
def test_bad_loss_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        score_matching_loss(CLD(), zero_net(1), torch.zeros(2, 1), **kwargs)


def test_parameterisation_rejects_hsm_for_vpsde():
    with pytest.raises(ValueError, match="objective"):
        score_matching_loss(VPSDE(), zero_net(1), torch.zeros(2, 1), objective="hsm")
    assert ScoreParameterisation(VPSDE(), objective="dsm", mixed_score=True).mixed_score
