"""Parity switches with the reference code (docs/architecture.md, "Deliberate choices"): each with the reference's
behaviour."""

import math

import pytest
import torch

from cldsgm.samplers import ode
from cldsgm.samplers.sde_solvers import denoise_step
from cldsgm.sde import build_sde
from cldsgm.training.trainer import _EMA

from conftest import run_cli


def _score(u, t):
    return -u  # any smooth score: the step formulas are what is checked


@pytest.mark.parametrize("name", ["cld", "psld"])
def test_denoising_step_with_either_drift(name):
    sde = build_sde(name)
    u = torch.randn(5, 4, dtype=torch.float64)
    t = torch.tensor(1e-3, dtype=torch.float64)
    score = _score(u, t)
    sde_step = denoise_step(sde, _score, u, t)
    pf_step = denoise_step(sde, _score, u, t, probability_flow=True)
    assert torch.allclose(sde_step, u + 1e-3 * sde.reverse_drift(u, t, score), rtol=0, atol=1e-15)
    assert torch.allclose(pf_step, u + 1e-3 * sde.reverse_drift(u, t, score, probability_flow=True), atol=1e-15)
    # the two differ by half the score term: t * g^2 s / 2
    assert (sde_step - pf_step).abs().max() > 1e-6


def test_ode_time_span_is_float64(monkeypatch):
    seen = {}

    def fake_integrate(fn, y0, span, **kwargs):
        seen["span"] = span
        return y0

    monkeypatch.setattr(ode, "integrate", fake_integrate)
    sde = build_sde("psld")
    ode.sample_ode(sde, _score, torch.zeros(3, 4), torch.tensor([1.0, 1e-3], dtype=torch.float64), denoise=False)
    assert seen["span"].dtype == torch.float64 and float(seen["span"][-1]) == 1.0 - 1e-3  # not 0.99900001


def test_ode_denoise_drift_is_checked():
    with pytest.raises(ValueError, match="denoise_drift must be 'sde' or 'pf'"):
        ode.sample_ode(build_sde("cld"), _score, torch.zeros(2, 4), torch.tensor([1.0, 1e-3]), denoise_drift="ode")
    done = run_cli("sample", "--oracle", "diamond", "--sde", "cld", "--sampler", "sscs", "--nfe", "4",
                   "--denoise-drift", "pf", "--num-samples", "4", "--out", "/tmp/never")
    assert done.returncode != 0 and "--denoise-drift do(es) not apply to sampler 'sscs'" in done.stderr


@pytest.mark.parametrize("warmup, decay", [(True, 2 / 11), (False, 0.5)])
def test_ema_with_and_without_warmup(warmup, decay):
    model = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    ema = _EMA(model, rate=0.5, warmup=warmup)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update()  # first update: warm-up decay min(rate, (1 + 1) / (10 + 1)), else the rate
    assert math.isclose(float(ema.model.weight), 1 - decay, rel_tol=1e-6)


def test_dropout_seeding_draws_what_torch_manual_seed_draws():
    """The trainer seeds only the CPU generator per step (cheaper than torch.manual_seed, same masks on CPU)."""
    from cldsgm.training.trainer import _seed_dropout

    torch.manual_seed(12345)
    expected = torch.nn.functional.dropout(torch.ones(64), 0.5, training=True)
    _seed_dropout(12345, torch.device("cpu"))
    assert torch.equal(torch.nn.functional.dropout(torch.ones(64), 0.5, training=True), expected)
