"""Conditional generation as a study: the `conditional` section of a study file (validated, expanded into
its sets by cldsgm.study.conditional_table), run through the workflow, and the report's section on it."""

import copy
import json
from pathlib import Path

import pytest
import yaml

from cldsgm.study import StudyError, conditional_table, load_study

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "params" / "conditional.yaml"


def _study() -> dict:
    return yaml.safe_load(STUDY.read_text())


def test_the_conditional_study_expands_into_its_sets(monkeypatch):
    """params/conditional.yaml: digits and diamond, PSLD and CLD, scales 0/1/2/4, two classes each (plus the exact
    score's PSLD rows), inpainting with two mask kinds on the digits and one on the diamond, each beside its baseline
    (mask none); the entries' defaults filled in (SSCS, NFE 50, quadratic)."""
    monkeypatch.chdir(ROOT)
    table = conditional_table(load_study(_study(), str(STUDY)))
    guided = [s for s in table["sets"] if s["kind"] == "guided"]
    inpainted = [s for s in table["sets"] if s["kind"] == "inpaint"]
    assert len(guided) == 5 * 2 * 4 and len(inpainted) == 2 * 3 + 2 * 2
    assert {s["scale"] for s in guided} == {0.0, 1.0, 2.0, 4.0}
    assert {(s["source"], s["sde"]) for s in guided} == {("digits_psld", "psld"), ("digits_cld", "cld"),
                                                         ("diamond_psld", "psld"), ("diamond_cld", "cld"),
                                                         ("oracle-diamond-psld", "psld")}
    assert all((s["sampler"], s["nfe"], s["striding"]) == ("sscs", 50, "quadratic") for s in table["sets"])
    first = next(s for s in guided if s["source"] == "digits_psld")
    assert first["row"] == "guided-digits_psld_clf-k3-w0" and first["classifier"] == "digits_psld_clf"
    oracle = next(s for s in guided if s["source"] == "oracle-diamond-psld")
    assert oracle["source_kind"] == "oracle" and oracle["oracle"] == "diamond" and oracle["classifier"] == "oracle"
    assert {s["mask"] for s in inpainted if s["data"] == "digits"} == {"center", "half", "none"}
    assert set(table["classifiers"]) == {"digits_cld_clf", "digits_psld_clf", "diamond_cld_clf", "diamond_psld_clf"}


def test_each_group_of_sets_knows_its_judge_and_its_distance(monkeypatch):
    """The evaluation plan lives in the study, not the workflow: digits sets are judged by the FD-digits network and
    measured by FD-digits (guided: against the training split's images of their class; completions: against the
    held-out split), diamond sets by the mixture's components and sliced W2 (guided: against the law's component;
    completions: against the held-out points); every group's two records are what the report waits for."""
    from cldsgm.study import job_table

    monkeypatch.chdir(ROOT)
    table = job_table(load_study(_study(), str(STUDY)))
    groups = table["conditional"]["groups"]
    assert len(groups) == 5 * 2 + 4 and sum(len(g["sets"]) for g in groups.values()) == 50
    digits = groups["digits_psld/guided-digits_psld_clf-k3"]
    assert digits["judge"] == "fd_classifier" and len(digits["sets"]) == 4
    assert digits["distance"] == {"verb": "fd_digits", "class": 3, "split": "train", "oracle": None}
    assert groups["digits_cld/inpaint"]["distance"] == {"verb": "fd_digits", "class": None, "split": "test",
                                                        "oracle": None}
    diamond = next(g for k, g in groups.items() if k.startswith("diamond_cld/guided"))
    assert diamond["judge"] == "oracle:diamond"
    assert diamond["distance"]["verb"] == "sample_distance" and diamond["distance"]["split"] is None
    assert groups["diamond_cld/inpaint"]["distance"]["split"] == "test"
    for key, group in groups.items():
        assert {f"records/conditional/{key}.accuracy.done",
                f"records/conditional/{key}.{group['distance']['verb']}.done"} <= set(table["records"])


def test_the_schema_masks_are_the_library_masks():
    from cldsgm.catalog import MASK_KINDS, inpaint_samplers
    from cldsgm.study import schema

    full = schema()
    inpaint = full["properties"]["conditional"]["properties"]["inpaint"]["items"]["properties"]
    assert inpaint["masks"]["items"] == {"$ref": "#/$defs/mask_kind"}
    assert tuple(full["$defs"]["mask_kind"]["enum"]) == MASK_KINDS
    assert tuple(full["$defs"]["inpaint_sampler"]["enum"]) == inpaint_samplers() == ("em", "sscs")


def _edit(case: str) -> tuple[dict, str]:
    study = _study()
    conditional = study["conditional"]
    if case == "other_sde":  # the PSLD classifier guiding the CLD model
        conditional["guided"][1]["classifier"] = "digits_psld_clf"
        return study, "guidance needs the classifier of the score model's SDE"
    if case == "class_range":
        conditional["guided"][2]["classes"] = [2, 9]
        return study, "conditional.guided[2].classes [2, 9]: diamond has classes 0 ... 8"
    if case == "center_on_points":
        conditional["inpaint"][2]["masks"] = ["center"]
        return study, "the center mask is for images; diamond is points"
    if case == "oracle_classifier_for_a_model":
        conditional["guided"][0]["classifier"] = "oracle"
        return study, "digits_psld is a trained model: name a trained classifier"
    if case == "unknown_source":
        conditional["guided"][0]["source"] = "digits_vpsde"
        return study, "conditional.guided[0].source 'digits_vpsde' is neither a study model"
    if case == "unknown_classifier":
        conditional["guided"][0]["classifier"] = "digits_clf"
        return study, "classifier 'digits_clf' is not in conditional.classifiers"
    if case == "score_config":
        conditional["classifiers"]["digits_cld_clf"]["config"] = "params/train/digits_cld.yaml"
        return study, "is a score model's config; a classifier's has `task: classifier`"
    if case == "bad_mask":
        conditional["inpaint"][0]["masks"] = ["square"]
        return study, "invalid study at conditional.inpaint.0.masks.0: 'square' is not one of"
    if case == "twice":
        conditional["inpaint"].append(copy.deepcopy(conditional["inpaint"][0]))
        return study, "conditional lists the sample sets"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["other_sde", "class_range", "center_on_points", "oracle_classifier_for_a_model",
                                  "unknown_source", "unknown_classifier", "score_config", "bad_mask", "twice"])
def test_bad_conditional_studies_are_refused_with_one_message(case, monkeypatch):
    monkeypatch.chdir(ROOT)
    study, message = _edit(case)
    with pytest.raises(StudyError) as err:
        load_study(study, "params/bad.yaml")
    assert message in str(err.value) and str(err.value).startswith("params/bad.yaml"), str(err.value)


# -- a small conditional study end to end --------------------------------------------------------------------------
MINI = {
    "study": "cond_mini",
    "seed": 0,
    "tracking": {"enabled": False},
    "data": {"diamond": {"n_train": 3000, "n_test": 600}},
    "models": {"diamond_psld": {"data": "diamond", "config": "params/train/toy_psld.yaml",
                                "overrides": {"train.steps": 200, "train.checkpoint_every": 100,
                                              "train.log_every": 50}}},
    "sampling": {"num_samples": {"diamond": 300}, "nfe": [10], "stridings": ["quadratic"],
                 "samplers": {"psld": ["sscs"]}},
    "conditional": {
        "classifiers": {"clf": {"data": "diamond", "config": "params/train/toy_psld_classifier.yaml",
                                "overrides": {"train.steps": 100, "train.checkpoint_every": 100,
                                              "train.log_every": 50}}},
        "guided": [{"source": "diamond_psld", "classifier": "clf", "classes": [2], "scales": [0, 2], "n": 300,
                    "nfe": 10},
                   {"source": "oracle-diamond-psld", "classifier": "oracle", "classes": [4], "scales": [0, 1],
                    "n": 300, "nfe": 20}],
        "inpaint": [{"source": "oracle-diamond-psld", "masks": ["half", "none"], "n": 300, "nfe": 20}]},
    "evaluation": {"bootstrap": 100, "fd_digits": None, "nll": None, "fid": None},
}


@pytest.mark.slow
@pytest.mark.e2e
def test_a_conditional_study_runs_through_the_workflow_into_its_report(tmp_path):
    """Classifier training, guided and inpainted sets (a trained and an exact source), their records and the report's
    section: the exact posterior puts every sample in its class, inpainting keeps the known coordinate exactly and
    beats its baseline by a paired interval; a second run has nothing to do."""
    from conftest import project_copy, run_snakemake

    project = project_copy(tmp_path / "p")
    (project / "params" / "cond_mini.yaml").write_text(yaml.safe_dump(MINI))
    run_snakemake(project, "--cores", "2", "--configfile", "params/cond_mini.yaml")
    results = project / "results" / "cond_mini"
    assert json.loads((results / "classifiers" / "clf" / "done.json").read_text())["step"] == 100

    def record(source, row, metric):
        return json.loads((results / "records" / "conditional" / source / row / f"{metric}.json").read_text())

    exact = record("oracle-diamond-psld", "guided-oracle-k4-w1", "class_accuracy")
    assert exact["value"] >= 0.99 and exact["condition"]["guidance"]["class"] == 4
    assert exact["labels"]["kind"] == "guided" and exact["labels"]["variant"] == "sscs"
    assert record("oracle-diamond-psld", "guided-oracle-k4-w0", "class_accuracy")["value"] < 0.3
    assert record("oracle-diamond-psld", "guided-oracle-k4-w1", "sliced_w2")["dataset"]["class"] == 4
    assert record("diamond_psld", "guided-clf-k2-w2", "class_accuracy")["n"] == 300
    assert record("oracle-diamond-psld", "inpaint-half-sscs", "known_pixel_error")["value"] == 0.0
    assert (results / "conditional" / "oracle-diamond-psld" / "inpaint-half-sscs" / "mask.npy").is_file()

    report = project / "reports" / "cond_mini"
    markdown = (report / "report.md").read_text()
    for title in ("## Conditional generation: classifier guidance", "### Guided sets",
                  "## Conditional generation: inpainting"):
        assert title in markdown
    assert (report / "figures" / "conditional_guidance.png").is_file()
    steps = (report / "conditional_guidance_steps.csv").read_text().splitlines()
    assert len(steps) == 1 + 2 and any("oracle-diamond-psld" in line and "rises" in line for line in steps), steps
    inpaint = (report / "conditional_inpaint.csv").read_text()
    half = next(line for line in inpaint.splitlines() if ",half," in line)
    assert ",holds," in half, inpaint  # completions beat the unconditional baseline by a paired interval
    summary = json.loads((report / "summary.json").read_text())
    assert "oracle-diamond-psld/guided-oracle-k4-w1/class_accuracy" in summary["conditional"]
    assert "guided-" not in (report / "quality_diamond_sliced_w2.csv").read_text()  # their own section only
    again = run_snakemake(project, "-n", "--cores", "2", "--configfile", "params/cond_mini.yaml")
    assert "Nothing to be done" in again.stdout + again.stderr
