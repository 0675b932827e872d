"""The claims a study decides (cldsgm.claims), evaluated on its records: each comparison with both sides' values,
the difference with its interval, the training seeds, the smallest effect the study could have detected, and the
verdict. Which claims, and what they compare, is data of cldsgm.claims; this module holds no claim of its own.

Intervals:
- both sides from one training seed (or an exact score, or a data law): a basic bootstrap over the samples of the
  difference of the two sides' replicates (paired where the sets share their seed), centred on the bias-corrected
  difference; a claim between two *trained* models then reads "inconclusive (one training seed)", since it speaks
  for the method only through the seed-to-seed spread it cannot see;
- several seeds per side: a t interval over the seeds' bias-corrected values (cldsgm.stats.seed_interval: Welch's
  between models, paired within one model's replicas), its variance plus the bootstrap variance of the seeds' mean
  over the samples (the replicas share their samples' noise streams, which the seeds' spread cannot show).
Detectable: the smallest true difference the study finds with 80 % power at 5 % (cldsgm.stats.min_detectable); a
"≥" where one seed hides the seed-to-seed spread, so that the true minimum is larger.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cldsgm import claims as catalogue
from cldsgm import stats
from cldsgm.records import BIASED, NONNEGATIVE
from cldsgm.report.analysis import with_interval

__all__ = ["COLUMNS", "claim_rows", "record_units"]

COLUMNS = ["claim", "paper", "statement", "paper's figure", "data", "setting", "A", "B", "A - B [95 %]", "seeds (A/B)",
           "detectable", "verdict"]
ONE_SEED = "inconclusive (one training seed)"


def record_units(study: dict, table: dict, df: pd.DataFrame, planned: list[dict] | None = None) -> list[dict]:
    """The study's units (cldsgm.study.study_units, unless `planned` gives them) that have a record, each with the
    record's numbers: value, plug_in, ci_low, ci_high, replicates, n."""
    from cldsgm.study import study_units

    by_key = {(r["source"], r["row"], r["metric"]): r for _, r in df.iterrows()}
    out = []
    for unit in planned if planned is not None else study_units(study, table):
        record = by_key.get((unit["source"], unit["row"], unit["metric"]))
        if record is not None:
            out.append({**unit, **{k: record[k] for k in ("value", "plug_in", "ci_low", "ci_high", "replicates", "n")}})
    return out


def _trapezoid_weights(budgets: list[int]) -> np.ndarray:
    """Weights w (summing to 1) with sum_k w_k f(NFE_k) = the mean of f over log NFE by trapezoids."""
    x = np.log(np.asarray(budgets, np.float64))
    w = np.zeros(len(x))
    w[:-1] += np.diff(x) / 2
    w[1:] += np.diff(x) / 2
    return w / w.sum()


def _seed_value(units: list[dict]) -> dict | None:
    """One training seed's side: its plug-in estimate and replicates (over NFE: their trapezoid mean in log NFE),
    its bias-corrected value, or None where a unit has no replicates."""
    units = sorted(units, key=lambda u: u.get("nfe") or 0)
    reps = [u["replicates"] for u in units]
    if any(not isinstance(r, list) for r in reps) or len({len(r) for r in reps}) != 1:
        return None
    w = _trapezoid_weights([u["nfe"] for u in units]) if len(units) > 1 else np.ones(1)
    plug_in = float(w @ np.asarray([u["plug_in"] for u in units], np.float64))
    replicates = w @ np.asarray(reps, np.float64)
    biased = units[0]["metric"] in BIASED
    return {"plug_in": plug_in, "replicates": replicates,
            "value": stats.bias_corrected(plug_in, replicates) if biased else plug_in}


def _clipped(metric: str, value: float, low: float, high: float) -> str:
    if metric in NONNEGATIVE:
        value, low, high = max(value, 0.0), max(low, 0.0), max(high, 0.0)
    return with_interval(value, low, high)


def _side_text(label: str, metric: str, seeds: list[dict]) -> str:
    """'CLD 20.4 [18.1, 22.9]': one seed's bootstrap interval, or the t interval of the mean over seeds."""
    if len(seeds) == 1:
        low, high = stats.basic_interval(seeds[0]["plug_in"], seeds[0]["replicates"])
        return f"{label} {_clipped(metric, seeds[0]['value'], low, high)}"
    found = stats.seed_interval([s["value"] for s in seeds], sampling_var=_sampling_var(seeds))
    return f"{label} {_clipped(metric, found['difference'], found['ci_low'], found['ci_high'])}"


def _sampling_var(a: list[dict], b: list[dict] | None = None) -> float:
    """The bootstrap variance over the samples of the seeds' mean (or of the difference of the two sides' means):
    replicate r of every seed's set is drawn with the same counts, so replicate-wise means are the mean's
    replicates."""
    mean = np.mean([s["replicates"] for s in a], axis=0)
    if b is not None:
        mean = mean - np.mean([s["replicates"] for s in b], axis=0)
    return float(np.var(mean, ddof=1))


def _decide(inst: catalogue.Instance) -> dict:
    """The numbers of one comparison: difference, interval, detectable effect and verdict."""
    claim = inst.claim
    metric = inst.a[0][0]["metric"]
    a, b = [_seed_value(u) for u in inst.a], [_seed_value(u) for u in inst.b]
    row = {"claim": claim.id, "paper": claim.paper, "statement": claim.statement, "paper's figure": claim.figure,
           "data": inst.data, "setting": inst.setting + (f" ({claim.note})" if claim.note else ""), "key": inst.key,
           "metric": metric, "seeds (A/B)": f"{len(a)}/{len(b)}"}
    if any(s is None for s in a + b):
        return {**row, "A": claim.a.label, "B": claim.b.label, "A - B [95 %]": "—", "detectable": "—",
                "verdict": "not computed (no interval)", "difference": None, "ci_low": None, "ci_high": None}
    row.update(A=_side_text(claim.a.label, metric, a), B=_side_text(claim.b.label, metric, b))
    trained = inst.a[0][0]["kind"] == "model"
    if len(a) >= 2 and len(b) >= 2:
        found = stats.seed_interval([s["value"] for s in a], [s["value"] for s in b], paired=inst.paired,
                                    sampling_var=_sampling_var(a, b))
        diff = {"difference": found["difference"], "ci_low": found["ci_low"], "ci_high": found["ci_high"]}
        detectable = f"{stats.min_detectable(found['se'], found['df']):.3g}"
        verdict = stats.verdict(diff["ci_low"], diff["ci_high"], claim.lower_is_better)
    else:  # one seed on a side: the samples' variation only
        def mean(side):  # the seeds' mean estimate and its replicates (replicate b averaged over the seeds)
            return float(np.mean([s["plug_in"] for s in side])), np.mean([s["replicates"] for s in side], axis=0)

        diff = stats.compare(*mean(a), *mean(b))
        one_seed = trained and claim.compare == "between"
        detectable = ("≥ " if one_seed else "") + f"{stats.min_detectable(diff['se']):.3g}"
        verdict = ONE_SEED if one_seed else stats.verdict(diff["ci_low"], diff["ci_high"], claim.lower_is_better)
    return {**row, "A - B [95 %]": with_interval(diff["difference"], diff["ci_low"], diff["ci_high"]),
            "detectable": detectable, "verdict": verdict, "difference": diff["difference"],
            "ci_low": diff["ci_low"], "ci_high": diff["ci_high"]}


def claim_rows(study: dict, table: dict, df: pd.DataFrame) -> tuple[list[dict], list[dict]]:
    """(one row per comparison of the claims the study lists, in catalogue order; one row per listed claim the study
    does not decide, with what it lacks). df: the study's records (records_frame, curve and conditional sets
    apart)."""
    from cldsgm.study import study_claims, study_units

    planned = study_units(study, table)
    units = record_units(study, table, df, planned) if not df.empty else []
    decided, lacking = study_claims(study, table, units=planned)
    rows, seen = [], set()
    for inst in decided:
        if inst.claim.id in seen:
            continue
        seen.add(inst.claim.id)
        found = catalogue.instances(inst.claim, units)
        if not found:
            lacking.append((inst.claim, "not computed: the study serves it, but its records are missing (did every "
                                        "job finish?)"))
        rows += [_decide(i) for i in found]
    order = list(catalogue.CLAIMS)
    missing = [{"claim": c.id, "paper": c.paper, "statement": c.statement, "paper's figure": c.figure,
                "what the study lacks": why} for c, why in sorted(lacking, key=lambda x: order.index(x[0].id))]
    rows.sort(key=lambda r: order.index(r["claim"]))
    return rows, missing
