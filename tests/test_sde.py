"""Oracles for the forward processes: closed forms, stationarity and special-case reductions."""

import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp
from scipy.linalg import expm
from scipy.stats import multivariate_normal

from cldsgm.sde import CLD, PSLD, VPSDE, LinearBeta, PhaseSpaceSDE

from conftest import f64

PHASE_SDES = [
    CLD(numerical_eps=0.0),
    CLD(beta_min=0.1, beta_max=7.0, m_inv=2.0, gamma=0.3, numerical_eps=0.0),
    PSLD(numerical_eps=0.0),
    PSLD(Gamma=0.5, nu=2.0, beta_min=1.0, beta_max=6.0, kappa=0.1, numerical_eps=0.0),
    PSLD(Gamma=3.0, nu=0.0, kappa=0.2, numerical_eps=0.0, decomp_mode="upper"),
]
IDS = ["cld", "cld-linear-beta", "psld", "psld-linear-beta", "psld-nu0"]


def drift_np(sde: PhaseSpaceSDE) -> np.ndarray:
    return np.array(sde.drift_matrix)


def cov_np(cov, i=0) -> np.ndarray:
    xx, xv, vv = (float(c.reshape(-1)[i]) for c in (cov.xx, cov.xv, cov.vv))
    return np.array([[xx, xv], [xv, vv]])


@pytest.mark.parametrize("sde", PHASE_SDES, ids=IDS)
def test_critical_damping_double_eigenvalue(sde):
    a = drift_np(sde)
    eig = np.linalg.eigvals(a)
    np.testing.assert_allclose(eig, [-sde.lam, -sde.lam], atol=1e-7)
    np.testing.assert_allclose((a + sde.lam * np.eye(2)) @ (a + sde.lam * np.eye(2)), 0, atol=1e-12)


def test_cld_default_eigenvalue_and_discriminant():
    sde = CLD()
    assert sde.friction == 1.0 and sde.lam == 2.0
    assert (sde.friction * sde.m_inv) ** 2 - 4 * sde.m_inv == 0


@pytest.mark.parametrize("sde", PHASE_SDES, ids=IDS)
def test_mean_equals_expm_of_drift(sde):
    x0, v0 = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    for t in (1e-5, 0.01, 0.3, 1.0):
        clock = float(sde.clock(f64(t)))
        phi = expm(clock * drift_np(sde))
        mean_x, mean_v = sde.mean(x0, v0, f64(t))
        np.testing.assert_allclose(mean_x.numpy(), phi[0, 0] * x0.numpy() + phi[0, 1] * v0.numpy(), atol=1e-12)
        np.testing.assert_allclose(mean_v.numpy(), phi[1, 0] * x0.numpy() + phi[1, 1] * v0.numpy(), atol=1e-12)


def test_cld_mean_coefficients_at_t1():
    phi = [float(c) for c in CLD().transition(torch.tensor(4.0, dtype=torch.float64))]
    np.testing.assert_allclose(phi, [3.019164e-3, 5.367402e-3, -1.341851e-3, -2.348238e-3], rtol=2e-6)


@pytest.mark.parametrize("sde", PHASE_SDES, ids=IDS)
@pytest.mark.parametrize("cov0", [(0.0, 0.0), (0.0, 0.01), (0.3, 0.0), (2.0, 0.7)])
def test_covariance_solves_lyapunov_ode(sde, cov0):
    """dSigma/dt = beta(t) (A Sigma + Sigma A^T + Dbar), integrated by RK45, for any diagonal Sigma_0."""
    a, d = drift_np(sde), np.diag(sde.noise)

    def rhs(t, flat):
        s = flat.reshape(2, 2)
        return (float(sde.beta(torch.tensor(t))) * (a @ s + s @ a.T + d)).ravel()

    times = [0.01, 0.1, 0.5, 1.0]
    sol = solve_ivp(rhs, (0, 1), np.diag(cov0).ravel(), t_eval=times, rtol=1e-10, atol=1e-13, method="RK45")
    closed = sde.cov(torch.tensor(times, dtype=torch.float64), *cov0)
    for i in range(len(times)):
        np.testing.assert_allclose(cov_np(closed, i), sol.y[:, i].reshape(2, 2), rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("sde", PHASE_SDES, ids=IDS)
def test_stationary_law_is_invariant(sde):
    a, sigma_inf = drift_np(sde), np.diag([1.0, sde.mass])
    np.testing.assert_allclose(a @ sigma_inf + sigma_inf @ a.T + np.diag(sde.noise), 0, atol=1e-12)
    cov = sde.cov(f64(0.001, 0.2, 1.0), 1.0, sde.mass)
    for i in range(3):
        np.testing.assert_allclose(cov_np(cov, i), sigma_inf, atol=1e-12)


@pytest.mark.parametrize("sde", PHASE_SDES, ids=IDS)
def test_long_time_limit_is_prior(sde):
    long = PhaseSpaceSDE(LinearBeta(60.0, 60.0), sde.drift_matrix, sde.noise, sde.mass, sde.init_v_var, 0.0,
                         sde.decomp_mode)
    cov = long.perturbation_cov(f64(1.0), "hsm")
    np.testing.assert_allclose(cov_np(cov), np.diag([1.0, sde.mass]), atol=1e-10)


def test_cld_small_time_limits():
    sde = CLD(numerical_eps=0.0)
    np.testing.assert_allclose(cov_np(sde.perturbation_cov(f64(0.0), "hsm")), np.diag([0, 0.01]), atol=1e-15)
    np.testing.assert_allclose(cov_np(sde.perturbation_cov(f64(0.0), "dsm")), 0, atol=1e-15)
    assert float(sde.perturbation_cov(f64(1e-5)).vv) == pytest.approx(1.007679e-2, rel=1e-6)


# the CLD paper's App. B.1 kernel: exact (60-digit) values, beta = 4, M^-1 = 4, gamma = 0.04, no eps.
CLD_TABLE = [
    (1.0, 0.999984, 7.0762e-6, 0.2499969, 2.000012, 2.000013),
    (0.5, 0.9864607, 5.28689e-3, 0.2479336, 2.008432, 2.008558),
    (0.1, 0.2218101, 0.1298598, 0.2157584, 2.675181, 2.685987),
    (0.01, 8.239131e-4, 6.708076e-3, 7.553549e-2, 6.913810, 7.212582),
    (1e-3, 3.193893e-6, 2.191848e-4, 1.755763e-2, 19.93710, 22.40540),
    (1e-5, 2.566416e-10, 1.606015e-6, 1.007679e-2, 193.7175, 223.6113),
]


@pytest.mark.parametrize("row", CLD_TABLE, ids=[str(r[0]) for r in CLD_TABLE])
def test_cld_published_kernel_table(row):
    t, xx, xv, vv, ell_hsm, ell_dsm = row
    sde = CLD(numerical_eps=0.0)
    cov = sde.perturbation_cov(f64(t), "hsm")
    np.testing.assert_allclose([float(cov.xx), float(cov.xv), float(cov.vv)], [xx, xv, vv], rtol=2e-6)
    # 193.7175 at t = 1e-5 is the exact value; the reference's float64 formula gives 193.7203 (1.4e-5 off).
    assert float(sde.ell(f64(t), "hsm")) == pytest.approx(ell_hsm, rel=1e-6)
    assert float(sde.ell(f64(t), "dsm")) == pytest.approx(ell_dsm, rel=1e-6)


def test_numerical_eps_reshapes_kernel_as_the_reference():
    ell = CLD(numerical_eps=1e-9).ell(f64(1e-5, 1e-3, 0.1))
    np.testing.assert_allclose(ell.numpy(), [11.1634, 19.918, 2.67518], rtol=1e-4)
    ell = CLD(numerical_eps=1e-6).ell(f64(1e-5, 1e-3, 0.1))
    np.testing.assert_allclose(ell.numpy(), [9.963, 12.800, 2.67517], rtol=1e-3)
    # eps goes on the diagonal only, after the algebra
    exact = CLD(numerical_eps=0.0).perturbation_cov(f64(0.3))
    shifted = CLD(numerical_eps=1e-3).perturbation_cov(f64(0.3))
    assert float(shifted.xx - exact.xx) == pytest.approx(1e-3) and float(shifted.xv - exact.xv) == 0


def test_ell_asymptotics_without_eps():
    sde = CLD(numerical_eps=0.0)
    t = f64(1e-7)
    clock = sde.clock(t)
    assert float(sde.ell(t, "hsm") ** 2 * clock) == pytest.approx(1.5 / sde.friction, rel=1e-3)
    assert float(sde.ell(t, "dsm") ** 2 * clock) == pytest.approx(2.0 / sde.friction, rel=1e-3)


def test_psld_published_values():
    sde = PSLD(Gamma=0.01, nu=4.01, numerical_eps=0.0)
    phi = [float(c) for c in sde.transition(sde.clock(f64(1.0)))]
    np.testing.assert_allclose(phi, [0.0029007806, 0.0051569432, -0.0012892358, -0.0022561627], rtol=1e-7)
    cov = sde.perturbation_cov(f64(1.0))
    np.testing.assert_allclose(cov_np(cov), [[0.9999852, 6.5321668e-6], [6.5321668e-6, 0.24999712]], rtol=1e-7)
    factor = cov.factor("lower")
    np.testing.assert_allclose([float(factor.a), float(factor.b), float(factor.c)],
                               [0.9999926, 6.5322151e-6, 0.49999712], rtol=1e-6)
    cov = sde.perturbation_cov(f64(0.1))
    np.testing.assert_allclose(cov_np(cov), [[0.22801074, 0.12882511], [0.12882511, 0.21603119]], rtol=1e-7)
    factor = cov.factor("lower")
    inv_t = [1 / factor.a, -factor.b / (factor.a * factor.c), 1 / factor.c]
    np.testing.assert_allclose([float(c) for c in inv_t], [2.0942202, -1.4928103, 2.6421619], rtol=1e-7)
    cov = sde.perturbation_cov(f64(1e-3))
    np.testing.assert_allclose([float(cov.xx), float(cov.xv), float(cov.vv)],
                               [8.3190437e-5, 2.191673e-4, 0.017576225], rtol=1e-6)
    cld_like = PSLD(Gamma=0.0, nu=4.0, numerical_eps=0.0).perturbation_cov(f64(0.1))
    np.testing.assert_allclose(cov_np(cld_like), [[0.22181006, 0.12985984], [0.12985984, 0.21575835]], rtol=1e-7)


@pytest.mark.parametrize("cld_args", [{}, {"beta_min": 0.1, "beta_max": 7.0, "m_inv": 2.0, "gamma": 0.3}])
def test_psld_reduces_to_cld(cld_args):
    """PSLD(Gamma=0, nu=Gamma_c M^-1, beta_psld = 2 beta_c, kappa=gamma) is CLD (the PSLD paper's special case)."""
    cld = CLD(numerical_eps=1e-9, **cld_args)
    psld = PSLD(Gamma=0.0, nu=cld.friction * cld.m_inv, beta_min=2 * cld.schedule.beta_min,
                beta_max=2 * cld.schedule.beta_max, kappa=cld.gamma, numerical_eps=1e-9)
    t = torch.rand(64, dtype=torch.float64)
    u = torch.randn(64, 6, 3, 3, dtype=torch.float64)
    assert psld.m_inv == pytest.approx(cld.m_inv) and psld.mass == pytest.approx(cld.mass)
    torch.testing.assert_close(psld.drift(u, t), cld.drift(u, t), rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(psld.diffusion(t, u), cld.diffusion(t, u), rtol=1e-13, atol=1e-13)
    for objective in ("hsm", "dsm"):
        a, b = psld.perturbation_cov(t, objective), cld.perturbation_cov(t, objective)
        for name in ("xx", "xv", "vv"):
            torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(psld.ell(t, objective), cld.ell(t, objective), rtol=1e-10, atol=0)
    x0 = torch.randn(64, 3, 3, 3, dtype=torch.float64)
    eps = torch.randn(64, 6, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(psld.perturb(x0, t, eps=eps).u, cld.perturb(x0, t, eps=eps).u, rtol=1e-11, atol=1e-12)
    torch.testing.assert_close(psld.prior_logp(u), cld.prior_logp(u))
    assert psld.noise_blocks == cld.noise_blocks == ("v",)


@pytest.mark.parametrize("sde", PHASE_SDES, ids=IDS)
def test_factor_reproduces_cov_and_score(sde):
    t = torch.rand(32, dtype=torch.float64) * 0.99 + 0.01
    cov = sde.perturbation_cov(t, "hsm")
    for mode in ("lower", "upper"):
        f = cov.factor(mode)
        lmat = (torch.stack([torch.stack([f.a, torch.zeros_like(f.a)]), torch.stack([f.b, f.c])])
                if mode == "lower" else
                torch.stack([torch.stack([f.a, f.b]), torch.stack([torch.zeros_like(f.a), f.c])]))
        lmat = lmat.permute(2, 0, 1)
        sigma = lmat @ lmat.transpose(1, 2)
        torch.testing.assert_close(sigma[:, 0, 0], cov.xx)
        torch.testing.assert_close(sigma[:, 0, 1], cov.xv)
        torch.testing.assert_close(sigma[:, 1, 1], cov.vv)
    f = cov.factor("lower")
    torch.testing.assert_close(sde.ell(t), 1 / f.c)
    # the kernel score -Sigma^{-1}(u - mu), restricted to v, is -l_t eps_v for u = mu + L eps
    e_x, e_v = torch.randn(32, dtype=torch.float64), torch.randn(32, dtype=torch.float64)
    r_x, r_v = f.matvec(e_x, e_v)
    _, s_v = cov.solve(r_x, r_v)
    torch.testing.assert_close(-s_v, -sde.ell(t) * e_v)
    torch.testing.assert_close(cov.logdet(), torch.log(cov.det()))


@pytest.mark.parametrize("sde", PHASE_SDES[:4], ids=IDS[:4])
@pytest.mark.parametrize("objective", ["hsm", "dsm"])
def test_kernel_samples_have_stated_moments(sde, objective):
    n, t = 200_000, f64(0.05)
    x0 = torch.full((n, 1), 0.7, dtype=torch.float64)
    drawn = sde.perturb(x0, t.expand(n), objective)
    x, v = drawn.u[:, 0], drawn.u[:, 1]
    mean_x, mean_v = sde.mean(x0[:1], None, t)
    # DSM draws v0 ~ N(0, gamma M): marginally the same law as HSM.
    cov = sde.cov(t, 0.0, sde.init_v_var).add_diag(sde.numerical_eps)
    se = 5 / math.sqrt(n)
    assert abs(float(x.mean() - mean_x)) < se * math.sqrt(float(cov.xx))
    assert abs(float(v.mean() - mean_v)) < se * math.sqrt(float(cov.vv))
    sample_cov = np.cov(np.stack([x.numpy(), v.numpy()]))
    scale = np.sqrt(np.outer(np.diag(cov_np(cov)), np.diag(cov_np(cov))))
    np.testing.assert_allclose(sample_cov / scale, cov_np(cov) / scale, atol=8 * math.sqrt(2 / n))


@pytest.mark.parametrize("sde", [PHASE_SDES[1], PHASE_SDES[3]], ids=["cld-linear-beta", "psld-linear-beta"])
def test_forward_sde_simulation_matches_kernel(sde):
    """Fine Euler-Maruyama paths of the forward SDE (time-dependent beta) reach the closed-form kernel."""
    n, steps, t_end = 20_000, 2000, 0.4
    gen = torch.Generator().manual_seed(3)
    x = torch.full((n, 1), 0.5, dtype=torch.float64)
    v = math.sqrt(sde.init_v_var) * torch.randn(n, 1, generator=gen, dtype=torch.float64)
    u, dt = torch.cat([x, v], 1), t_end / steps
    for i in range(steps):
        t = torch.tensor(i * dt, dtype=torch.float64)
        u = u + sde.drift(u, t) * dt + sde.diffusion(t, u) * math.sqrt(dt) * torch.randn(u.shape, generator=gen,
                                                                                         dtype=torch.float64)
    mean_x, mean_v = sde.mean(torch.full((1, 1), 0.5, dtype=torch.float64), None, f64(t_end))
    cov = cov_np(sde.cov(f64(t_end), 0.0, sde.init_v_var))
    mean_err = np.abs(u.mean(0).numpy() - [float(mean_x), float(mean_v)])
    assert (mean_err < 5 * np.sqrt(np.diag(cov) / n) + 2e-3).all(), mean_err
    np.testing.assert_allclose(np.cov(u.numpy().T), cov, atol=0.03 * cov.max())


@pytest.mark.parametrize("sde", PHASE_SDES + [VPSDE()], ids=IDS + ["vpsde"])
def test_probability_flow_transports_gaussian_marginals(sde):
    """With the exact score of N(0, Sigma_t) the PF velocity K u satisfies K Sigma + Sigma K^T = dSigma/dt."""
    t, h = f64(0.37), 1e-6
    if isinstance(sde, VPSDE):
        sigma = np.array([[float(sde.var(t, 0.3))]])
        dsigma = (float(sde.var(t + h, 0.3)) - float(sde.var(t - h, 0.3))) / (2 * h)
        basis = torch.eye(1, dtype=torch.float64)
        score = -basis / sigma[0, 0]
    else:
        sigma = cov_np(sde.cov(t, 0.3, 0.05))
        dsigma = (cov_np(sde.cov(t + h, 0.3, 0.05)) - cov_np(sde.cov(t - h, 0.3, 0.05))) / (2 * h)
        basis = torch.eye(2, dtype=torch.float64)
        score = -basis @ torch.from_numpy(np.linalg.inv(sigma))
    velocity = -sde.reverse_drift(basis, t, score, probability_flow=True)  # rows: K e_i
    k = velocity.numpy().T
    np.testing.assert_allclose(k @ sigma + sigma @ k.T, np.atleast_2d(dsigma), rtol=1e-6, atol=1e-8)
    # and the reverse SDE drift carries the full g^2 s
    rev = sde.reverse_drift(basis, t, score) + sde.drift(basis, t)
    pf = sde.reverse_drift(basis, t, score, probability_flow=True) + sde.drift(basis, t)
    torch.testing.assert_close(rev, 2 * pf)


@pytest.mark.parametrize("sde", PHASE_SDES + [VPSDE()], ids=IDS + ["vpsde"])
def test_prior_logp_score_and_samples(sde):
    u = torch.randn(5, sde.state_channels(3), dtype=torch.float64)
    variances = [1.0] * 3 + ([sde.mass] * 3 if isinstance(sde, PhaseSpaceSDE) else [])
    expected = multivariate_normal(np.zeros(len(variances)), np.diag(variances)).logpdf(u.numpy())
    np.testing.assert_allclose(sde.prior_logp(u).numpy(), expected, rtol=1e-12)
    u.requires_grad_(True)
    (grad,) = torch.autograd.grad(sde.prior_logp(u).sum(), u)
    torch.testing.assert_close(sde.prior_score(u), grad)
    draws = sde.prior_sample((100_000, len(variances)), dtype=torch.float64)
    np.testing.assert_allclose(draws.var(0).numpy(), variances, rtol=0.03)


def test_vpsde_kernel():
    sde = VPSDE()
    t = f64(1e-5, 0.1, 1.0)
    clock = 0.1 * t + 0.5 * 19.9 * t**2
    torch.testing.assert_close(sde.mean_coeff(t), torch.exp(-clock / 2))
    torch.testing.assert_close(sde.var(t), 1 - torch.exp(-clock), rtol=1e-9, atol=0)
    torch.testing.assert_close(sde.var(t, 1.0), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(sde.ell(t), 1 / torch.sqrt(1 - torch.exp(-clock)), rtol=1e-8, atol=0)


@pytest.mark.parametrize(
    ("factory", "name"),
    [
        (lambda: CLD(beta_min=-1.0), "beta_min"),
        (lambda: CLD(beta_max=-4.0), "beta_max"),
        (lambda: VPSDE(beta_min=-0.1), "beta_min"),
        (lambda: CLD(beta_min=0.0, beta_max=0.0), "both 0"),
        (lambda: CLD(m_inv=0.0), "m_inv"),
        (lambda: CLD(gamma=-0.1), "gamma"),
        (lambda: CLD(numerical_eps=-1e-9), "numerical_eps"),
        (lambda: PSLD(Gamma=0.0, nu=0.0), "Gamma and nu"),
        (lambda: PSLD(Gamma=-0.1), "Gamma"),
        (lambda: PSLD(nu=-1.0), "nu"),
        (lambda: PSLD(Gamma=1.0, nu=1.0), "Gamma == nu"),
        (lambda: PSLD(Gamma=0.0, nu=4.0, decomp_mode="upper"), "decomp_mode"),
        (lambda: PSLD(decomp_mode="qr"), "decomp_mode"),
    ],
)
def test_invalid_parameters_raise_named_value_error(factory, name):
    with pytest.raises(ValueError, match=name):
        factory()


@pytest.mark.parametrize("t", [-0.1, 1.5, float("nan")])
@pytest.mark.parametrize("sde", [CLD(), PSLD(), VPSDE()], ids=["cld", "psld", "vpsde"])
def test_time_outside_unit_interval_raises(sde, t):
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
        sde.perturb(torch.zeros(2, 1), f64(0.5, t), "hsm" if not isinstance(sde, VPSDE) else "dsm")
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
        sde.drift(torch.zeros(1, sde.state_channels(1)), f64(t))


def test_unknown_objective_raises():
    with pytest.raises(ValueError, match="objective"):
        CLD().perturbation_cov(f64(0.5), "ism")
    with pytest.raises(ValueError, match="objective"):
        VPSDE().perturb(torch.zeros(2, 1), f64(0.5, 0.5), "hsm")
