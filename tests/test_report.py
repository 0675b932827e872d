"""The report renders one list of sections: the HTML page and the Markdown file have the same headings, in order,
and every figure the Markdown names exists. Records are found by what they say about themselves."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from cldsgm import stats
from cldsgm.records import make_record, records_frame, write_record
from cldsgm.report import build_report
from cldsgm.report.analysis import best_samplers as build_best

ROOT = Path(__file__).resolve().parents[1]


def _record(records: Path, source, row, metric, value, *, sampler="em", striding="quadratic", budget=50,
            data="diamond", kind="model", variant=None, sde="cld", samples=None, spread=0.01, model=None, seed=0,
            options=None):
    fields = {}
    if spread is not None:
        replicates = value + spread * np.random.default_rng(len(list(records.glob("*.json")))).normal(size=150)
        fields = stats.interval_fields(value, replicates, seed=0)
        value = fields.pop("value")
    labels = {"source": source, "row": row, "variant": variant or sampler, "data": data, "kind": kind,
              "model": model or source, "seed": str(seed)}
    record = make_record(metric, value, n=100, seed=0, wall_s=0.1, device="cpu", sampler=sampler, striding=striding,
                         nfe_budget=budget, nfe=float(budget or 40), sde=sde, samples=samples, options=options or {},
                         source={"oracle": "diamond"} if kind == "oracle" else {"checkpoint": "x.pt"},
                         labels=labels if kind == "model" else {k: v for k, v in labels.items() if k != "seed"},
                         **fields)
    # the directory names mean nothing: the record says where it belongs
    write_record(records / f"r{len(list(records.glob('*.json')))}.json", record)


PAPER_SSCS = {"score_time": "start", "score_step": "euler", "second_half": "reference"}


def _results(tmp_path: Path, cld_seeds=(0,)) -> Path:
    results = tmp_path / "results"
    records = results / "records"
    records.mkdir(parents=True)
    samples = tmp_path / "somewhere" / "else"
    samples.mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (8, 8)).save(samples / "grid.png")
    for seed in cld_seeds:
        name = "diamond_cld" + ("" if seed == 0 else f"-seed{seed}")
        for variant, value in (("em", 0.3), ("sscsref", 0.2)):
            _record(records, name, f"{variant}-quadratic-nfe50", "sliced_w2", value + 0.01 * seed, samples=str(samples),
                    sampler="sscs" if variant == "sscsref" else "em", variant=variant, model="diamond_cld", seed=seed,
                    options=PAPER_SSCS if variant == "sscsref" else None)
    for seed, value in ((0, 0.5), (1, 0.48)):  # two training replicas of the baseline
        _record(records, "diamond_vpsde" + ("" if seed == 0 else f"-seed{seed}"), "em-quadratic-nfe50", "sliced_w2",
                value, sde="vpsde", model="diamond_vpsde", seed=seed)
    _record(records, "oracle-diamond-cld", "ode-adaptive", "sliced_w2", 0.02, sampler="ode", striding=None,
            budget=None, kind="oracle")
    _record(records, "diamond_cld", "nll", "nll_nats", 1.5, sampler="ode", striding=None, budget=None, spread=None)
    (results / "runs" / "diamond_cld").mkdir(parents=True)
    pd.DataFrame({"step": [10, 20], "loss": [3.0, 2.0], "lr": [1e-3, 1e-3], "grad_norm": [1.0, 1.0]}).to_csv(
        results / "runs" / "diamond_cld" / "loss.csv", index=False)
    return results


def _study(tmp_path: Path, cld_seeds=(0,), claims=None) -> Path:
    study = {"study": "rep", "description": "a report test", "data": {"diamond": {}},
             "models": {"diamond_cld": {"data": "diamond", "config": "params/train/toy_cld.yaml",
                                        "seeds": list(cld_seeds)},
                        "diamond_vpsde": {"data": "diamond", "config": "params/train/toy_vpsde.yaml", "seeds": [0, 1]}},
             "sampling": {"num_samples": {"diamond": 100}, "nfe": [50], "stridings": ["quadratic"],
                          "samplers": {"cld": ["em", "sscsref", "ode"], "vpsde": ["em"]},
                          "variants": {"sscsref": {"sampler": "sscs", "options": PAPER_SSCS}},
                          "oracle": {"data": ["diamond"], "sdes": ["cld"]}},
             "evaluation": {"nll": {"num_samples": 16}}}
    if claims is not None:
        study["claims"] = claims
    path = tmp_path / "rep.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def test_html_and_markdown_have_the_same_sections(tmp_path):
    results, out = _results(tmp_path), tmp_path / "report"
    metrics = build_report(_study(tmp_path), results, out)
    page, markdown = (out / "index.html").read_text(), (out / "report.md").read_text()
    html_headings = [html.unescape(h) for h in re.findall(r"<h[1-6]>(.*?)</h[1-6]>", page)]
    md_headings = [line.lstrip("#").strip() for line in markdown.splitlines() if re.match(r"#+ ", line)]
    assert html_headings == md_headings
    assert {"Quality against NFE", "Negative log-likelihood", "What this study shows: the papers' claims",
            "Best sampler per NFE budget", "Training loss", "Samples", "Not computed"} <= set(md_headings)
    # what a reader came for first: the claims, then the best sampler per budget, before any quality plot
    assert md_headings[1:5] == ["What this study shows: the papers' claims", "Claims this study does not decide",
                               "Best sampler per NFE budget", "Quality against NFE"]
    assert page.index("What this study shows") < page.index("data:image/png;base64,")
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown):
        assert (out / link).is_file(), link
    assert metrics["figures"] == 3  # quality, loss, one sample grid
    quality = metrics["quality"]["diamond/diamond_cld/sscsref-quadratic-nfe50/sliced_w2"]
    assert quality["ci_low"] <= quality["value"] <= quality["ci_high"]  # bias-corrected: inside its interval
    assert all(q["ci_low"] is not None and q["ci_high"] is not None for q in metrics["quality"].values())
    assert metrics["nll"]["diamond_cld/nll_nats"]["value"] == 1.5
    sscs = metrics["claims"]["cld-sscs-em diamond_cld nfe50"]
    assert sscs["verdict"] == "holds" and sscs["ci_high"] < 0  # 0.2 against 0.3, intervals of about 0.02
    # a method claim from one CLD seed: never "holds", whatever its sampling interval says
    cld = metrics["claims"]["cld-vpsde-em diamond nfe50"]
    assert cld["verdict"] == "inconclusive (one training seed)" and cld["ci_high"] < 0
    assert cld["seeds (A/B)"] == "1/2" and cld["detectable"].startswith("≥ ")
    claims = pd.read_csv(out / "claims.csv")
    assert set(claims["claim"]) == {"cld-sscs-em", "cld-vpsde-em"}
    undecided = pd.read_csv(out / "claims_undecided.csv").set_index("claim")
    assert "objective dsm" in undecided.loc["hsm-dsm-quality", "what the study lacks"]
    assert "evaluation.smoothness" in undecided.loc["cld-smooth", "what the study lacks"]
    assert "within noise" not in page and "[" in page  # no 10 % rule; intervals in the tables
    assert "Regime: data diamond" in page and "<details>" in page  # the regime sentence; long tables folded
    best = pd.DataFrame(build_best(records_frame(results / "records")))
    row = best[(best["source"] == "diamond_cld") & (best["NFE"] == 50)].iloc[0]
    assert row["best"].startswith("sscs ") and row["runner-up"].startswith("em") and row["verdict"] == "best"


def _many_rows(n_samplers: int) -> pd.DataFrame:
    """Records of one source with n_samplers x 2 stridings x 3 budgets, and its oracle twin."""
    rows = []
    for kind, source in (("model", "digits_cld"), ("oracle", "oracle-digits-cld")):
        for i in range(n_samplers):
            for striding in ("uniform", "quadratic"):
                for nfe in (10, 20, 50):
                    v = 1.0 / nfe + 0.01 * i
                    rows.append({"source": source, "kind": kind, "sampler": f"s{i}", "striding": striding,
                                 "nfe": nfe, "nfe_budget": nfe, "value": v, "ci_low": v * 0.9, "ci_high": v * 1.1})
        # the adaptive ODE, whose basic interval lies above its estimate (it may: docs/workflow.md, "Evidence")
        rows.append({"source": source, "kind": kind, "sampler": "ode", "striding": "adaptive", "nfe": 80,
                     "nfe_budget": None, "value": 0.1, "ci_low": 0.11, "ci_high": 0.12})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("n_samplers", [2, 12])
def test_every_quality_panel_has_at_most_ten_lines_and_one_legend(n_samplers):
    from cldsgm.report.figures import MAX_LINES, quality_axes

    fig = quality_axes(_many_rows(n_samplers), "digits", "fd_digits")
    panels = [ax for ax in fig.axes if ax.get_visible()]
    lines = [len(ax.get_legend_handles_labels()[1]) for ax in panels]  # lines and error-bar stars
    for ax, n in zip(panels, lines, strict=True):
        assert len([x for x in ax.get_lines() if x.get_label()[:1] != "_"]) <= n
    assert max(lines) <= MAX_LINES and sum(lines) == 2 * (2 * n_samplers + 1)  # every series drawn, none twice
    assert len(fig.legends) == 1 and not any(ax.get_legend() for ax in panels)
    titles = [ax.get_title() for ax in panels]
    assert titles[0].startswith("digits_cld") and titles[-1].startswith("oracle-digits-cld")  # trained, then oracle
    colours = {}
    for ax in panels:  # one colour per sampler in every panel
        for line in ax.get_lines():
            if line.get_label()[:1] != "_":
                colours.setdefault(line.get_label().split()[0], set()).add(line.get_color())
    assert all(len(c) == 1 for c in colours.values())


def test_the_one_reader_of_records_uses_their_labels_not_their_paths(tmp_path):
    frame = records_frame(_results(tmp_path) / "records")
    assert set(frame["source"]) == {"diamond_cld", "diamond_vpsde", "diamond_vpsde-seed1", "oracle-diamond-cld"}
    assert set(frame.loc[frame["source"] == "diamond_vpsde-seed1", "model"]) == {"diamond_vpsde"}
    assert set(frame.loc[frame["metric"] == "nll_nats", "row"]) == {"nll"}
    assert set(frame.loc[frame["kind"] == "oracle", "striding"]) == {"adaptive"}  # the ODE's, from the catalog
    write_record(tmp_path / "by_hand.json", make_record("sliced_w2", 0.1, n=5, seed=0, wall_s=0.0, device="cpu",
                                                        sampler="sscs", striding="uniform", nfe_budget=20,
                                                        source={"oracle": "gaussian"}))
    by_hand = records_frame(tmp_path).query("path.str.endswith('by_hand.json')", engine="python").iloc[0]
    assert (by_hand["source"], by_hand["row"], by_hand["kind"]) == ("oracle:gaussian", "sscs-uniform-nfe20", "oracle")


def test_a_report_without_records_is_refused(tmp_path):
    (tmp_path / "results").mkdir()
    with pytest.raises(ValueError, match="no records under"):
        build_report(_study(tmp_path), tmp_path / "results", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _family(source: str, kind: str, values: dict[int, float], spread: float = 0.001) -> list[dict]:
    """Records of one sampler row at several NFE budgets, replicates around each value (independent draws)."""
    return [{"source": source, "kind": kind, "data": "diamond", "sde": "cld", "sampler": "em",
             "striding": "quadratic", "metric": "sliced_w2", "nfe_budget": float(nfe), "value": value,
             "replicates": list(value + spread * np.random.default_rng(nfe).normal(size=200))}
            for nfe, value in values.items()]


def test_rows_that_get_worse_with_nfe_are_listed_with_a_reason():
    """a rise beyond the paired interval is listed; the network is blamed where the same sampler on the exact
    score improves, the sampler where the exact score rises too; a fall or a rise within noise is not listed."""
    from cldsgm.report.analysis import worse_with_nfe

    model = _family("diamond_cld", "model", {10: 0.10, 20: 0.08, 50: 0.09})  # 20 -> 50 rises by 10 spreads
    oracle = _family("oracle-diamond-cld", "oracle", {10: 0.05, 20: 0.03, 50: 0.0301})  # within noise
    rises = worse_with_nfe(pd.DataFrame(model + oracle))
    assert list(rises["source"]) == ["diamond_cld"] and list(rises["NFE"]) == ["20 -> 50"]
    assert rises["why"].iloc[0].startswith("the network, not the sampler")
    oracle = _family("oracle-diamond-cld", "oracle", {10: 0.05, 20: 0.03, 50: 0.04})
    rises = worse_with_nfe(pd.DataFrame(model + oracle)).set_index("source")
    assert rises.loc["diamond_cld", "why"] == "the sampler: it rises on the exact score too"
    assert rises.loc["oracle-diamond-cld", "why"].startswith("on the exact score")


def test_metrics_json_is_the_headline_and_plots_are_one_per_dataset_and_metric(tmp_path):
    """metrics.json (what `dvc metrics show` prints as one line) holds each tested claim's difference under
    a short key and the verdict counts; summary.json every value; plots/ one long table per dataset x metric for
    the trained sources and one for the oracles, a series per source / sampler / striding."""
    results, out = _results(tmp_path), tmp_path / "report"
    summary = build_report(_study(tmp_path), results, out)
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    headline = json.loads((out / "metrics.json").read_text())
    tested = {k: c for k, c in summary["claims"].items() if c["difference"] is not None}
    assert {k for k in headline if k not in ("holds", "does not hold", "inconclusive")} == set(tested)
    assert headline["cld-sscs-em diamond_cld nfe50"] == pytest.approx(
        summary["claims"]["cld-sscs-em diamond_cld nfe50"]["difference"], abs=1e-6)
    assert sum(headline[v] for v in ("holds", "does not hold", "inconclusive")) == len(tested)
    assert len(json.dumps(headline)) < 400  # the nested sentences made a 3,825-character line
    table = pd.read_csv(out / "plots" / "diamond_sliced_w2.csv")
    assert list(table.columns) == ["nfe", "value", "ci_low", "ci_high", "series"]
    assert "diamond_cld sscsref quadratic" in set(table["series"]) and table["nfe"].notna().all()
    assert not table["series"].str.startswith("oracle-").any()


def test_a_method_claim_with_seeds_on_both_sides_is_decided_by_the_seeds(tmp_path):
    """Two training seeds per side: the t interval over the seeds' values decides (CLD 0.30, 0.31 against the
    VPSDE's 0.50, 0.48: the difference holds though 2 seeds give 1 degree of freedom)."""
    results, out = _results(tmp_path, cld_seeds=(0, 1)), tmp_path / "report"
    metrics = build_report(_study(tmp_path, cld_seeds=(0, 1)), results, out)
    cld = metrics["claims"]["cld-vpsde-em diamond nfe50"]
    assert cld["seeds (A/B)"] == "2/2" and cld["verdict"] == "holds"
    assert cld["difference"] == pytest.approx(0.305 - 0.49, abs=0.01) and cld["ci_low"] < cld["difference"] < 0
    assert not cld["detectable"].startswith("≥")
    # the sampler claim on a model with two replicas: paired by seed
    assert metrics["claims"]["cld-sscs-em diamond_cld nfe50"]["seeds (A/B)"] == "2/2"


def test_a_claim_registered_and_listed_by_a_study_is_decided_in_the_report(tmp_path):
    """No claim lives in report code: a throwaway claim, registered at run time and listed by the study, appears
    in the report with its verdict; a study listing an unknown claim is refused before anything runs."""
    from cldsgm import claims
    from cldsgm.study import StudyError, load_study

    throwaway = claims.Claim("test-em-worse", "ours", "EM is worse than SSCS (a test claim)", "—",
                             claims.Side("EM", {"sde": "cld"}, {"sampler": "em"}),
                             claims.Side("SSCS", {"sde": "cld"}, {"sampler": "sscs"}), compare="within",
                             lower_is_better=False, nfe=(50,), striding="quadratic")
    claims.register(throwaway)
    try:
        out = tmp_path / "report"
        metrics = build_report(_study(tmp_path, claims=["test-em-worse"]), _results(tmp_path), out)
        assert list(metrics["claims"]) == ["test-em-worse diamond_cld nfe50"]
        assert metrics["claims"]["test-em-worse diamond_cld nfe50"]["verdict"] == "holds"  # 0.3 > 0.2
        assert "EM is worse than SSCS (a test claim)" in (out / "index.html").read_text()
    finally:
        claims.unregister("test-em-worse")
    with pytest.raises(StudyError, match=r"claims lists \['test-em-worse'\], which are no claims"):
        load_study(yaml.safe_load(_study(tmp_path, claims=["test-em-worse"]).read_text()), "rep.yaml")


def test_no_claim_statement_lives_in_report_code():
    from cldsgm.claims import CLAIMS

    code = "".join(path.read_text() for path in (ROOT / "src" / "cldsgm" / "report").glob("*.py"))
    for claim in CLAIMS.values():
        assert claim.statement not in code and claim.figure not in code or claim.figure == "—", claim.id
