"""The papers' claims as data, and which of them a study can decide; imports no torch.

A claim compares two sides, A and B, on one metric ("A beats B": lower is better unless said otherwise), in the
setting its paper states it at (an NFE budget and striding, a sampler): never "each side's best over rows". A side
selects *units*, the values a study records: a sample set's metric, a model's NLL, a score's Jacobian norm, ... Each
unit describes itself by the model it came from (sde, objective, mixed_score, data, budget, network, the training
seed; for an exact score or a data law only sde and data) and by the row (sampler and options, NFE budget, striding,
or the estimator of a training objective). cldsgm.study.study_units lists the units a study will record, so that
whether it can decide a claim is known before any job runs; the report joins the same units with their records and
evaluates the same `instances`.

Two ways of comparing:
- within: the two sides are two rows of one source (two samplers on one network or exact score, two estimators on
  one network): paired, seed by seed;
- between: the two sides are two models (or exact scores, or data laws) of one dataset that share `same` (data,
  training budget, network, ...) and differ in what the sides select (the SDE, the objective, the mixed score):
  a claim about a *method*, which needs several training seeds per side.

Claims are registered like samplers (`register`, `unregister`); the report holds no claim of its own.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from cldsgm import catalog

__all__ = ["CLAIMS", "Claim", "Instance", "Side", "describe", "instances", "missing", "register", "unregister"]

# the model attributes a selector or `same` may name; the row attributes a selector may name
MODEL_KEYS = ("sde", "objective", "mixed_score", "data", "budget", "network", "kind")
ROW_KEYS = ("sampler", "options", "estimator")
# metrics that are not a sample set's, with the study key whose evaluation records them
EVALUATED_BY = {"nll": "evaluation.nll", "score_jacobian": "evaluation.smoothness",
                "grad_variance": "evaluation.loss_variance", "prior_kl": "evaluation.equilibrium"}
ABSENT = None  # an option selector value: the study does not give the option (SSCS: sigma_d from the model)


@dataclass(frozen=True)
class Side:
    """One side of a claim: its label in the table, the models it selects (attribute -> value, or a tuple of
    values) and the rows of those models it selects."""

    label: str
    model: dict = field(default_factory=dict)
    row: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Claim:
    """A claim of a paper (or of this project: paper 'ours').

    metric: 'headline' (the dataset's first metric, catalog.DATASETS), 'nll' (the dataset's NLL metric) or a metric
    name. nfe: the fixed-step budgets it is stated at (one instance per budget the study has; None: no budget, e.g.
    the adaptive ODE or a model's metric); over_nfe: quality over the whole NFE sweep instead (the mean over log
    NFE, trapezoids). sources: unit kinds it is decided on (model: trained networks, oracle: exact scores, law: the
    data law itself). same: between-claims, the model attributes both sides must share. ablation: decided on the
    study's ablation models (models.<m>.ablation_of) beside their base; every other claim leaves them out.
    """

    id: str
    paper: str
    statement: str
    figure: str
    a: Side
    b: Side
    compare: str = "between"
    metric: str = "headline"
    lower_is_better: bool = True
    nfe: tuple[int, ...] | None = None
    striding: str | None = None
    over_nfe: bool = False
    sources: tuple[str, ...] = ("model",)
    same: tuple[str, ...] = ("data", "budget", "network")
    ablation: bool = False
    note: str = ""

    def __post_init__(self) -> None:
        if self.compare not in ("within", "between"):
            raise ValueError(f"claim {self.id}: compare is 'within' or 'between', got {self.compare!r}")
        for side in (self.a, self.b):
            unknown = set(side.model) - set(MODEL_KEYS) | set(side.row) - set(ROW_KEYS)
            if unknown:
                raise ValueError(f"claim {self.id}: side {side.label!r} selects unknown attributes {sorted(unknown)}")
        unknown = set(self.same) - set(MODEL_KEYS)
        if unknown:
            raise ValueError(f"claim {self.id}: same names unknown attributes {sorted(unknown)}")


@dataclass
class Instance:
    """One comparison a claim makes in a study: on which data and setting, the units of each side (one per training
    seed, in the same seed order on both sides for within-claims), paired or not."""

    claim: Claim
    data: str
    setting: str
    key: str
    a: list[dict]
    b: list[dict]
    paired: bool
    models: tuple[str, str]


_PAPER_SSCS = {"sampler": "sscs", "options": {"score_time": "start", "score_step": "euler", "second_half": "reference"}}
_OUR_SSCS = {"sampler": "sscs", "options": {"score_time": "midpoint", "score_step": "exponential",
                                            "second_half": "exact", "precision_sigma": ABSENT}}
_PHASE = {"sde": catalog.PHASE_SPACE}

_BUILT_IN = (
    Claim("cld-sscs-em", "CLD", "SSCS beats Euler-Maruyama at low NFE",
          "CIFAR-10 FID at NFE 150, quadratic striding: SSCS 3.07, EM 7.00 (Table 3)",
          Side("SSCS (paper's)", {"sde": "cld"}, _PAPER_SSCS), Side("EM", {"sde": "cld"}, {"sampler": "em"}),
          compare="within", nfe=(50, 150), striding="quadratic", sources=("model", "oracle")),
    Claim("cld-vpsde-ode", "CLD", "CLD's probability-flow ODE beats the VPSDE's",
          "CIFAR-10 FID: CLD 2.25 at NFE 312, VPSDE 2.76 at NFE 141 (Table 2)",
          Side("CLD", {"sde": "cld", "objective": "hsm"}, {"sampler": "ode"}),
          Side("VPSDE", {"sde": "vpsde"}, {"sampler": "ode"})),
    Claim("cld-vpsde-em", "CLD", "CLD beats the VPSDE at equal NFE (Euler-Maruyama)",
          "CIFAR-10 FID at NFE 1000: CLD 2.27, VPSDE 2.46 (PSLD paper, Table 1)",
          Side("CLD", {"sde": "cld", "objective": "hsm"}, {"sampler": "em"}),
          Side("VPSDE", {"sde": "vpsde"}, {"sampler": "em"}), nfe=(50,), striding="quadratic",
          note="the paper's NFE is 1000; CPU studies state it at 50"),
    Claim("psld-cld-em", "PSLD", "PSLD beats CLD at equal NFE (Euler-Maruyama)",
          "CIFAR-10 FID: PSLD 2.10 (abstract), CLD 2.25", Side("PSLD", {"sde": "psld"}, {"sampler": "em"}),
          Side("CLD", {"sde": "cld", "objective": "hsm"}, {"sampler": "em"}), nfe=(50,), striding="quadratic"),
    Claim("psld-vpsde-em", "PSLD", "PSLD beats the VPSDE at equal NFE (Euler-Maruyama)",
          "CIFAR-10 FID: PSLD 2.10 (abstract), VPSDE 2.41 (Score-SDE, PC)",
          Side("PSLD", {"sde": "psld"}, {"sampler": "em"}), Side("VPSDE", {"sde": "vpsde"}, {"sampler": "em"}),
          nfe=(50,), striding="quadratic"),
    Claim("psld-cld-tradeoff-em", "PSLD", "PSLD has the better speed-quality trade-off than CLD (Euler-Maruyama)",
          "qualitative (abstract: 'better speed-vs-quality trade-off across samplers')",
          Side("PSLD", {"sde": "psld"}, {"sampler": "em"}),
          Side("CLD", {"sde": "cld", "objective": "hsm"}, {"sampler": "em"}), over_nfe=True, striding="quadratic"),
    Claim("psld-cld-tradeoff-sscs", "PSLD", "PSLD has the better speed-quality trade-off than CLD (SSCS)",
          "qualitative (abstract: 'better speed-vs-quality trade-off across samplers')",
          Side("PSLD", {"sde": "psld"}, _PAPER_SSCS), Side("CLD", {"sde": "cld", "objective": "hsm"}, _PAPER_SSCS),
          over_nfe=True, striding="quadratic"),
    Claim("cld-smooth", "CLD", "The score CLD's network learns is smoother than the VPSDE's",
          "qualitative (Sec. 3: only the velocity is noised, p(v | x) is close to Gaussian)",
          Side("CLD", {"sde": "cld"}), Side("VPSDE", {"sde": "vpsde"}), metric="score_jacobian",
          sources=("model", "oracle")),
    Claim("cld-equilibrium", "CLD", "CLD's forward process is closer to its equilibrium at t = 1 than the VPSDE's",
          "qualitative (Sec. 3.1: critical damping converges fastest)", Side("CLD", {"sde": "cld"}),
          Side("VPSDE", {"sde": "vpsde"}), metric="prior_kl", sources=("law",), same=("data",)),
    Claim("hsm-dsm-variance", "CLD", "HSM's training objective has a lower-variance gradient than DSM's",
          "qualitative (Sec. 3.2: v0 is integrated out analytically)",
          Side("HSM", {"sde": "cld"}, {"estimator": "hsm"}), Side("DSM", {"sde": "cld"}, {"estimator": "dsm"}),
          compare="within", metric="grad_variance"),
    Claim("hsm-dsm-quality", "CLD", "A CLD model trained with HSM samples better than one trained with DSM",
          "qualitative (Sec. 3.2)", Side("HSM", {"sde": "cld", "objective": "hsm"}, {"sampler": "em"}),
          Side("DSM", {"sde": "cld", "objective": "dsm"}, {"sampler": "em"}), nfe=(50,), striding="quadratic",
          same=("data", "budget", "network", "mixed_score"), ablation=True),
    Claim("mixed-score", "CLD", "The mixed score improves sample quality",
          "CIFAR-10 FID of the ablation model: 3.14 with, 3.56 without (Sec. 5)",
          Side("mixed score", {"sde": "cld", "mixed_score": True}, {"sampler": "em"}),
          Side("no mixed score", {"sde": "cld", "mixed_score": False}, {"sampler": "em"}), nfe=(50,),
          striding="quadratic", same=("data", "budget", "network", "objective"), ablation=True),
    Claim("vpsde-cld-nll", "CLD", "The VPSDE's NLL is below CLD's NLL bound",
          "CIFAR-10 bits/dim: CLD <= 3.31 (Table 1), VPSDE 3.13 (Score-SDE)", Side("VPSDE", {"sde": "vpsde"}),
          Side("CLD", {"sde": "cld", "objective": "hsm"}), metric="nll"),
    Claim("ours-sscs", "ours", "Our SSCS (sigma_d from the model) beats the paper's SSCS", "—",
          Side("SSCS (ours)", _PHASE, _OUR_SSCS), Side("SSCS (paper's)", _PHASE, _PAPER_SSCS), compare="within",
          nfe=(10, 20, 50), striding="quadratic", sources=("model", "oracle")),
    Claim("ours-conj-em", "ours", "The conjugate integrator beats Euler-Maruyama at low NFE", "—",
          Side("conjugate", _PHASE, {"sampler": "conjugate"}), Side("EM", _PHASE, {"sampler": "em"}),
          compare="within", nfe=(10, 20), striding="quadratic", sources=("model", "oracle")),
)
CLAIMS: dict[str, Claim] = {c.id: c for c in _BUILT_IN}


def register(claim: Claim) -> None:
    """Add a claim (a study may then list it)."""
    if claim.id in CLAIMS:
        raise ValueError(f"claim {claim.id!r} is registered already")
    CLAIMS[claim.id] = claim


def unregister(claim_id: str) -> None:
    """Remove a claim added by `register` (the built-in ones stay)."""
    if claim_id in {c.id for c in _BUILT_IN}:
        raise ValueError(f"claim {claim_id!r} is built in")
    CLAIMS.pop(claim_id, None)


# -- matching --------------------------------------------------------------------------------------------------------


def _option_matches(unit: dict, name: str, want) -> bool:
    options = unit.get("options") or {}
    if want is ABSENT:
        return name not in options
    spec = catalog.SAMPLERS.get(unit.get("sampler"))
    default = next((o.default for o in spec.options if o.name == name), None) if spec else None
    return options.get(name, default) == want


def _matches(unit: dict, selector: dict) -> bool:
    for key, want in selector.items():
        if key == "options":
            if not all(_option_matches(unit, name, value) for name, value in want.items()):
                return False
        elif isinstance(want, tuple):
            if unit.get(key) not in want:
                return False
        elif unit.get(key) != want:
            return False
    return True


def _metric_of(claim: Claim, data: str) -> str:
    spec = catalog.DATASETS[data]
    return {"headline": spec.metrics[0], "nll": spec.nll_metric}.get(claim.metric, claim.metric)


def _budgets(claim: Claim, a_rows: list[dict], b_rows: list[dict]) -> list[int | None]:
    """The NFE settings of one comparison: the claim's budgets both sides have (None: no budget)."""
    if claim.over_nfe:
        return [None]
    if claim.nfe is None:
        return [None]
    have = {u["nfe"] for u in a_rows} & {u["nfe"] for u in b_rows}
    return [n for n in claim.nfe if n in have]


def _at(claim: Claim, rows: list[dict], nfe: int | None) -> list[dict]:
    """The units of one side at one setting: the budget (or, over NFE, every fixed-step budget), the striding."""
    out = [u for u in rows if claim.striding is None or u.get("striding") in (claim.striding, None, "adaptive")]
    if claim.over_nfe:
        return [u for u in out if u.get("nfe")]
    if claim.nfe is not None:
        return [u for u in out if u.get("nfe") == nfe]
    return out


def _by_seed(rows: list[dict]) -> dict:
    """seed -> unit (one per training replica; None for an exact score or a law); over NFE: seed -> [units]."""
    out: dict = {}
    for u in sorted(rows, key=lambda u: (str(u.get("seed")), u.get("nfe") or 0)):
        out.setdefault(u.get("seed"), []).append(u)
    return out


def _setting(claim: Claim, nfe) -> str:
    parts = []
    if claim.over_nfe:
        parts.append("over the NFE sweep")
    elif nfe is not None:
        parts.append(f"NFE {nfe}")
    if claim.striding and (claim.over_nfe or nfe is not None):
        parts.append(f"{claim.striding} striding")
    return ", ".join(parts)


def _rows_of(claim: Claim, side: Side, group: list[dict], metric: str) -> list[dict]:
    return [u for u in group if u["metric"] == metric and _matches(u, side.model) and _matches(u, side.row)]


def _by_model(claim: Claim, units: list[dict]) -> dict:
    """(data, model) -> the units of one model (its training replicas), exact score or law of a kind the claim is
    decided on."""
    groups: dict = {}
    for u in units:
        if u["kind"] in claim.sources:
            groups.setdefault((u["data"], u["model"]), []).append(u)
    return groups


def _natural(key: tuple) -> tuple:
    """A sort key in which 'digits_cld step 875' comes before 'digits_cld step 1750'."""
    import re

    return tuple(tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", str(k))) for k in key)


def _within(claim: Claim, units: list[dict]) -> list[Instance]:
    out = []
    for (data, model), group in sorted(_by_model(claim, units).items(), key=lambda kv: _natural(kv[0])):
        metric = _metric_of(claim, data)
        a_rows, b_rows = _rows_of(claim, claim.a, group, metric), _rows_of(claim, claim.b, group, metric)
        for nfe in _budgets(claim, a_rows, b_rows):
            a, b = _by_seed(_at(claim, a_rows, nfe)), _by_seed(_at(claim, b_rows, nfe))
            seeds = sorted(set(a) & set(b), key=str)
            if not seeds or any(len(a[s]) != len(b[s]) for s in seeds) or any(len(a[s]) > 1 and not claim.over_nfe
                                                                              for s in seeds):
                continue
            setting = ", ".join(p for p in (model, _setting(claim, nfe)) if p)
            out.append(Instance(claim, data, setting, f"{claim.id} {model}" + (f" nfe{nfe}" if nfe else ""),
                                [a[s] for s in seeds], [b[s] for s in seeds], True, (model, model)))
    return out


def _between(claim: Claim, units: list[dict]) -> list[Instance]:
    out = []
    # trained models at the end of their budget only: a learning curve's snapshots are decided within (samplers)
    models = _by_model(claim, [u for u in units if not u.get("step")])
    for (data_a, model_a), (data_b, model_b) in itertools.permutations(sorted(models), 2):
        group_a, group_b = models[(data_a, model_a)], models[(data_b, model_b)]
        first_a, first_b = group_a[0], group_b[0]
        if group_a[0]["kind"] != group_b[0]["kind"] or not _matches(first_a, claim.a.model) or \
                not _matches(first_b, claim.b.model) or any(first_a.get(k) != first_b.get(k) for k in claim.same):
            continue
        metric = _metric_of(claim, data_a)
        a_rows, b_rows = _rows_of(claim, claim.a, group_a, metric), _rows_of(claim, claim.b, group_b, metric)
        for nfe in _budgets(claim, a_rows, b_rows):
            a, b = _by_seed(_at(claim, a_rows, nfe)), _by_seed(_at(claim, b_rows, nfe))
            if not a or not b or any(len(v) > 1 for v in [*a.values(), *b.values()]) and not claim.over_nfe:
                continue
            if claim.over_nfe:  # the budgets both sides have, at least two
                common = set.intersection(*({u["nfe"] for u in v} for v in [*a.values(), *b.values()]))
                if len(common) < 2:
                    continue
                a = {s: [u for u in v if u["nfe"] in common] for s, v in a.items()}
                b = {s: [u for u in v if u["nfe"] in common] for s, v in b.items()}
            kind = "exact score" if first_a["kind"] == "oracle" else "data law" if first_a["kind"] == "law" else ""
            who = f"{model_a} vs {model_b}" + (f" ({kind})" if kind else "")
            setting = ", ".join(p for p in (who, _setting(claim, nfe)) if p)
            tag = {"oracle": " exact", "law": " law"}.get(first_a["kind"], "")
            key = f"{claim.id} {data_a}{tag}" + (f" nfe{nfe}" if nfe else "")
            out.append(Instance(claim, data_a, setting, key, list(a.values()), list(b.values()), False,
                                (model_a, model_b)))
    # several candidate pairs on one dataset each get a key of their own
    keys = [i.key for i in out]
    for inst in out:
        if keys.count(inst.key) > 1:
            inst.key = f"{inst.key} {inst.models[0]}-{inst.models[1]}"
    return out


def instances(claim: Claim, units: list[dict]) -> list[Instance]:
    """The comparisons `claim` makes on these units (study_units before any job; the records' units in the
    report). Each side of an instance is a list over training seeds of [units] (one unit, or one per NFE budget for
    over_nfe claims)."""
    units = [u for u in units if claim.ablation or not u.get("ablation")]
    return _within(claim, units) if claim.compare == "within" else _between(claim, units)


# -- what is missing ---------------------------------------------------------------------------------------------


def _words(selector: dict) -> str:
    def value(v):
        if isinstance(v, tuple):
            return " or ".join(map(str, v))
        if isinstance(v, dict):
            return ", ".join(f"{k} {'not given' if x is ABSENT else x}" for k, x in v.items())
        return str(v).lower() if isinstance(v, bool) else str(v)

    return ", ".join(f"{k} {value(v)}" for k, v in selector.items())


def describe(claim: Claim) -> str:
    """The setting of a claim in words (for the table of claims a study does not decide)."""
    rows = f"; A: {claim.a.label}, B: {claim.b.label}"
    return (_setting(claim, claim.nfe[0] if claim.nfe else None) + rows).lstrip("; ")


def missing(claim: Claim, units: list[dict]) -> str:
    """What a study lacks to decide `claim` (call it where `instances` is empty): one sentence."""
    metric = claim.metric
    has_metric = [u for u in units if u["kind"] in claim.sources and u["metric"] == _metric_of(claim, u["data"])]
    if metric in EVALUATED_BY and not has_metric:
        return f"needs {EVALUATED_BY[metric]} (the {metric} of each {' or '.join(claim.sources)})"
    where = " or ".join({"model": "trained model", "oracle": "exact score", "law": "data law"}[s]
                        for s in claim.sources)
    sides = []
    for side in (claim.a, claim.b):
        found = [u for u in has_metric if _matches(u, side.model)]
        if not found:
            sides.append(f"a {where} with {_words(side.model)} ({side.label})")
    if sides:
        return "needs " + " and ".join(sides)
    settings = []
    if claim.nfe is not None:
        settings.append(f"at NFE {' or '.join(map(str, claim.nfe))}")
    if claim.over_nfe:
        settings.append("at two or more NFE budgets")
    if claim.striding:
        settings.append(f"with {claim.striding} striding")
    rows = f"{claim.a.label} ({_words(claim.a.row)}) and {claim.b.label} ({_words(claim.b.row)})" \
        if claim.a.row or claim.b.row else ""
    if claim.compare == "within":
        return f"needs {rows} on the same {where} {' '.join(settings)}".rstrip()
    sampled = f", sampled with {rows}" if rows else ""
    return (f"needs a {where} with {_words(claim.a.model)} beside one with {_words(claim.b.model)} that share "
            f"{', '.join(claim.same)}{sampled} {' '.join(settings)}").rstrip()
