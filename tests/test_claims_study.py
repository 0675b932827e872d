"""The claims study (params/claims.yaml) at test size: its models on the diamond only, two training seeds, tiny
budgets, and a mixed-score ablation of the diamond's CLD model in place of the digits' (the digits' networks are the
study's cost). Every claim of the catalogue is decided, each row with its interval, seeds and detectable effect.
Also: what the study file itself asks for (seeds, ablations, snapshots) and its refusals."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from cldsgm.claims import CLAIMS
from cldsgm.study import StudyError, job_table, load_study, study_claims

from conftest import project_copy, run_snakemake


def _claims_study() -> dict:
    return yaml.safe_load(open("params/claims.yaml"))


def test_the_claims_study_decides_every_claim_with_three_seeds_per_model():
    study = load_study(_claims_study(), "params/claims.yaml")
    decided, lacking = study_claims(study)
    assert not lacking and {i.claim.id for i in decided} == set(CLAIMS)
    for inst in decided:
        if inst.a[0][0]["kind"] == "model":
            assert len(inst.a) >= 3 and len(inst.b) >= 3, inst.key
    # the ablations differ from their base in one choice and no other claim sees them
    keys = {i.key for i in decided}
    assert {"hsm-dsm-quality digits nfe50", "hsm-dsm-quality diamond nfe50", "mixed-score digits nfe50"} <= keys
    assert not any("_dsm" in m or "_nomix" in m for i in decided if not i.claim.ablation for m in i.models)
    # our SSCS against the paper's on every snapshot of the digits' learning curve
    snapshots = {i.setting.split(",")[0] for i in decided if i.claim.id == "ours-sscs" and " step " in i.setting}
    assert snapshots == {f"{m} step {s}" for m in ("digits_cld", "digits_psld") for s in (875, 1750, 2625, 3500)}
    table = job_table(study)
    ablation_rows = {r["row"] for r in table["rows"] if r["model"] == "digits_cld_dsm"}
    assert ablation_rows == {"em-quadratic-nfe10", "em-quadratic-nfe20", "em-quadratic-nfe50",
                             *(f"curve-quadratic-nfe20-step{s}" for s in (875, 1750, 2625, 3500))}
    assert "digits_cld_dsm" not in table["smoothness"] and "digits_cld" in table["loss_variance"]
    assert set(table["nll"]) == {f"diamond_{m}{s}" for m in ("cld", "psld", "vpsde", "cld_dsm")
                                 for s in ("", "-seed1", "-seed2")}


@pytest.mark.parametrize("change, message", [
    (lambda s: s["models"]["digits_cld_dsm"].update(ablation_of="diamond_cld"),
     "models.digits_cld_dsm.ablation_of 'diamond_cld' is no other study model of digits"),
    (lambda s: s["models"]["digits_vpsde"].update(samplers=["sscs"]),
     "models.digits_vpsde.samplers lists \\['sscs'\\], which sampling.samplers.vpsde does not"),
    (lambda s: s["sampling"]["curve"].update(compare=["sscsx"]),
     "sampling.curve.compare lists 'sscsx', which is neither a sampler nor a name"),
])
def test_bad_ablations_sampler_lists_and_curve_entries_are_named(change, message):
    study = _claims_study()
    change(study)
    with pytest.raises(StudyError, match=message):
        load_study(study, "params/claims.yaml")


def tiny_claims(study: dict) -> dict:
    """The claims study at test size (see the module docstring)."""
    models = {name: model for name, model in study["models"].items() if model["data"] == "diamond"}
    models["diamond_cld_mix"] = {**models["diamond_cld"], "ablation_of": "diamond_cld", "samplers": ["em"],
                                 "overrides": {**models["diamond_cld"]["overrides"], "loss.mixed_score": True}}
    for model in models.values():
        model["seeds"] = [0, 1]
        model["overrides"] = {**model["overrides"], "train.steps": 100, "train.checkpoint_every": 50,
                              "train.snapshot_every": 50, "train.log_every": 50}
    sampling = {**study["sampling"], "num_samples": {"diamond": 400}, "nfe": [10, 50],
                "curve": {**study["sampling"]["curve"], "data": ["diamond"]}}
    evaluation = {**study["evaluation"], "fd_digits": None, "smoothness": {"n": 32},
                  "loss_variance": {"n": 8, "sdes": ["cld"]}, "equilibrium": {"n": 1000, "times": 10},
                  "nll": {**study["evaluation"]["nll"], "num_samples": {"diamond": 8}, "rtol": 1e-2, "atol": 1e-2}}
    return {**study, "study": "claims_test", "tracking": {"enabled": False},
            "data": {"diamond": {"n_train": 2000, "n_test": 400}}, "models": models, "sampling": sampling,
            "evaluation": evaluation}


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.xdist_group("claims_study")
def test_the_claims_study_at_test_size_has_every_claim_row_with_an_interval(tmp_path):
    project = project_copy(tmp_path / "project")
    (project / "params" / "claims_test.yaml").write_text(yaml.safe_dump(tiny_claims(_claims_study())))
    run_snakemake(project, "--cores", "2", "--configfile", "params/claims_test.yaml", timeout=900)
    report = project / "reports" / "claims_test"
    rows = pd.read_csv(report / "claims.csv")
    assert pd.read_csv(report / "claims_undecided.csv").empty
    assert set(rows["claim"]) == set(CLAIMS)
    assert rows[["difference", "ci_low", "ci_high"]].notna().all().all()
    assert (rows["ci_low"] <= rows["difference"]).all() and (rows["difference"] <= rows["ci_high"]).all()
    assert not rows["verdict"].str.contains("one training seed").any()  # two seeds on every model side
    models = rows[~rows["setting"].str.contains("oracle-|law-")]  # exact scores and data laws: no seeds
    assert (models["seeds (A/B)"] == "2/2").all() and not models["detectable"].astype(str).str.startswith("≥").any()
    assert "diamond_cld step 50, NFE" in " ".join(rows.loc[rows["claim"] == "ours-sscs", "setting"])
    headline = json.loads((report / "metrics.json").read_text())
    assert headline["holds"] + headline["does not hold"] + headline["inconclusive"] == len(rows)
