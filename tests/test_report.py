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


def _record(records: Path, source, row, metric, value, *, sampler="em", striding="uniform", budget=6, data="diamond",
            kind="model", variant=None, sde="cld", samples=None, spread=0.01, model=None):
    fields = {}
    if spread is not None:
        replicates = value + spread * np.random.default_rng(len(list(records.glob("*.json")))).normal(size=150)
        fields = stats.interval_fields(value, replicates, seed=0)
    record = make_record(metric, value, n=100, seed=0, wall_s=0.1, device="cpu", sampler=sampler, striding=striding,
                         nfe_budget=budget, nfe=float(budget or 40), sde=sde, samples=samples,
                         source={"oracle": "diamond"} if kind == "oracle" else {"checkpoint": "x.pt"},
                         labels={"source": source, "row": row, "variant": variant or sampler, "data": data,
                                 "kind": kind, "model": model or source}, **fields)
    # the directory names mean nothing: the record says where it belongs
    write_record(records / f"r{len(list(records.glob('*.json')))}.json", record)


def _results(tmp_path: Path) -> Path:
    results = tmp_path / "results"
    records = results / "records"
    records.mkdir(parents=True)
    samples = tmp_path / "somewhere" / "else"
    samples.mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (8, 8)).save(samples / "grid.png")
    for sampler, value in (("em", 0.3), ("sscs", 0.2)):
        for striding in ("uniform", "quadratic"):
            _record(records, "diamond_cld", f"{sampler}-{striding}-nfe6", "sliced_w2", value, sampler=sampler,
                    striding=striding, samples=str(samples))
    for seed, value in ((0, 0.5), (1, 0.48)):  # two training replicas of the baseline
        _record(records, "diamond_vpsde" + ("" if seed == 0 else f"-seed{seed}"), "em-uniform-nfe6", "sliced_w2",
                value, sde="vpsde", model="diamond_vpsde")
    _record(records, "oracle-diamond-cld", "ode-adaptive", "sliced_w2", 0.02, sampler="ode", striding=None,
            budget=None, kind="oracle")
    _record(records, "diamond_cld", "nll", "nll_nats", 1.5, sampler="ode", striding=None, budget=None, spread=None)
    (results / "runs" / "diamond_cld").mkdir(parents=True)
    pd.DataFrame({"step": [10, 20], "loss": [3.0, 2.0], "lr": [1e-3, 1e-3], "grad_norm": [1.0, 1.0]}).to_csv(
        results / "runs" / "diamond_cld" / "loss.csv", index=False)
    return results


def _study(tmp_path: Path) -> Path:
    study = {"study": "rep", "description": "a report test", "data": {"diamond": {}},
             "models": {"diamond_cld": {"data": "diamond", "config": "params/train/toy_cld.yaml"},
                        "diamond_vpsde": {"data": "diamond", "config": "params/train/toy_vpsde.yaml"}},
             "sampling": {"num_samples": {"diamond": 100}, "nfe": [6], "stridings": ["uniform", "quadratic"],
                          "samplers": {"cld": ["em", "sscs", "ode"], "vpsde": ["em"]}},
             "evaluation": {}}
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
    assert md_headings[1:4] == ["What this study shows: the papers' claims", "Best sampler per NFE budget",
                               "Quality against NFE"]
    assert page.index("What this study shows") < page.index("data:image/png;base64,")
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown):
        assert (out / link).is_file(), link
    assert metrics["figures"] == 3  # quality, loss, one sample grid
    quality = metrics["quality"]["diamond/diamond_cld/sscs-quadratic-nfe6/sliced_w2"]
    assert quality["value"] == 0.2 and quality["ci_low"] < 0.2 < quality["ci_high"]
    assert all(q["ci_low"] is not None and q["ci_high"] is not None for q in metrics["quality"].values())
    assert metrics["nll"]["diamond_cld/nll_nats"]["value"] == 1.5
    sscs = metrics["claims"]["SSCS beats Euler-Maruyama at low NFE (CLD paper) [diamond_cld, quadratic, NFE 6, "
                             "sliced_w2]"]
    assert sscs["verdict"] == "holds" and sscs["ci_high"] < 0  # 0.2 against 0.3, intervals of about 0.02
    cld = next(v for k, v in metrics["claims"].items() if k.startswith("CLD beats the VPSDE baseline"))
    assert cld["verdict"] == "holds" and cld["difference"] == pytest.approx(0.2 - 0.49)
    claims = pd.read_csv(out / "claims.csv")
    assert claims.loc[claims["claim"].str.startswith("CLD beats"), "seeds (A/B)"].item() == "1/2"
    assert "within noise" not in page and "[" in page  # no 10 % rule; intervals in the tables
    assert "Regime: data diamond" in page and "<details>" in page  # the regime sentence; long tables folded
    best = pd.DataFrame(build_best(records_frame(results / "records")))
    row = best[(best["source"] == "diamond_cld") & (best["NFE"] == 6)].iloc[0]
    assert row["best"].startswith("sscs") and row["runner-up"].startswith("sscs") and row["verdict"] == "tied"


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
        # the adaptive ODE, whose basic interval lies above its estimate (it may: README, "Evidence")
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
    """[14/18]: a rise beyond the paired interval is listed; the network is blamed where the same sampler on the exact
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
    """[16/18]: metrics.json (what `dvc metrics show` prints as one line) holds each tested claim's difference under
    a short key and the verdict counts; summary.json every value; plots/ one long table per dataset x metric for
    the trained sources and one for the oracles, a series per source / sampler / striding."""
    results, out = _results(tmp_path), tmp_path / "report"
    summary = build_report(_study(tmp_path), results, out)
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    headline = json.loads((out / "metrics.json").read_text())
    tested = [c for c in summary["claims"].values() if c["difference"] is not None]
    assert {k for k in headline if k not in ("holds", "does not hold", "inconclusive")} == {c["key"] for c in tested}
    assert headline["sscs-em diamond_cld quadratic"] == pytest.approx(
        summary["claims"]["SSCS beats Euler-Maruyama at low NFE (CLD paper) [diamond_cld, quadratic, NFE 6, "
                          "sliced_w2]"]["difference"], abs=1e-6)
    assert sum(headline[v] for v in ("holds", "does not hold", "inconclusive")) == len(tested)
    assert len(json.dumps(headline)) < 400  # the nested sentences made a 3,825-character line
    table = pd.read_csv(out / "plots" / "diamond_sliced_w2.csv")
    assert list(table.columns) == ["nfe", "value", "ci_low", "ci_high", "series"]
    assert "diamond_cld sscs quadratic" in set(table["series"]) and table["nfe"].notna().all()
    assert not table["series"].str.startswith("oracle-").any()
