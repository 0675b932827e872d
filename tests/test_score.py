"""Score parameterisation: eps <-> score <-> x0 conversions and CLD's mixed score (the CLD paper, p. 5)."""

import pytest
import torch

from cldsgm.models.score import ScoreParameterisation, reference_score
from cldsgm.sde import CLD, PSLD, VPSDE

from conftest import f64

CASES = [
    (CLD(), "hsm"),
    (CLD(), "dsm"),
    (PSLD(), "hsm"),
    (PSLD(Gamma=0.0, nu=4.0), "hsm"),
    (PSLD(Gamma=2.0, nu=0.0, decomp_mode="upper"), "hsm"),
    (VPSDE(), "dsm"),
]
IDS = ["cld-hsm", "cld-dsm", "psld", "psld-cldlike", "psld-nu0", "vpsde"]


@pytest.mark.parametrize(("sde", "objective"), CASES, ids=IDS)
def test_score_is_kernel_score_on_noise_blocks(sde, objective):
    """score_from_eps(eps) = -Sigma^{-1}(u - mu) restricted to the blocks that receive noise."""
    x0 = torch.randn(16, 2, 3, dtype=torch.float64)
    t = torch.rand(16, dtype=torch.float64) * 0.9 + 0.05
    v0 = torch.randn_like(x0) if objective == "dsm" and not isinstance(sde, VPSDE) else None
    drawn = sde.perturb(x0, t, objective, v0=v0) if v0 is not None else sde.perturb(x0, t, objective)
    score = sde.score_from_eps(sde.noise_target(drawn.eps), t, objective)
    if isinstance(sde, VPSDE):
        expected = -(drawn.u - sde.mean_coeff(t)[:, None, None] * x0) / sde.var(t)[:, None, None]
        torch.testing.assert_close(score, expected)
        return
    mean_x, mean_v = sde.mean(x0, v0, t)
    x, v = sde.split(drawn.u)
    cov = sde.perturbation_cov(t, objective).map(lambda c: c[:, None, None])
    s_x, s_v = cov.solve(x - mean_x, v - mean_v)
    got_x, got_v = sde.split(score)
    if "v" in sde.noise_blocks:
        torch.testing.assert_close(got_v, -s_v)
    if "x" in sde.noise_blocks:
        torch.testing.assert_close(got_x, -s_x)


@pytest.mark.parametrize(("sde", "objective"), CASES, ids=IDS)
@pytest.mark.parametrize("mixed", [False, True])
def test_conversions_round_trip(sde, objective, mixed):
    param = ScoreParameterisation(sde, objective=objective, mixed_score=mixed)
    u = torch.randn(8, sde.state_channels(3), 2, 2, dtype=torch.float64)
    t = torch.rand(8, dtype=torch.float64) * 0.9 + 0.05
    eps = torch.randn(8, sde.noise_channels(3), 2, 2, dtype=torch.float64)
    torch.testing.assert_close(param.eps(param.output_for_eps(eps, u, t), u, t), eps)
    score = sde.score_from_eps(eps, t, objective)
    torch.testing.assert_close(sde.eps_from_score(score, t, objective), eps)


@pytest.mark.parametrize(("sde", "objective"), [c for c in CASES if c[1] == "hsm"] + [CASES[-1]],
                         ids=[i for i, c in zip(IDS, CASES, strict=True) if c[1] == "hsm"] + ["vpsde"])
def test_x0_recovered_from_true_eps(sde, objective):
    x0 = torch.randn(8, 3, 4, dtype=torch.float64)
    t = torch.rand(8, dtype=torch.float64) * 0.8 + 0.01
    drawn = sde.perturb(x0, t, objective)
    param = ScoreParameterisation(sde, objective=objective, mixed_score=True)
    output = param.output_for_eps(sde.noise_target(drawn.eps), drawn.u, t)
    torch.testing.assert_close(param.x0(output, drawn.u, t), x0, rtol=1e-7, atol=1e-8)


def test_cld_mixed_score_with_zero_network_is_gaussian_reference():
    sde = CLD()
    param = ScoreParameterisation(sde, objective="hsm", mixed_score=True)
    u = torch.randn(4, 6, 2, 2, dtype=torch.float64)
    t = f64(0.01, 0.1, 0.5, 1.0)
    score = param.score(torch.zeros(4, 3, 2, 2, dtype=torch.float64), u, t)
    x, v = sde.split(u)
    vv = sde.perturbation_cov(t, "hsm").vv[:, None, None, None]
    torch.testing.assert_close(sde.split(score)[1], -v / vv)
    # at t = 1 the reference is within 1.3e-5 (relative) of the prior score -M^-1 v
    rel = (sde.split(score)[1][-1] / (-v[-1] * sde.m_inv) - 1).abs().max()
    assert 1e-5 < float(rel) < 1.4e-5
    # DSM: l_t from the DSM kernel, but Sigma_vv from HSM (the reference's choice)
    dsm = ScoreParameterisation(sde, objective="dsm", mixed_score=True)
    torch.testing.assert_close(sde.split(dsm.score(torch.zeros(4, 3, 2, 2, dtype=torch.float64), u, t))[1], -v / vv)
    out = torch.randn(4, 3, 2, 2, dtype=torch.float64)
    ell_dsm = sde.ell(t, "dsm")[:, None, None, None]
    torch.testing.assert_close(sde.split(dsm.score(out, u, t))[1], -v / vv - ell_dsm * out)


def test_vpsde_mixed_reference_is_standard_normal_score():
    sde = VPSDE()
    u = torch.randn(5, 3, dtype=torch.float64)
    torch.testing.assert_close(reference_score(sde, u, f64(0.3)), -u)
    param = ScoreParameterisation(sde, objective="dsm", mixed_score=True)
    torch.testing.assert_close(param.score(torch.zeros_like(u), u, f64(0.3)), -u)


def test_score_fn_casts_time_once_and_broadcasts_scalar_time():
    sde = CLD()
    seen = {}

    def net(u, t):
        seen["t"] = t
        return torch.zeros(u.shape[0], 2, dtype=u.dtype)

    score_fn = ScoreParameterisation(sde, objective="hsm", mixed_score=False).score_fn(net)
    out = score_fn(torch.randn(3, 4), torch.tensor(0.5, dtype=torch.float64))
    assert out.shape == (3, 4) and out.dtype == torch.float32
    assert seen["t"].shape == (3,) and seen["t"].dtype == torch.float32


def test_unknown_objective_for_parameterisation():
    with pytest.raises(ValueError, match="objective"):
        ScoreParameterisation(VPSDE(), objective="hsm", mixed_score=False)
