"""Study files (params/*.yaml): validation and the table of jobs they expand into; imports no torch.

The Snakefile and the tests call `load_study`, which checks a study against the JSON Schema in
workflow/schemas/study.schema.yaml (unknown keys, wrong values), then what a schema cannot say (an SSCS row
for VPSDE, a model on a dataset the study does not prepare, a missing CIFAR-10 path, missing Inception
weights where FID is asked for), so that a study stops before any job runs with one message naming the key,
the file and the fix. `sample_rows` is the sweep table: one row per valid (source, sampler, striding, NFE).
"""

from __future__ import annotations

import copy
import functools
import os
from pathlib import Path

import yaml

from cldsgm.config import ConfigError, apply_overrides, first_error, resolve_config

__all__ = ["StudyError", "load_study", "model_sde", "sample_rows", "validate_study"]

SCHEMA_PATH = Path("workflow") / "schemas" / "study.schema.yaml"
_POINTS = ("diamond", "multimodal_swissroll")


class StudyError(ValueError):
    """A study file that cannot run; the message names the file, the key and what to do."""


def _defaults(schema: dict, instance, root: dict):
    """Fill in `default:` values of the schema (object properties, recursively), as Snakemake's validate does."""
    if isinstance(schema, dict) and "$ref" in schema:
        target = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            target = target[part]
        schema = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
    if not isinstance(instance, dict) or not isinstance(schema, dict):
        return instance
    for key, sub in schema.get("properties", {}).items():
        if key not in instance and isinstance(sub, dict) and "default" in sub:
            instance[key] = copy.deepcopy(sub["default"])
        if key in instance:
            instance[key] = _defaults(sub, instance[key], root)
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        for key in set(instance) - set(schema.get("properties", {})):
            instance[key] = _defaults(extra, instance[key], root)
    return instance


@functools.lru_cache(maxsize=4)
def _read_schema(path: str) -> dict:
    """The study schema, parsed once per process (Snakemake and every job step load studies); never mutated."""
    return yaml.safe_load(Path(path).read_text())


def validate_study(study: dict, source: str, schema_path: str | Path = SCHEMA_PATH) -> dict:
    """Schema check plus defaults; StudyError names the file and the key. Returns a filled-in copy."""
    schema = _read_schema(str(schema_path))
    if not isinstance(study, dict):
        raise StudyError(f"{source}: a study file holds a mapping at the top level")
    found = first_error(schema, study)
    if found:
        where, err = found
        hint = ""
        if err.validator == "additionalProperties":
            hint = " (a misspelt key? see workflow/schemas/study.schema.yaml for the keys a study may have)"
        raise StudyError(f"{source}: invalid study at {where}: {err.message}{hint}")
    return _defaults(schema, copy.deepcopy(study), schema)


def model_sde(model: dict) -> str:
    """The SDE name of a study model (from its training config and overrides)."""
    override = (model.get("overrides") or {}).get("sde.name")
    if override:
        return override
    config = yaml.safe_load(Path(model["config"]).read_text()) or {}
    return config.get("sde", {}).get("name", "cld")


_RELEASED = {"cld-sgm": "checkpoint_800000.pth from the CLD-SGM README (github.com/nv-tlabs/CLD-SGM)",
             "psld": "the CIFAR-10 .ckpt from the PSLD README (github.com/mandt-lab/PSLD)"}


def _check_checkpoint(name: str, checkpoint: dict | None, source: str) -> None:
    """An imported model: the user's copy of the released file must be there, and a PSLD file needs its SDE."""
    if checkpoint is None:
        return
    if not Path(checkpoint["file"]).expanduser().is_file():
        raise StudyError(f"{source}: models.{name}.checkpoint.file {checkpoint['file']!r} does not exist: download "
                         f"{_RELEASED[checkpoint['format']]} and put it there, or point the study at your copy")
    missing = [p for p in ("Gamma", "nu") if p not in (checkpoint.get("sde_params") or {})]
    if checkpoint["format"] == "psld" and missing:
        raise StudyError(f"{source}: models.{name}.checkpoint.sde_params lacks {missing}: a PSLD file does not "
                         "record its SDE (the released CIFAR-10 SOTA file is named for Gamma 0.02, nu 4.02)")


# as cldsgm.samplers.PHASE_SPACE_ONLY, which this module does not import: it would bring torch into every
# Snakemake start-up
_PHASE_SPACE_ONLY = ("sscs", "conjugate", "ge_ode", "ge_sde")


def _check_variant_options(name: str, variant: dict, source: str, schema: dict) -> None:
    """A variant's options must be options of its sampler (the schema's sampling.options section for it)."""
    allowed = schema["properties"]["sampling"]["properties"]["options"]["properties"].get(variant["sampler"], {})
    unknown = sorted(set(variant.get("options") or {}) - set(allowed.get("properties", {})))
    if unknown:
        raise StudyError(f"{source}: sampling.variants.{name}.options has {unknown}, not options of sampler "
                         f"{variant['sampler']!r} (allowed: {sorted(allowed.get('properties', {}))})")


def _check_overrides(name: str, model: dict, source: str) -> None:
    """The model's training config with its overrides must pass the training-config schema, so that a wrong key or
    type stops the study before any job (and no override is ever anything but data for the `train` verb)."""
    try:
        config = yaml.safe_load(Path(model["config"]).read_text()) or {}
    except yaml.YAMLError as err:
        raise StudyError(f"{source}: models.{name}.config {model['config']} is not valid YAML ({err})") from None
    try:
        resolve_config(apply_overrides(config, model.get("overrides") or {}),
                       source=f"{source}: models.{name}.overrides on {model['config']}")
    except ConfigError as err:
        raise StudyError(str(err)) from None


def _check_semantics(study: dict, source: str, schema: dict) -> None:
    for name, model in study["models"].items():
        if name.startswith("oracle-"):
            raise StudyError(f"{source}: models.{name}: names starting with 'oracle-' are the exact-score sources' "
                             "(sampling.oracle); rename the model")
        if model["data"] not in study["data"]:
            raise StudyError(f"{source}: models.{name}.data is {model['data']!r}, which the study does not prepare "
                             f"(data: {sorted(study['data'])})")
        if not Path(model["config"]).is_file():
            raise StudyError(f"{source}: models.{name}.config: training config {model['config']} not found")
        _check_overrides(name, model, source)
        _check_checkpoint(name, model.get("checkpoint"), source)
    variants = study["sampling"].get("variants", {})
    known = schema["$defs"]["sampler"]["enum"]
    for sde, samplers in study["sampling"].get("samplers", {}).items():
        for entry in samplers:
            if entry not in known and entry not in variants:
                raise StudyError(f"{source}: sampling.samplers.{sde} lists {entry!r}, which is neither a sampler "
                                 f"({', '.join(known)}) nor a name in sampling.variants")
            sampler = variants[entry]["sampler"] if entry in variants else entry
            if sampler in _PHASE_SPACE_ONLY and sde == "vpsde":
                raise StudyError(f"{source}: sampling.samplers.vpsde lists {entry!r}, which needs a phase-space SDE "
                                 "(cld or psld); remove it or use em / pc / ode")
            if sampler == "pc" and sde != "vpsde":
                raise StudyError(f"{source}: sampling.samplers.{sde} lists 'pc', which is defined for vpsde only")
            if entry in variants:
                _check_variant_options(entry, variants[entry], source, schema)
    for name in study["data"]:
        if name not in _POINTS and name not in study["sampling"]["num_samples"]:
            raise StudyError(f"{source}: sampling.num_samples has no entry for dataset {name!r}")
    cifar = study["data"].get("cifar10")
    if cifar is not None:
        path = cifar.get("source")
        if not path or not Path(path).expanduser().exists():
            raise StudyError(f"{source}: data.cifar10.source {path!r} does not exist: put cifar-10-python.tar.gz "
                             "(or cifar-10-batches-py/) there, or point data.cifar10.source at your copy")
    fid = study["evaluation"].get("fid")
    if fid:
        weights = Path(os.environ.get("CLDSGM_INCEPTION") or fid["inception"])
        if not weights.is_file():
            raise StudyError(f"{source}: evaluation.fid needs the Inception weights {weights}, which are missing: "
                             "put NVIDIA's inception-2015-12-05.pt there (see README, FID), set CLDSGM_INCEPTION, or "
                             "set evaluation.fid to null")


def load_study(config: dict, source: str, schema_path: str | Path = SCHEMA_PATH) -> dict:
    """Validate a study (schema, then semantics) and fill in defaults; raise StudyError before any job runs."""
    study = validate_study(config, source, schema_path)
    _check_semantics(study, source, _read_schema(str(schema_path)))
    return study


def sample_rows(study: dict) -> list[dict]:
    """One row per sample set: {'source', 'kind' ('model' | 'oracle'), 'data', 'sde', 'sampler', 'variant' (the
    name listed in sampling.samplers), 'options', 'striding', 'nfe', 'row'}; 'row' names the set's directory, e.g.
    'em-uniform-nfe20', 'ode-adaptive' or 'sscsfix-quadratic-nfe20'."""
    sampling = study["sampling"]
    sources = [(name, "model", model["data"], model_sde(model)) for name, model in study["models"].items()]
    oracle = sampling.get("oracle", {})
    sources += [(f"oracle-{data}-{sde}", "oracle", data, sde) for data in oracle.get("data", [])
                for sde in oracle.get("sdes", [])]
    rows = []
    variants = sampling.get("variants", {})
    for name, kind, data, sde in sources:
        for entry in sampling["samplers"].get(sde, []):
            variant = variants.get(entry, {"sampler": entry})
            if variant.get("data") and data not in variant["data"]:
                continue
            sampler = variant["sampler"]
            options = {**sampling.get("options", {}).get(sampler, {}), **(variant.get("options") or {})}
            common = {"source": name, "kind": kind, "data": data, "sde": sde, "sampler": sampler, "variant": entry,
                      "options": options}
            if sampler == "ode":
                rows.append({**common, "striding": "adaptive", "nfe": 0, "row": f"{entry}-adaptive"})
                continue
            for striding in variant.get("stridings") or sampling["stridings"]:
                for budget in variant.get("nfe") or sampling["nfe"]:
                    nfe = budget
                    if sampler == "pc":  # 1 + n_corrector per step, + 1 to denoise: the largest budget it can honour
                        per_step = 1 + options.get("n_corrector", 1)
                        nfe = budget - (budget - 1) % per_step
                        if nfe < 1 + per_step:
                            continue
                    rows.append({**common, "striding": striding, "nfe": nfe, "row": f"{entry}-{striding}-nfe{nfe}"})
    return rows
