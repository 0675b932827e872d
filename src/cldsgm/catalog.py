"""The one source of names: datasets, SDEs, samplers and their options, ODE methods, stridings, precisions.

Torch-free, so that the study check, the Snakemake rules and the CLI's argument parsing read it before any heavy
import. Everything that lists samplers, datasets or SDEs reads them here: the CLI's choices and sampler flags, the
study schema's enums and per-sampler option sections (`study.py` fills them in), the job table, the report,
`sampler-bench` and `cldsgm.samplers.generate`. Adding a sampler is its function plus one `SamplerSpec` below
(`register` adds one at run time, as the tests do).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, NamedTuple

__all__ = ["CHECKPOINT_FORMATS", "DATASETS", "DEVICES", "EXACT_DIVERGENCE_DIMS", "FID_MODES", "MASK_KINDS",
           "NETWORK_SPEEDUPS", "NLL_PROBES", "ODE_METHODS", "ORACLES", "PRECISIONS", "PROBES", "SAMPLERS", "SDES",
           "STRIDINGS", "CheckpointFormat", "DatasetSpec", "Option", "SDESpec", "SamplerSpec", "bench_presets",
           "dataset", "inpaint_samplers", "largest_budget", "load", "register", "sampler", "sde_name", "steps_for",
           "unregister"]

STRIDINGS = ("uniform", "quadratic")  # the time grids of fixed-step samplers (cldsgm.samplers.grids)
PRECISIONS = ("fp32", "bf16", "fp16")  # autocast of the network only; the samplers' arithmetic stays float32
# how a sampling network runs faster (cldsgm.models.fast); none changes the sampler's arithmetic:
# cast-weights: weights cast once to the precision's dtype instead of autocast (bf16/fp16 only);
# compile-blocks: torch.compile (inductor) of each repeated block; cuda-graph: each network call replayed from a graph
NETWORK_SPEEDUPS = ("cast-weights", "compile-blocks", "cuda-graph")
DEVICES = ("auto", "cpu", "cuda")
# 'scipy_rk45' is the references' solver (scipy's RK45 through torchdiffeq); the others are torchdiffeq's own,
# on the data's device
ODE_METHODS = ("scipy_rk45", "dopri5", "bosh3", "adaptive_heun")
PROBES = ("rademacher", "gaussian", "exact")  # divergence estimators of the likelihood ODE
# what `nll` and a study take: auto is the exact divergence up to EXACT_DIVERGENCE_DIMS state dimensions, else
# rademacher
NLL_PROBES = ("auto", *PROBES)
EXACT_DIVERGENCE_DIMS = 16  # a backward pass per state dimension: cheap for 2-D points in phase space (4)
FID_MODES = ("clean", "legacy_tensorflow")
# exact-score laws: name -> 'module:function() -> GaussianMixture' (cldsgm.oracles); the CLI's --oracle names
ORACLES = {"diamond": "cldsgm.oracles:diamond", "gaussian": "cldsgm.oracles:standard_gaussian",
           "swissroll": "cldsgm.oracles:swissroll_mixture"}


# -- SDEs ------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SDESpec:
    """A forward process: its name, class ('module:attribute', imported on use) and whether it lives in phase space
    (data x and velocity v: CLD, PSLD), which the phase-space samplers need."""

    name: str
    cls: str
    phase_space: bool
    description: str
    cifar10_ode_nfe: int | None = None  # score evaluations of its adaptive ODE on CIFAR-10 (cost estimates)


SDES = {spec.name: spec for spec in (
    # the ODE's NFE: CLD 312 from the CLD paper's Table 2; VPSDE and PSLD assumed of the same order
    SDESpec("vpsde", "cldsgm.sde.vpsde:VPSDE", False, "variance-preserving SDE (Song et al. 2021)", 200),
    SDESpec("cld", "cldsgm.sde.phase_space:CLD", True, "critically-damped Langevin diffusion (Dockhorn et al. 2022)",
            312),
    SDESpec("psld", "cldsgm.sde.phase_space:PSLD", True, "phase-space Langevin diffusion (Pandey & Mandt 2023)",
            250),
)}
PHASE_SPACE = tuple(name for name, spec in SDES.items() if spec.phase_space)


def sde_name(sde) -> str:
    """The catalog name of an SDE object (by its class)."""
    path = f"{type(sde).__module__}:{type(sde).__name__}"
    for name, spec in SDES.items():
        if spec.cls == path:
            return name
    raise ValueError(f"{type(sde).__name__} is not an SDE of the catalog ({sorted(SDES)})")


# -- datasets --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DatasetSpec:
    """A dataset a study can prepare.

    kind: 'image' (uint8 [N, C, H, W]) or 'points' (float32 [N, d]). evaluation: the verb that scores its sample
    sets (fd_digits, fid, sample_distance); metrics: the records it writes, the first the headline one.
    oracle: the exact-score law of the data (oracle rows, `--oracle`), if any; modes: whether its law has few
    modes, so that mode coverage is measured against it. needs_source: read from a path the user supplies.
    generator: 'module:function(n, rng) -> float [n, d]' of a law we draw from (toy data). test_fraction: the
    default held-out share of a dataset split by us (None: it comes with its own splits or is drawn per split).
    exact_law: the data are draws of the oracle law itself, so its exact NLL can stand beside a model's.
    num_classes: the labels `prepare` stores (digits' and CIFAR-10's classes, the diamond's components), if any.
    reader: 'module:function(name, split, options) -> (data, labels, params, origin)' that `prepare` calls.
    """

    name: str
    kind: str
    evaluation: str
    metrics: tuple[str, ...]
    oracle: str | None = None
    modes: bool = False
    needs_source: bool = False
    generator: str | None = None
    test_fraction: float | None = None
    exact_law: bool = False
    num_classes: int | None = None
    reader: str = "cldsgm.data.sources:read_toy"

    @property
    def nll_metric(self) -> str:
        """bits/dim for images, nats per sample for points."""
        return "nll_bpd" if self.kind == "image" else "nll_nats"


DATASETS = {spec.name: spec for spec in (
    DatasetSpec("digits", "image", "fd_digits", ("fd_digits",), test_fraction=0.2, num_classes=10,
                reader="cldsgm.data.sources:read_digits"),
    DatasetSpec("cifar10", "image", "fid", ("fid", "kid"), needs_source=True, num_classes=10,
                reader="cldsgm.data.sources:read_cifar10"),
    DatasetSpec("image_folder", "image", "fid", ("fid", "kid"), needs_source=True, test_fraction=0.0,
                reader="cldsgm.data.sources:read_image_folder"),
    DatasetSpec("diamond", "points", "sample_distance", ("sliced_w2", "energy", "mode_tv"), oracle="diamond",
                modes=True, generator="cldsgm.data.sources:diamond_points", exact_law=True, num_classes=9),
    DatasetSpec("multimodal_swissroll", "points", "sample_distance", ("sliced_w2", "energy"), oracle="swissroll",
                generator="cldsgm.oracles:swissroll_points"),
)}


def dataset(name: str) -> DatasetSpec:
    """The spec of dataset `name`; ValueError naming the choices for an unknown one."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from {list(DATASETS)}")
    return DATASETS[name]


def load(path: str):
    """The object at 'module:attribute' (imported on use, so that this module stays torch-free)."""
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)


# -- samplers --------------------------------------------------------------------------------------------------------
_JSON_TYPES = {float: "number", int: "integer", str: "string", bool: "boolean"}


@dataclass(frozen=True)
class Option:
    """One keyword of a sampler function, as a study key (`name`) and a CLI flag (`flag`, default --<name>).

    type: float, int or str; choices: the allowed strings; minimum / exclusive_minimum: bounds of numbers.
    default: the function's default (documentation; the function's own default applies when unset).
    """

    name: str
    type: type
    default: Any
    help: str
    choices: tuple | None = None
    minimum: float | None = None
    exclusive_minimum: float | None = None
    flag: str | None = None
    maximum: float | None = None

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    @property
    def cli_dest(self) -> str:
        """The click parameter name of the flag."""
        return self.cli_flag.lstrip("-").replace("-", "_")

    def schema(self) -> dict:
        """The JSON Schema of the option's value in a study file."""
        if self.choices is not None:
            return {"enum": list(self.choices)}
        out: dict = {"type": _JSON_TYPES[self.type]}
        if self.minimum is not None:
            out["minimum"] = self.minimum
        if self.exclusive_minimum is not None:
            out["exclusiveMinimum"] = self.exclusive_minimum
        if self.maximum is not None:
            out["maximum"] = self.maximum
        return out


@dataclass(frozen=True)
class SamplerSpec:
    """A sampler of the reverse process.

    function: 'module:attribute' of sample_<name>(sde, score_fn, u, ts, *, noise, denoise, **options) (or the
    function itself), imported on first use. order: its order of convergence in the step size on smooth problems
    (None for the adaptive ODE; a function of the options where they change it). sdes: the SDEs it applies to.
    nfe_per_step: score evaluations per solver step (a function of the options for PC); adaptive: it takes
    tolerances, not an NFE budget. inpaint: it runs one step at a time on a two-point grid, so inpainting's
    replacement can follow each step (cldsgm.conditional.inpaint).
    """

    name: str
    function: Any
    description: str
    order: Any
    sdes: tuple[str, ...]
    options: tuple[Option, ...] = ()
    adaptive: bool = False
    nfe_per_step: Any = 1
    inpaint: bool = False

    def load(self):
        """The sampler function."""
        return self.function if callable(self.function) else load(self.function)

    def option(self, name: str) -> Option:
        return next(o for o in self.options if o.name == name)

    def order_with(self, options: dict | None = None) -> int | None:
        """The order of convergence under these options (defaults for those not given)."""
        if not callable(self.order):
            return self.order
        return self.order({o.name: o.default for o in self.options} | dict(options or {}))

    def per_step(self, options: dict | None = None) -> int:
        """Score evaluations per solver step under these options."""
        return self.nfe_per_step(options or {}) if callable(self.nfe_per_step) else int(self.nfe_per_step)

    def schema(self) -> dict:
        """The JSON Schema of this sampler's options section in a study file."""
        return {"type": "object", "additionalProperties": False,
                "properties": {o.name: o.schema() for o in self.options}}

    def check_options(self, options: dict) -> None:
        """ValueError (one line, naming the option) for options outside this sampler's schema."""
        import jsonschema

        error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(self.schema()).iter_errors(options))
        if error is not None:
            where = ".".join(str(p) for p in error.absolute_path) or "options"
            raise ValueError(f"sampler {self.name!r}: {where}: {error.message}")


_TOL = {"type": float, "exclusive_minimum": 0}
_SIGMA_D = Option("precision_sigma", float, 0.0, "sigma_d, the local data scale of the exponential / Gaussian-exact "
                  "step (0: point mass; SSCS is second order with sigma_d > 0)", minimum=0)


def _sscs_order(options: dict) -> int:
    """SSCS is second order with the score at the midpoint, its exponential step at sigma_d > 0 (the data's scale)
    and the exact second half-step; every other form is first order (the point mass sigma_d = 0 included)."""
    second = (options["score_time"] == "midpoint" and options["score_step"] == "exponential"
              and options["second_half"] == "exact" and float(options["precision_sigma"]) > 0)
    return 2 if second else 1


SAMPLERS: dict[str, SamplerSpec] = {spec.name: spec for spec in (
    SamplerSpec("em", "cldsgm.samplers.sde_solvers:sample_em", "Euler-Maruyama on the reverse SDE", 1,
                ("vpsde", "cld", "psld"), inpaint=True),
    SamplerSpec("sscs", "cldsgm.samplers.sde_solvers:sample_sscs",
                "symmetric splitting CLD sampler (Dockhorn et al. 2022, Alg. 1) and its PSLD generalisation",
                _sscs_order, PHASE_SPACE, (
                    Option("score_time", str, "midpoint", "where the score is evaluated in a step",
                           choices=("start", "midpoint")),
                    Option("score_step", str, "exponential", "how the score half of the split is integrated",
                           choices=("euler", "exponential")),
                    Option("second_half", str, "exact", "the second OU half-step: exact, or as the reference code",
                           choices=("exact", "reference")),
                    Option("num_stab", float, 0.0, "half-step covariance jitter", minimum=0),
                    _SIGMA_D), inpaint=True),
    SamplerSpec("pc", "cldsgm.samplers.sde_solvers:sample_pc",
                "predictor-corrector: Langevin corrector steps, then an EM step (Song et al. 2021)", 1, ("vpsde",), (
                    Option("snr", float, 0.16, "corrector signal-to-noise ratio", exclusive_minimum=0),
                    Option("n_corrector", int, 1, "corrector steps per step", minimum=1),
                    Option("step_size", str, "noise", "corrector step: 2 alpha snr^2 sigma_t^2 (noise) or with each "
                           "sample's own |z|/|s| (sample; grows with NFE in low dimension)",
                           choices=("noise", "sample"), flag="--pc-step-size")),
                nfe_per_step=lambda options: 1 + int(options.get("n_corrector", 1))),
    SamplerSpec("ode", "cldsgm.samplers.ode:sample_ode", "the probability-flow ODE with an adaptive solver", None,
                ("vpsde", "cld", "psld"), (
                    Option("rtol", **_TOL, default=1e-5, help="relative tolerance"),
                    Option("atol", **_TOL, default=1e-5, help="absolute tolerance"),
                    Option("method", str, "scipy_rk45", "the solver", choices=ODE_METHODS, flag="--ode-method"),
                    Option("denoise_drift", str, "sde", "the last step t_min -> 0 with the reverse-SDE drift (sde, "
                           "CLD-SGM) or the probability-flow drift (pf, PSLD)", choices=("sde", "pf"))),
                adaptive=True),
    SamplerSpec("euler_ode", "cldsgm.samplers.sde_solvers:sample_euler_ode",
                "Euler steps on the probability-flow ODE (first-order deterministic baseline)", 1,
                ("vpsde", "cld", "psld")),
    SamplerSpec("conjugate", "cldsgm.samplers.integrators:sample_conjugate",
                "the conjugate integrator of the probability-flow ODE (exponential multistep in the gDDIM factor)",
                lambda options: int(options["order"]) + 1, PHASE_SPACE, (
                    Option("predict", str, "x0", "what is interpolated over the steps: the data prediction x0, "
                           "eps = -R^T s, or eps_cholesky (lambda-DDIM on the Cholesky eps, unstable at low NFE)",
                           choices=("x0", "eps", "eps_cholesky")),
                    Option("order", int, 2, "multistep order 0-3 (0: gDDIM-0, exact for a point mass)", minimum=0,
                           maximum=3),
                    Option("lam", float, 0.0, "lambda of B_t = lambda I, with predict eps_cholesky only", minimum=0))),
    SamplerSpec("ge_ode", "cldsgm.samplers.integrators:sample_ge_ode",
                "Gaussian-exact deterministic step (exact for Gaussian data)", 1, PHASE_SPACE, (_SIGMA_D,)),
    SamplerSpec("ge_sde", "cldsgm.samplers.integrators:sample_ge_sde",
                "Gaussian-exact ancestral step (exact for Gaussian data)", 1, PHASE_SPACE, (_SIGMA_D,)),
)}
_BUILT_IN = dict(SAMPLERS)

# sampler-bench presets beyond the samplers themselves: the reference code's SSCS and the second-order one with the
# diamond's component std as sigma_d
_BENCH_VARIANTS = {"sscs-ref": ("sscs", {"score_time": "start", "score_step": "euler", "second_half": "reference"}),
                   "sscs-fix": ("sscs", {"precision_sigma": 0.04})}


def register(spec: SamplerSpec) -> None:
    """Add a sampler at run time (its name must be new); every reader of the catalog sees it."""
    if spec.name in SAMPLERS:
        raise ValueError(f"sampler {spec.name!r} exists already")
    SAMPLERS[spec.name] = spec


def inpaint_samplers(sde: str | None = None) -> tuple[str, ...]:
    """The samplers inpainting can run (SamplerSpec.inpaint), for one SDE or any."""
    return tuple(name for name, spec in SAMPLERS.items() if spec.inpaint and (sde is None or sde in spec.sdes))


# the masks of inpainting: the central square (images only), the right half, random pixels, nothing known (baseline)
MASK_KINDS = ("center", "half", "random", "none")


class CheckpointFormat(NamedTuple):
    """A released checkpoint format `cldsgm import-checkpoint` reads: the training config it defaults to, what the
    file is and where its authors publish it."""

    config: str
    file: str
    help: str


CHECKPOINT_FORMATS = {
    "cld-sgm": CheckpointFormat("params/train/cifar10_cld.yaml",
                                "checkpoint_800000.pth from the CLD-SGM README (github.com/nv-tlabs/CLD-SGM)",
                                "checkpoint_*.pth of nv-tlabs/CLD-SGM"),
    "psld": CheckpointFormat("params/train/cifar10_psld.yaml",
                             "the CIFAR-10 .ckpt from the PSLD README (github.com/mandt-lab/PSLD)",
                             "Lightning .ckpt of mandt-lab/PSLD"),
}


def unregister(name: str) -> None:
    """Remove a sampler added by `register` (the built-in ones stay)."""
    if name in _BUILT_IN:
        raise ValueError(f"sampler {name!r} is built in")
    SAMPLERS.pop(name, None)


def sampler(name: str, sde: str | None = None) -> SamplerSpec:
    """The spec of sampler `name`; ValueError for an unknown one, or one that does not apply to `sde`."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose from {sorted(SAMPLERS)}")
    spec = SAMPLERS[name]
    if sde is not None and sde not in spec.sdes:
        needs = "a phase-space SDE (cld or psld)" if spec.sdes == PHASE_SPACE else " or ".join(spec.sdes)
        raise ValueError(f"sampler {name!r} needs {needs}, not {sde}")
    return spec


def steps_for(name: str, nfe: int, options: dict | None = None, *, denoise: bool = True, exact: bool = True) -> int:
    """Solver steps of a fixed-step sampler for an NFE budget that includes the denoising step.

    exact: refuse a budget the sampler cannot spend exactly (a record must say what was spent: PC with one
    corrector spends 2 per step, so 2k + 1 with denoising); otherwise the largest number of steps within it.
    Raises ValueError for an adaptive sampler, or a budget that leaves no step.
    """
    spec = sampler(name)
    if spec.adaptive:
        raise ValueError(f"the {name} sampler is adaptive: give tolerances, not an NFE budget")
    per_step = spec.per_step(options)
    steps, left = divmod(int(nfe) - int(denoise), per_step)
    if steps < 1 or (exact and left):
        plus = "+1" if denoise else ""
        need = (f"{per_step} NFE per step" + (" + 1 for denoising" if denoise else "") + f": choose nfe = "
                f"{per_step}k{plus}") if per_step > 1 else f"at least {1 + int(denoise)}"
        raise ValueError(f"nfe={nfe} cannot be honoured by sampler {name!r}: it needs {need}")
    return steps


def largest_budget(name: str, budget: int, options: dict | None = None, *, denoise: bool = True) -> int | None:
    """The largest NFE <= budget that the sampler spends exactly (None if none leaves a step): a study's NFE list
    is a list of budgets, and PC honours only 2k + 1 of them."""
    per_step = sampler(name).per_step(options)
    nfe = budget - (budget - int(denoise)) % per_step
    return nfe if nfe >= per_step + int(denoise) else None


def bench_presets() -> dict[str, tuple[str, dict]]:
    """sampler-bench names -> (sampler, options): every sampler by its name (also with '-' for '_') and the
    SSCS variants sscs-ref (the reference code's) and sscs-fix (second order, sigma_d 0.04)."""
    out = {}
    for name in SAMPLERS:
        out[name] = (name, {})
        out.setdefault(name.replace("_", "-"), (name, {}))
    return {**out, **_BENCH_VARIANTS}
