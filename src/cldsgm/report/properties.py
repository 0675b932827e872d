"""The report's section on what the papers argue from besides sample quality: the scores' Jacobian norm over t, the
forward processes' approach to their priors, and the HSM and DSM gradients' variance (records of `score-jacobian`,
`equilibrium` and `objective-variance`; the claims table compares them)."""

from __future__ import annotations

import pandas as pd

from cldsgm.report.analysis import with_interval
from cldsgm.report.figures import curves_figure
from cldsgm.report.render import Figure, Section, figure_name

__all__ = ["PROPERTY_METRICS", "property_sections"]

PROPERTY_METRICS = ("score_jacobian", "prior_kl", "grad_variance")


def _curves(rows: pd.DataFrame, y: str) -> dict[str, tuple[list, list]]:
    """label (source) -> (t, y) from each record's extra.per_time; a Monte Carlo value within 2 standard errors of 0
    is left out (no point on a log axis)."""
    out = {}
    for _, r in rows.iterrows():
        per_time = (r["extra"] or {}).get("per_time") if isinstance(r["extra"], dict) else None
        points = [p for p in per_time or [] if p[y] > 2 * p.get("se", 0.0)]
        if points:
            out[r["source"]] = ([p["t"] for p in points], [p[y] for p in points])
    return out


def _table(rows: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame([{"source": r["source"], "data": r["data"], "value [95 %]": with_interval(
        r["value"], r["ci_low"], r["ci_high"]), "n": r["n"]} for _, r in rows.sort_values("source").iterrows()])


def property_sections(df: pd.DataFrame) -> list[Section]:
    """One section with a figure and a table per property the study measured (none: no section)."""
    if df.empty:
        return []
    out = []
    jac = df[df["metric"] == "score_jacobian"]
    if not jac.empty:
        out.append(Section("Smoothness of the scores over t", figures=[
            Figure(figure_name("smoothness", data), f"{data}: score Jacobian", curves_figure(
                _curves(rows, "ratio"), xlabel="t", ylabel="|J|^2 / |J_prior|^2", log_x=True, log_y=True,
                title=f"{data}: mean squared Jacobian norm of the score relative to the prior's", line=1.0,
                line_label="the prior's", groups=dict(zip(rows["source"], rows["sde"], strict=True))))
            for data, rows in jac.groupby("data")], table=_table(jac), folded=False, text=(
            "The Jacobian of each score's noised blocks with respect to the state, its mean squared norm relative to "
            "the prior score's, at states u_t ~ p_t drawn around held-out data (Hutchinson, one probe per point). The "
            "value is the mean over 10 log-spaced t in [1e-3, 1] of log10 of its square root: 0 is as smooth as the "
            "prior, 1 ten times stiffer. Dashed: the exact scores of the data law.")))
    kl = df[df["metric"] == "prior_kl"]
    if not kl.empty:
        eps = next(((r["extra"] or {}).get("epsilon") for _, r in kl.iterrows() if isinstance(r["extra"], dict)),
                   0.01)
        out.append(Section("Approach to equilibrium", figures=[
            Figure(figure_name("equilibrium", data), f"{data}: KL to the prior", curves_figure(
                _curves(rows, "kl"), xlabel="t", ylabel="KL(p_t || prior), nats", log_y=True, line=eps,
                line_label=f"{eps:g} nats", title=f"{data}: the forward marginal's distance to its prior",
                groups=dict(zip(rows["source"], rows["sde"], strict=True))))
            for data, rows in kl.groupby("data")], table=_table(kl), text=(
            f"KL(p_t || prior) of the data law's forward marginal under each SDE at its papers' parameters (exact "
            f"densities, Monte Carlo). The value is the time at which it falls below {eps:g} nats.")))
    grad = df[df["metric"] == "grad_variance"]
    if not grad.empty:
        out.append(Section("HSM and DSM: the gradient's variance", table=pd.DataFrame([
            {"model": r["source"], "objective": (r["extra"] or {}).get("objective"), "trace of the gradient "
             "covariance [95 %]": with_interval(r["value"], r["ci_low"], r["ci_high"]), "n": r["n"]}
            for _, r in grad.sort_values(["source", "row"]).iterrows()]), text=(
            "At one network (trained with HSM), the per-example gradient of the score-matching loss in score space "
            "with the likelihood weighting, where HSM and DSM differ by a constant (CLD paper, App. C): the trace of "
            "its covariance over the same examples and times. A smaller trace is less noise per SGD step.")))
    return out
