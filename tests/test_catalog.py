"""cldsgm.catalog is the one source of names: a sampler added there (its function + its SamplerSpec) reaches the CLI,
the study schema and the job table with no other edit; the NFE arithmetic lives in one function."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from cldsgm import catalog
from cldsgm.cli import main


def sample_half_em(sde, score_fn, u, ts, *, noise, denoise=True, shrink=1.0):
    """A throwaway sampler: Euler-Maruyama with its noise scaled by `shrink` (one NFE per step)."""
    from cldsgm.samplers.sde_solvers import _finish, _steps

    for t, dt in _steps(ts):
        drift = sde.reverse_drift(u, t, score_fn(u, t))
        u = u + drift * dt + shrink * sde.diffusion(t, u) * dt**0.5 * noise.like(u)
    return _finish(sde, score_fn, u, ts, denoise)


@pytest.fixture
def registered():
    spec = catalog.SamplerSpec("halfem", sample_half_em, "EM with shrunk noise (a test's)", 1, ("cld", "psld"),
                               (catalog.Option("shrink", float, 1.0, "noise scale", minimum=0),), inpaint=True)
    catalog.register(spec)
    try:
        yield spec
    finally:
        catalog.unregister("halfem")


def test_a_registered_sampler_reaches_the_cli_the_schema_and_the_job_table(registered, tmp_path):
    from cldsgm.study import job_table, load_study

    runner = CliRunner()
    assert "halfem" in runner.invoke(main, ["sample", "--help"]).output
    out = tmp_path / "s"
    done = runner.invoke(main, ["sample", "--oracle", "diamond", "--sampler", "halfem", "--nfe", "5", "--num-samples",
                                "16", "--out", str(out), "--no-progress"])
    assert done.exit_code == 0, done.output
    assert '"sampler": "halfem"' in (out / "manifest.json").read_text()
    study = {"study": "t", "data": {"diamond": {}}, "models": {},
             "sampling": {"num_samples": {"diamond": 8}, "nfe": [4], "samplers": {"cld": ["em", "halfem"]},
                          "options": {"halfem": {"shrink": 0.5}}, "oracle": {"data": ["diamond"]}},
             "evaluation": {}}
    table = job_table(load_study(study, "t.yaml"))
    row = next(r for r in table["rows"] if r["sampler"] == "halfem")
    assert row["row"] == "halfem-uniform-nfe4" and row["options"] == {"shrink": 0.5} and row["oracle"] == "diamond"
    with pytest.raises(ValueError, match="invalid study at sampling.options.halfem.shrink"):
        load_study({**study, "sampling": {**study["sampling"], "options": {"halfem": {"shrink": "x"}}}}, "t.yaml")
    with pytest.raises(ValueError, match=r"lists .halfem.: sampler .halfem. needs a phase-space SDE \(cld or psld\)"):
        load_study({**study, "sampling": {**study["sampling"], "samplers": {"vpsde": ["halfem"]}}}, "t.yaml")


def test_a_registered_sampler_inpaints_from_its_spec_alone(registered):
    """inpaint=True in its spec: the inpaint verb, the study schema and the library take it, no other edit."""
    from cldsgm.conditional import inpaint
    from cldsgm.oracles import diamond
    from cldsgm.sde import build_sde
    from cldsgm.study import schema

    assert "halfem" in CliRunner().invoke(main, ["inpaint", "--help"]).output
    assert "halfem" in schema()["$defs"]["inpaint_sampler"]["enum"]
    sde, law = build_sde("cld"), diamond()
    known = law.sample(8, generator=torch.Generator().manual_seed(0)).to(torch.float32)
    mask = torch.tensor([[1.0, 0.0]])  # the first coordinate known
    result = inpaint(sde, law.score_fn(sde), known, mask, sampler="halfem", nfe=6,
                     shrink=0.5)
    assert torch.equal(result.x[:, 0], known[:, 0]) and torch.isfinite(result.x).all() and result.nfe == 6


def test_an_unregistered_sampler_is_gone_and_built_ins_stay(registered):
    catalog.unregister("halfem")
    assert "halfem" not in catalog.SAMPLERS
    with pytest.raises(ValueError, match="built in"):
        catalog.unregister("em")
    with pytest.raises(ValueError, match="exists already"):
        catalog.register(catalog.SAMPLERS["em"])
    catalog.register(registered)  # the fixture removes it again


@pytest.mark.parametrize("sampler, nfe, options, steps", [
    ("em", 10, {}, 9), ("sscs", 2, {}, 1), ("pc", 7, {}, 3), ("pc", 10, {"n_corrector": 2}, 3)])
def test_steps_for_a_budget(sampler, nfe, options, steps):
    assert catalog.steps_for(sampler, nfe, options) == steps


def test_budgets_a_sampler_cannot_spend_are_refused_or_rounded_down():
    with pytest.raises(ValueError, match="nfe=6 cannot be honoured by sampler 'pc': it needs 2 NFE per step"):
        catalog.steps_for("pc", 6)
    assert catalog.steps_for("pc", 6, exact=False) == 2
    assert catalog.largest_budget("pc", 8) == 7 and catalog.largest_budget("pc", 2) is None
    with pytest.raises(ValueError, match="adaptive"):
        catalog.steps_for("ode", 10)
    with pytest.raises(ValueError, match="unknown sampler 'rk4'"):
        catalog.steps_for("rk4", 10)


def test_generate_spends_what_the_catalog_says():
    from cldsgm.oracles import diamond
    from cldsgm.samplers import generate
    from cldsgm.sde import build_sde

    sde = build_sde("vpsde")
    score = diamond().score_fn(sde)
    assert generate(sde, score, 4, (2,), sampler="pc", nfe=9, n_corrector=1).nfe == 9
    assert generate(sde, score, 4, (2,), sampler="em", nfe=6).nfe == 6


def test_every_catalog_name_resolves():
    from cldsgm.oracles import oracle_law
    from cldsgm.sde import SDES

    assert set(SDES) == set(catalog.SDES)
    assert all(callable(spec.load()) for spec in catalog.SAMPLERS.values())
    assert all(oracle_law(name).dim == 2 for name in catalog.ORACLES)
    assert all(catalog.load(spec.generator)(5, __import__("numpy").random.default_rng(0)).shape == (5, 2)
               for spec in catalog.DATASETS.values() if spec.generator)
    assert isinstance(catalog.sde_name(SDES["psld"]()), str) and catalog.sde_name(SDES["psld"]()) == "psld"
    with pytest.raises(ValueError, match="not an SDE of the catalog"):
        catalog.sde_name(torch.nn.Linear(1, 1))


def test_the_learning_curve_rows_follow_the_snapshots_and_a_bad_curve_is_refused():
    """sampling.curve: one row per snapshot of each model of its datasets (the default study: 3 per digits model);
    a curve sampler one of the models' SDEs cannot use, or models that keep no snapshots, stop the study."""
    import copy

    import yaml

    from cldsgm.study import StudyError, job_table, load_study

    default = yaml.safe_load(open("params/config.yaml"))
    rows = [r for r in job_table(load_study(default, "config.yaml"))["rows"] if r["variant"] == "curve"]
    assert sorted({r["source"] for r in rows}) == ["digits_cld", "digits_psld", "digits_vpsde"]
    assert sorted({r["train_step"] for r in rows}) == [1000, 2000, 3000]
    assert {r["row"] for r in rows if r["source"] == "digits_cld"} >= {"curve-quadratic-nfe50-step1000"}
    bad = copy.deepcopy(default)
    bad["sampling"]["curve"]["sampler"] = "sscs"  # no SSCS for the VPSDE model
    with pytest.raises(StudyError, match="curve.sampler 'sscs' cannot sample model digits_vpsde"):
        load_study(bad, "bad.yaml")
    bad = copy.deepcopy(default)
    for name in ("digits_cld", "digits_psld", "digits_vpsde"):
        bad["models"][name]["overrides"] = {**bad["models"][name]["overrides"], "train.snapshot_every": 0}
    with pytest.raises(StudyError, match="keeps no snapshots"):
        load_study(bad, "bad.yaml")
