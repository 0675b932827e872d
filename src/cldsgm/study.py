"""Study files (params/*.yaml): validation and the table of jobs they expand into; imports no torch.

The Snakefile and the tests call `load_study`, which checks a study against the JSON Schema in
workflow/schemas/study.schema.yaml, with its names (samplers and their options, datasets, SDEs, ...) filled in from
`cldsgm.catalog`, then what a schema cannot say (an SSCS row for VPSDE, a model on a dataset the study does not
prepare, an override the training config refuses, a missing CIFAR-10 path or Inception weights where FID is asked
for), so that a study stops before any job runs with one message naming the key, the file and the fix.

`job_table` decides everything else the workflow needs: one row per sample set (source x sampler x striding x NFE),
each source's evaluation and metrics, the NLL metric of each model, which models are trained and which imported.
The rules (workflow/rules/common.smk) only map that table to paths and flags.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
from pathlib import Path

import yaml

from cldsgm import catalog
from cldsgm.config import ConfigError, apply_overrides, first_error, resolve_config

__all__ = ["StudyError", "conditional_table", "job_table", "load_study", "model_sde", "nll_items", "oracle_source",
           "sample_rows", "schema", "snapshot_steps", "study_claims", "study_units", "training_config",
           "units_of_models", "validate_study"]

SCHEMA_PATH = Path("workflow") / "schemas" / "study.schema.yaml"


class StudyError(ValueError):
    """A study file that cannot run; the message names the file, the key and what to do."""


def _defaults(schema: dict, instance, root: dict):
    """Fill in `default:` values of the schema (object properties and array items, recursively), as Snakemake's
    validate does."""
    if isinstance(schema, dict) and "$ref" in schema:
        target = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            target = target[part]
        schema = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
    if isinstance(instance, list) and isinstance(schema, dict) and isinstance(schema.get("items"), dict):
        return [_defaults(schema["items"], item, root) for item in instance]
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
    """The study schema file, parsed once per process (Snakemake and every job step load studies); never mutated."""
    return yaml.safe_load(Path(path).read_text())


def schema(path: str | Path = SCHEMA_PATH) -> dict:
    """The study schema with its names from cldsgm.catalog (read each call: a sampler registered at run time is
    part of it)."""
    out = copy.deepcopy(_read_schema(str(path)))
    defs = out["$defs"]
    defs["sampler"]["enum"] = list(catalog.SAMPLERS)
    defs["dataset"]["enum"] = list(catalog.DATASETS)
    defs["oracle_dataset"]["enum"] = [name for name, spec in catalog.DATASETS.items() if spec.oracle]
    defs["sde"]["enum"] = list(catalog.SDES)
    defs["striding"]["enum"] = list(catalog.STRIDINGS)
    defs["precision"]["enum"] = list(catalog.PRECISIONS)
    defs["speedup"]["enum"] = list(catalog.NETWORK_SPEEDUPS)
    defs["mask_kind"]["enum"] = list(catalog.MASK_KINDS)
    defs["inpaint_sampler"]["enum"] = list(catalog.inpaint_samplers())
    defs["checkpoint_format"]["enum"] = list(catalog.CHECKPOINT_FORMATS)
    defs["probes"]["enum"] = list(catalog.NLL_PROBES)
    defs["fid_mode"]["enum"] = list(catalog.FID_MODES)
    sampling = out["properties"]["sampling"]["properties"]
    sampling["samplers"]["properties"] = {name: {"type": "array", "items": {"$ref": "#/$defs/sampler_or_variant"}}
                                          for name in catalog.SDES}
    sampling["options"]["properties"] = {name: spec.schema() for name, spec in catalog.SAMPLERS.items()}
    return out


def validate_study(study: dict, source: str, schema_path: str | Path = SCHEMA_PATH) -> dict:
    """Schema check plus defaults; StudyError names the file and the key. Returns a filled-in copy."""
    full = schema(schema_path)
    if not isinstance(study, dict):
        raise StudyError(f"{source}: a study file holds a mapping at the top level")
    found = first_error(full, study)
    if found:
        where, err = found
        hint = ""
        if err.validator == "additionalProperties":
            hint = " (a misspelt key? see workflow/schemas/study.schema.yaml for the keys a study may have)"
        raise StudyError(f"{source}: invalid study at {where}: {err.message}{hint}")
    return _defaults(full, copy.deepcopy(study), full)


def model_sde(model: dict) -> str:
    """The SDE name of a study model (from its training config and overrides)."""
    override = (model.get("overrides") or {}).get("sde.name")
    if override:
        return override
    config = yaml.safe_load(Path(model["config"]).read_text()) or {}
    return config.get("sde", {}).get("name", "cld")


def _check_checkpoint(name: str, checkpoint: dict | None, source: str) -> None:
    """An imported model: the user's copy of the released file must be there, and a PSLD file needs its SDE."""
    if checkpoint is None:
        return
    if not Path(checkpoint["file"]).expanduser().is_file():
        released = catalog.CHECKPOINT_FORMATS[checkpoint["format"]].file
        raise StudyError(f"{source}: models.{name}.checkpoint.file {checkpoint['file']!r} does not exist: download "
                         f"{released} and put it there, or point the study at your copy")
    missing = [p for p in ("Gamma", "nu") if p not in (checkpoint.get("sde_params") or {})]
    if checkpoint["format"] == "psld" and missing:
        raise StudyError(f"{source}: models.{name}.checkpoint.sde_params lacks {missing}: a PSLD file does not "
                         "record its SDE (the released CIFAR-10 SOTA file is named for Gamma 0.02, nu 4.02)")


def training_config(name: str, model: dict, source: str) -> dict:
    """Study model `name`'s training config resolved as `train` will run it (config file, overrides, defaults). It
    must pass the training-config schema, so that a wrong key or type stops the study before any job (and no
    override is ever anything but data for the `train` verb); StudyError otherwise."""
    try:
        config = yaml.safe_load(Path(model["config"]).read_text()) or {}
    except yaml.YAMLError as err:
        raise StudyError(f"{source}: models.{name}.config {model['config']} is not valid YAML ({err})") from None
    try:
        return resolve_config(apply_overrides(config, model.get("overrides") or {}),
                              source=f"{source}: models.{name}.overrides on {model['config']}")
    except ConfigError as err:
        raise StudyError(str(err)) from None


def _check_variant_options(name: str, variant: dict, source: str) -> None:
    """A variant's options must be options of its sampler."""
    allowed = sorted(option.name for option in catalog.sampler(variant["sampler"]).options)
    unknown = sorted(set(variant.get("options") or {}) - set(allowed))
    if unknown:
        raise StudyError(f"{source}: sampling.variants.{name}.options has {unknown}, not options of sampler "
                         f"{variant['sampler']!r} (allowed: {allowed})")


def _check_models(study: dict, source: str, check_files: bool) -> None:
    for name, model in study["models"].items():
        if name.startswith("oracle-") or re.search(r"-seed\d+$", name):
            raise StudyError(f"{source}: models.{name}: names starting with 'oracle-' or ending in '-seed<k>' are "
                             "the exact-score sources' and the training replicas'; rename the model")
        if model.get("checkpoint") and len(model.get("seeds") or []) > 1:
            raise StudyError(f"{source}: models.{name}.seeds: an imported checkpoint is one set of weights; give "
                             "no seeds for it")
        if model["data"] not in study["data"]:
            raise StudyError(f"{source}: models.{name}.data is {model['data']!r}, which the study does not prepare "
                             f"(data: {sorted(study['data'])})")
        base = model.get("ablation_of")
        if base is not None and (base not in study["models"] or study["models"][base]["data"] != model["data"]
                                 or base == name):
            raise StudyError(f"{source}: models.{name}.ablation_of {base!r} is no other study model of "
                             f"{model['data']} ({sorted(m for m in study['models'] if m != name)})")
        listed = study["sampling"]["samplers"].get(model_sde(model), [])
        unknown = [s for s in model.get("samplers") or [] if s not in listed]
        if unknown:
            raise StudyError(f"{source}: models.{name}.samplers lists {unknown}, which sampling.samplers."
                             f"{model_sde(model)} does not ({listed})")
        if not check_files:
            continue
        if not Path(model["config"]).is_file():
            raise StudyError(f"{source}: models.{name}.config: training config {model['config']} not found")
        training_config(name, model, source)
        _check_checkpoint(name, model.get("checkpoint"), source)


def _check_samplers(study: dict, source: str) -> None:
    variants = study["sampling"].get("variants", {})
    for sde, samplers in study["sampling"].get("samplers", {}).items():
        for entry in samplers:
            if entry not in catalog.SAMPLERS and entry not in variants:
                raise StudyError(f"{source}: sampling.samplers.{sde} lists {entry!r}, which is neither a sampler "
                                 f"({', '.join(catalog.SAMPLERS)}) nor a name in sampling.variants")
            sampler = variants[entry]["sampler"] if entry in variants else entry
            try:
                catalog.sampler(sampler, sde)
            except ValueError as err:
                raise StudyError(f"{source}: sampling.samplers.{sde} lists {entry!r}: {err}; remove it or use one of "
                                 f"{[n for n, s in catalog.SAMPLERS.items() if sde in s.sdes]}") from None
            if entry in variants:
                _check_variant_options(entry, variants[entry], source)


def _check_curve(study: dict, source: str) -> None:
    """sampling.curve: a sampler (or variant) every SDE of the curve's models can use, on datasets the study has."""
    curve = study["sampling"].get("curve")
    if not curve:
        return
    variants = study["sampling"].get("variants", {})
    if curve["sampler"] not in catalog.SAMPLERS and curve["sampler"] not in variants:
        raise StudyError(f"{source}: sampling.curve.sampler {curve['sampler']!r} is neither a sampler nor a name in "
                         "sampling.variants")
    _, sampler, _ = _sampler_of(study["sampling"], curve["sampler"])
    for name, model in study["models"].items():
        if model["data"] not in curve["data"]:
            continue
        try:
            catalog.sampler(sampler, model_sde(model))
        except ValueError as err:
            raise StudyError(f"{source}: sampling.curve.sampler {curve['sampler']!r} cannot sample model {name}: "
                             f"{err}; use one every SDE has (em)") from None
        if not model.get("checkpoint") and not snapshot_steps(name, model, source):
            raise StudyError(f"{source}: sampling.curve asks for a learning curve of {name}, which keeps no "
                             f"snapshots: set train.snapshot_every in models.{name}.overrides")
    unknown = sorted(set(curve["data"]) - set(study["data"]))
    if unknown:
        raise StudyError(f"{source}: sampling.curve.data lists {unknown}, which the study does not prepare")
    for entry in curve.get("compare", []):
        if entry not in catalog.SAMPLERS and entry not in variants:
            raise StudyError(f"{source}: sampling.curve.compare lists {entry!r}, which is neither a sampler nor a name "
                             "in sampling.variants")


def _check_files(study: dict, source: str) -> None:
    for name, spec in study["data"].items():
        if catalog.DATASETS[name].needs_source:
            path = spec.get("source")
            if not path or not Path(path).expanduser().exists():
                hint = ("cifar-10-python.tar.gz (or cifar-10-batches-py/)" if name == "cifar10"
                        else "the folder of images")
                raise StudyError(f"{source}: data.{name}.source {path!r} does not exist: put {hint} there, or point "
                                 f"data.{name}.source at your copy")
    fid = study["evaluation"].get("fid")
    if fid:
        weights = Path(os.environ.get("CLDSGM_INCEPTION") or fid["inception"])
        if not weights.is_file():
            raise StudyError(f"{source}: evaluation.fid needs the Inception weights {weights}, which are missing: "
                             "put NVIDIA's inception-2015-12-05.pt there (see docs/architecture.md, 'Evaluation'), "
                             "set CLDSGM_INCEPTION, or set evaluation.fid to null")


def _check_semantics(study: dict, source: str, check_files: bool = True) -> None:
    _check_models(study, source, check_files)
    _check_samplers(study, source)
    if check_files:  # the curve reads the models' training configs
        _check_curve(study, source)
    for name in study["data"]:
        if catalog.DATASETS[name].kind != "points" and name not in study["sampling"]["num_samples"]:
            raise StudyError(f"{source}: sampling.num_samples has no entry for dataset {name!r}")
    _check_claims(study, source)
    if check_files:
        _check_files(study, source)
        _check_conditional(study, source)


def _check_claims(study: dict, source: str) -> None:
    """Every claim a study lists is one of cldsgm.claims (whether the study can serve it, the report says)."""
    from cldsgm.claims import CLAIMS

    unknown = [c for c in study.get("claims") or [] if c not in CLAIMS]
    if unknown:
        raise StudyError(f"{source}: claims lists {unknown}, which are no claims of cldsgm.claims (`cldsgm claims` "
                         f"lists them: {', '.join(CLAIMS)})")


def _network(config: dict) -> str:
    """The architecture and its options, less the channel counts (which the SDE's state sets: x for the VPSDE,
    (x, v) for CLD/PSLD)."""
    model = config.get("model") or {}
    options = {k: v for k, v in (model.get("options") or {}).items() if k not in ("in_channels", "out_channels")}
    return json.dumps({"name": model.get("name"), "options": options}, sort_keys=True)


def units_of_models(study: dict, source: str = "study") -> dict[str, dict]:
    """model name -> the attributes claims select on: sde, objective, mixed_score, data, budget (steps x batch),
    network (its name and options), kind 'model'. From each model's training config as `train` resolves it."""
    out = {}
    for name, model in study["models"].items():
        try:
            config = training_config(name, model, source)
        except (StudyError, OSError):  # a study read without its files (a report elsewhere): what it says itself
            config = {"sde": {"name": model_sde(model)}}
        loss, train = config.get("loss") or {}, config.get("train") or {}
        out[name] = {"sde": config["sde"]["name"], "objective": loss.get("objective"),
                     "mixed_score": loss.get("mixed_score"), "data": model["data"], "kind": "model",
                     "ablation": bool(model.get("ablation_of")),
                     "budget": None if model.get("checkpoint") else f"{train.get('steps')} x {train.get('batch_size')}",
                     "network": _network(config)}
    return out


def study_units(study: dict, table: dict, source: str = "study") -> list[dict]:
    """Every unit a (validated) study will record, from its job table (cldsgm.study.job_table): one per sample set
    and metric, NLL, score Jacobian and objective variance of each model, prior KL of each data law and SDE."""
    models = units_of_models(study, source)
    out = []

    def source_attributes(name: str) -> dict:
        src = table["sources"][name]
        if src["kind"] == "model":
            return {**models[src["model"]], "model": src["model"], "seed": src["train_seed"], "source": name}
        return {"sde": src["sde"], "data": src["data"], "kind": "oracle", "model": name, "seed": None,
                "source": name}

    for row in table["rows"]:
        attributes = source_attributes(row["source"])
        if row.get("train_step"):  # a snapshot of the learning curve: a model of its own for within-claims
            attributes.update(model=f"{attributes['model']} step {row['train_step']}", step=row["train_step"])
        for metric in table["sources"][row["source"]]["metrics"]:
            out.append({**attributes, "metric": metric, "row": row["row"], "sampler": row["sampler"],
                        "options": row["options"], "variant": row["variant"], "nfe": row["nfe"] or None,
                        "striding": row["striding"]})
    for run, metric in table["nll"].items():
        out.append({**source_attributes(run), "metric": metric, "row": "nll"})
    for name in table.get("smoothness", []):
        out.append({**source_attributes(name), "metric": "score_jacobian", "row": "smoothness"})
    for run in table.get("loss_variance", []):
        for estimator in ("hsm", "dsm"):
            out.append({**source_attributes(run), "metric": "grad_variance", "row": f"grad-{estimator}",
                        "estimator": estimator})
    for law in table.get("equilibrium", {}).values():
        out.append({"sde": law["sde"], "data": law["data"], "kind": "law", "model": law["name"], "seed": None,
                    "source": law["name"], "metric": "prior_kl", "row": "equilibrium"})
    return out


def study_claims(study: dict, table: dict | None = None, source: str = "study", *,
                 units: list[dict] | None = None) -> tuple[list, list]:
    """(the instances the study decides, [(claim, what it lacks)] for the claims it lists but cannot serve): the
    claims of `claims:`, or every claim the study's units (study_units, unless given) serve (cldsgm.claims)."""
    from cldsgm import claims

    units = units if units is not None else study_units(study, table or job_table(study), source)
    listed = study.get("claims")
    decided, lacking = [], []
    for claim_id in listed if listed is not None else claims.CLAIMS:
        claim = claims.CLAIMS[claim_id]
        found = claims.instances(claim, units)
        decided += found
        if not found:
            lacking.append((claim, claims.missing(claim, units)))
    return decided, lacking


def load_study(config: dict, source: str, schema_path: str | Path = SCHEMA_PATH, *, check_files: bool = True) -> dict:
    """Validate a study (schema, then semantics) and fill in defaults; raise StudyError before any job runs.

    check_files: also check the files a run needs (training configs and their overrides, CIFAR-10 source,
    Inception weights, released checkpoints); off for reading the study of finished results."""
    study = validate_study(config, source, schema_path)
    _check_semantics(study, source, check_files)
    return study


def oracle_source(data: str, sde: str) -> str:
    """The source name of the exact-score rows of `data` under `sde`, e.g. 'oracle-diamond-cld'."""
    return f"oracle-{data}-{sde}"


# -- conditional generation --------------------------------------------------------------------------------------------


def _conditional_source(study: dict, name: str, where: str) -> dict:
    """A conditional entry's score source: {'source', 'kind' ('model' | 'oracle'), 'data', 'sde', 'oracle'}: a study
    model (its first training replica), or 'oracle-<data>-<sde>', the exact score of a 2-D dataset the study has."""
    if name in study["models"]:
        model = study["models"][name]
        return {"source": name, "kind": "model", "data": model["data"], "sde": model_sde(model), "oracle": None}
    match = re.fullmatch(r"oracle-([a-z0-9_]+)-([a-z0-9]+)", name)
    if match and match[1] in study["data"] and catalog.DATASETS[match[1]].oracle and match[2] in catalog.SDES:
        return {"source": name, "kind": "oracle", "data": match[1], "sde": match[2],
                "oracle": catalog.DATASETS[match[1]].oracle}
    oracles = [oracle_source(d, "<sde>") for d in study["data"] if catalog.DATASETS[d].oracle]
    raise StudyError(f"{where}.source {name!r} is neither a study model ({sorted(study['models'])}) nor an exact score "
                     f"of a dataset the study prepares ({oracles or 'none'}, <sde> one of {list(catalog.SDES)})")


def _scale_name(scale: float) -> str:
    """A guidance scale as it appears in a row name: 0, 1, 2.5 (no trailing zeros)."""
    return f"{float(scale):g}"


def conditional_table(study: dict) -> dict:
    """The conditional jobs of a (validated) study: {'classifiers': name -> {data, config, overrides}, 'sets': one
    row per sample set}. A set: {'source', 'kind' ('guided' | 'inpaint'), 'source_kind', 'data', 'sde', 'oracle',
    'row' (e.g. 'guided-digits_clf-k3-w2', 'inpaint-center-sscs'), 'sampler', 'nfe', 'striding', 'n', and 'classifier',
    'class', 'scale' (guided) or 'mask' (inpaint)}. Guided sets are judged against their class, inpainted ones
    against the label of the test item they complete."""
    spec = study.get("conditional") or {}
    sets = []
    for entry in spec.get("guided", []):
        src = _conditional_source(study, entry["source"], "conditional.guided")
        for label in entry["classes"]:
            for scale in entry["scales"]:
                sets.append({**src, "source_kind": src["kind"], "kind": "guided", "classifier": entry["classifier"],
                             "class": label, "scale": float(scale), "sampler": entry["sampler"], "nfe": entry["nfe"],
                             "striding": entry["striding"], "n": entry["n"],
                             "row": f"guided-{entry['classifier']}-k{label}-w{_scale_name(scale)}"})
    for entry in spec.get("inpaint", []):
        src = _conditional_source(study, entry["source"], "conditional.inpaint")
        for mask in entry["masks"]:
            sets.append({**src, "source_kind": src["kind"], "kind": "inpaint", "mask": mask,
                         "sampler": entry["sampler"], "nfe": entry["nfe"], "striding": entry["striding"],
                         "n": entry["n"], "row": f"inpaint-{mask}-{entry['sampler']}"})
    return {"classifiers": dict(spec.get("classifiers", {})), "sets": sets, "groups": conditional_groups(sets)}


def conditional_groups(sets: list[dict]) -> dict:
    """'<source>/<group>' -> how one evaluation job scores a group of conditional sets: every set of a source that
    one class-accuracy and one distance call can score together (guided: one classifier and class, as the per-class
    distance takes one class; inpainted: all), with

    judge: the classifier that tells a sample's class: 'fd_classifier' (the FD-digits network of the study) for
    images, 'oracle:<law>' (the mixture's most probable component) for 2-D data with an exact law;
    distance: {'verb' (the dataset's evaluation verb), 'split' (the reference data: a guided set against the training
    split's images of its class, the larger; a completion against the held-out split), 'oracle' (the law of 2-D
    data), 'class' (a guided set's; None for completions)}.
    """
    groups = {}
    for spec in sets:
        name = f"guided-{spec['classifier']}-k{spec['class']}" if spec["kind"] == "guided" else "inpaint"
        groups.setdefault(f"{spec['source']}/{name}", []).append(spec)
    plan = {}
    for key, members in groups.items():
        first, dataset = members[0], catalog.DATASETS[members[0]["data"]]
        guided = first["kind"] == "guided"
        law = dataset.oracle if dataset.exact_law else None  # 2-D data drawn from a mixture: its components judge
        plan[key] = {"sets": members, "data": first["data"],
                     "judge": f"oracle:{law}" if law else "fd_classifier",
                     "distance": {"verb": dataset.evaluation, "class": first["class"] if guided else None,
                                  "split": "test" if not guided else (None if law else "train"), "oracle": law}}
    return plan


def _classifier_sde(name: str, spec: dict, source: str) -> dict:
    """The SDE ({'name', 'params'}) a study classifier is trained for; its config must be a classifier's."""
    config = training_config(name, spec, source)
    if config.get("task") != "classifier":
        raise StudyError(f"{source}: conditional.classifiers.{name}.config {spec['config']} is a score model's "
                         "config; a classifier's has `task: classifier` (e.g. params/train/toy_psld_classifier.yaml)")
    return config["sde"]


def _check_guided(study: dict, i: int, entry: dict, classifiers: dict, sdes: dict, source: str) -> None:
    """One conditional.guided entry: its source, a classifier of the source's data and SDE, classes in range, a
    sampler of the SDE that spends the NFE exactly."""
    where = f"{source}: conditional.guided[{i}]"
    src = _conditional_source(study, entry["source"], where)
    clf = entry["classifier"]
    if clf == "oracle" and src["kind"] != "oracle":
        raise StudyError(f"{where}.classifier oracle is the exact class posterior of an exact-score source; "
                         f"{src['source']} is a trained model: name a trained classifier of conditional.classifiers")
    if clf != "oracle" and clf not in classifiers:
        raise StudyError(f"{where}.classifier {clf!r} is not in conditional.classifiers ({sorted(classifiers)}) "
                         "nor 'oracle'")
    if clf != "oracle" and classifiers[clf]["data"] != src["data"]:
        raise StudyError(f"{where}: classifier {clf} is of {classifiers[clf]['data']}, the source of {src['data']}")
    if clf != "oracle" and src["kind"] == "model":
        model_sde_spec = training_config(src["source"], study["models"][src["source"]], source)["sde"]
        if sdes[clf] != model_sde_spec:
            raise StudyError(f"{where}: classifier {clf} is trained for {sdes[clf]}, model {src['source']} is "
                             f"{model_sde_spec}: guidance needs the classifier of the score model's SDE")
    classes = catalog.DATASETS[src["data"]].num_classes
    if classes is None or max(entry["classes"]) >= classes:
        raise StudyError(f"{where}.classes {entry['classes']}: {src['data']} has "
                         f"{f'classes 0 ... {classes - 1}' if classes else 'no classes'}")
    try:
        catalog.sampler(entry["sampler"], src["sde"])
    except ValueError as err:
        raise StudyError(f"{where}.sampler: {err}") from None
    if not catalog.SAMPLERS[entry["sampler"]].adaptive and \
            catalog.largest_budget(entry["sampler"], entry["nfe"], {}) != entry["nfe"]:
        raise StudyError(f"{where}.nfe {entry['nfe']}: {entry['sampler']} cannot spend exactly that budget")


def _check_inpaint(study: dict, i: int, entry: dict, source: str) -> None:
    """One conditional.inpaint entry: its source is CLD or PSLD, its masks fit the data."""
    where = f"{source}: conditional.inpaint[{i}]"
    src = _conditional_source(study, entry["source"], where)
    if "center" in entry["masks"] and catalog.DATASETS[src["data"]].kind != "image":
        others = [kind for kind in catalog.MASK_KINDS if kind != "center"]
        raise StudyError(f"{where}.masks: the center mask is for images; {src['data']} is points (use one of "
                         f"{others})")
    if src["sde"] not in catalog.PHASE_SPACE:
        raise StudyError(f"{where}: inpainting replaces data and momentum, so the source must be CLD or PSLD, "
                         f"not {src['sde']}")


def _check_conditional(study: dict, source: str) -> None:
    """What the schema cannot say of `conditional`: classifiers of datasets the study has (classifier configs), the
    guided and inpainting entries (_check_guided, _check_inpaint), no set listed twice."""
    spec = study.get("conditional") or {}
    classifiers = spec.get("classifiers", {})
    sdes = {}
    for name, clf in classifiers.items():
        if clf["data"] not in study["data"]:
            raise StudyError(f"{source}: conditional.classifiers.{name}.data is {clf['data']!r}, which the study does "
                             f"not prepare (data: {sorted(study['data'])})")
        if not Path(clf["config"]).is_file():
            raise StudyError(f"{source}: conditional.classifiers.{name}.config: {clf['config']} not found")
        sdes[name] = _classifier_sde(f"conditional.classifiers.{name}", clf, source)
    for i, entry in enumerate(spec.get("guided", [])):
        _check_guided(study, i, entry, classifiers, sdes, source)
    for i, entry in enumerate(spec.get("inpaint", [])):
        _check_inpaint(study, i, entry, source)
    rows = [f"{s['source']}/{s['row']}" for s in conditional_table(study)["sets"]]
    repeated = sorted({r for r in rows if rows.count(r) > 1})
    if repeated:
        raise StudyError(f"{source}: conditional lists the sample sets {repeated} twice; merge the entries")


def replicas(study: dict) -> dict[str, dict]:
    """Training replicas by source name: {'model', 'seed'}; the first seed of a model keeps its name, the others are
    <model>-seed<k> (models.<m>.seeds, default [the study's seed])."""
    out = {}
    for name, model in study["models"].items():
        seeds = model.get("seeds") or [study["seed"]]
        for i, seed in enumerate(seeds):
            out[name if i == 0 else f"{name}-seed{seed}"] = {"model": name, "seed": seed}
    return out


def _sources(study: dict) -> list[dict]:
    """Every sample source: the study's models (each training replica), then the exact-score oracles of
    sampling.oracle."""
    out = []
    for name, replica in replicas(study).items():
        model = study["models"][replica["model"]]
        out.append({"source": name, "kind": "model", "data": model["data"], "sde": model_sde(model), "oracle": None,
                    "model": replica["model"], "train_seed": replica["seed"]})
    oracle = study["sampling"].get("oracle", {})
    out += [{"source": oracle_source(data, sde), "kind": "oracle", "data": data, "sde": sde,
             "oracle": catalog.DATASETS[data].oracle, "model": oracle_source(data, sde), "train_seed": None}
            for data in oracle.get("data", []) for sde in oracle.get("sdes", [])]
    return out


def sample_rows(study: dict) -> list[dict]:
    """One row per sample set: {'source', 'kind' ('model' | 'oracle'), 'data', 'sde', 'oracle' (the law of an
    oracle source), 'sampler', 'variant' (the name listed in sampling.samplers), 'options', 'striding', 'nfe',
    'row'}; 'row' names the set's directory, e.g. 'em-uniform-nfe20', 'ode-adaptive' or 'sscsfix-quadratic-nfe20'.
    An NFE budget a sampler cannot spend exactly becomes the largest one it can (PC: 2k + 1)."""
    sampling = study["sampling"]
    rows = []
    for src in _sources(study):
        rows += _curve_rows(study, src)
        only = study["models"][src["model"]].get("samplers") if src["kind"] == "model" else None
        for entry in sampling["samplers"].get(src["sde"], []):
            variant, sampler, options = _sampler_of(sampling, entry)
            if variant.get("data") and src["data"] not in variant["data"] or only and entry not in only:
                continue
            common = {**src, "sampler": sampler, "variant": entry, "options": options}
            if catalog.SAMPLERS[sampler].adaptive:
                rows.append({**common, "striding": "adaptive", "nfe": 0, "row": f"{entry}-adaptive"})
                continue
            for striding in variant.get("stridings") or sampling["stridings"]:
                for budget in variant.get("nfe") or sampling["nfe"]:
                    nfe = catalog.largest_budget(sampler, budget, options)
                    if nfe is not None:
                        rows.append({**common, "striding": striding, "nfe": nfe,
                                     "row": f"{entry}-{striding}-nfe{nfe}"})
    return rows


def snapshot_steps(name: str, model: dict, source: str = "study") -> list[int]:
    """The training steps at which study model `name` keeps a snapshot (train.snapshot_every), the last one
    included."""
    train = training_config(name, model, source)["train"]
    every = train["snapshot_every"]
    return list(range(every, train["steps"] + 1, every)) if every else []


def _sampler_of(sampling: dict, entry: str) -> tuple[dict, str, dict]:
    """A sampling.samplers (or curve) entry: (its variant spec, the sampler, the options: the sampler's study-wide
    options under the variant's own)."""
    variant = sampling.get("variants", {}).get(entry, {"sampler": entry})
    sampler = variant["sampler"]
    return variant, sampler, {**sampling.get("options", {}).get(sampler, {}), **(variant.get("options") or {})}


def _curve_rows(study: dict, src: dict) -> list[dict]:
    """The learning-curve rows of a trained source (sampling.curve): per snapshot of its run, the curve's sampler
    (variant 'curve', rows curve-<striding>-nfe<k>-step<s>) and each `compare` entry its SDE can use (variant the
    entry, rows curve-<entry>-<striding>-nfe<k>-step<s>), all at the curve's NFE."""
    curve = study["sampling"].get("curve")
    if not curve or src["kind"] != "model" or src["data"] not in curve["data"] or \
            study["models"][src["model"]].get("checkpoint"):
        return []
    rows = []
    only = study["models"][src["model"]].get("samplers")
    for entry in [curve["sampler"], *curve.get("compare", [])]:
        _, sampler, options = _sampler_of(study["sampling"], entry)
        lacking = src["sde"] not in catalog.SAMPLERS[sampler].sdes or only and entry not in only
        if entry != curve["sampler"] and lacking:
            continue  # a compare entry this SDE has not (SSCS for the VPSDE), or the model does not list
        nfe = None if catalog.SAMPLERS[sampler].adaptive else catalog.largest_budget(sampler, curve["nfe"], options)
        striding = "adaptive" if nfe is None else curve["striding"]
        main = entry == curve["sampler"]
        prefix = "curve" if main else f"curve-{entry}"
        rows += [{**src, "sampler": sampler, "variant": "curve" if main else entry, "options": options,
                  "striding": striding, "nfe": nfe or 0, "train_step": step,
                  "row": f"{prefix}-{striding}-nfe{nfe or 0}-step{step}"}
                 for step in snapshot_steps(src["model"], study["models"][src["model"]])]
    return rows


def _evaluation(study: dict, data: str) -> str | None:
    """The verb that scores the sample sets of `data` in this study, or None where the study turns it off."""
    spec = catalog.DATASETS[data]
    switch = {"fd_digits": "fd_digits", "fid": "fid"}.get(spec.evaluation)  # evaluation.<key> set to null: off
    if switch is not None and study["evaluation"].get(switch) is None:
        return None
    return spec.evaluation


def job_table(study: dict) -> dict:
    """Everything the workflow decides from a (validated) study.

    rows: sample_rows, each with its `num_samples`. sources: name -> {kind, data, sde, oracle, evaluation (the verb
    scoring its sets, or None), metrics (of that verb), modes (the law to measure mode coverage against, or None),
    model and train_seed (a training replica's model and seed)}. replicas: run name -> {model, seed}. nll: run
    name -> NLL metric (empty when evaluation.nll is null). trained / imported: run names; multinode: the trained
    runs whose job spans several nodes (models.<m>.nodes > 1). smoothness: the sources
    whose score Jacobian is measured; loss_variance: the runs whose HSM and DSM gradients are; equilibrium: the
    data laws (_laws); floors: dataset -> n, the real items each floor is measured on; records: the files under
    results/<study>/ the report waits for (record_files).
    """
    rows = [{**row, "num_samples": study["sampling"]["num_samples"][row["data"]]} for row in sample_rows(study)]
    sources = {}
    for src in _sources(study):
        spec = catalog.DATASETS[src["data"]]
        evaluation = _evaluation(study, src["data"])
        sources[src["source"]] = {**src, "evaluation": evaluation, "metrics": list(spec.metrics) if evaluation else [],
                                  "modes": spec.oracle if spec.modes else None}
    runs = replicas(study)
    evaluation = study["evaluation"]
    sizes = (evaluation.get("nll") or {}).get("num_samples")
    nll = ({name: catalog.DATASETS[study["models"][r["model"]]["data"]].nll_metric for name, r in runs.items()
            if not isinstance(sizes, dict) or study["models"][r["model"]]["data"] in sizes}
           if evaluation.get("nll") else {})
    imported = sorted(name for name, r in runs.items() if study["models"][r["model"]].get("checkpoint"))
    loss_variance = evaluation.get("loss_variance")
    table = {"rows": rows, "sources": sources, "nll": nll, "imported": imported, "replicas": runs,
             "trained": sorted(name for name in runs if name not in imported), "conditional": conditional_table(study),
             "multinode": sorted(name for name, r in runs.items() if study["models"][r["model"]]["nodes"] > 1),
             "smoothness": [name for name, src in sources.items() if evaluation.get("smoothness") and not _ablation(
                 study, src)],
             "loss_variance": [name for name, src in sources.items() if loss_variance and src["kind"] == "model"
                               and src["sde"] in loss_variance["sdes"] and not _ablation(study, src)],
             "equilibrium": _laws(study) if evaluation.get("equilibrium") else {},
             "floors": {data: study["sampling"]["num_samples"][data] for data in study["data"]
                        if evaluation.get("floor") and _evaluation(study, data) in ("fd_digits", "sample_distance")
                        and data in study["sampling"]["num_samples"]}}
    # the dataset whose sample sets FID scores (one per study: its reference statistics are the study's)
    fid_data = next((s["data"] for s in sources.values() if s["evaluation"] == "fid"), None)
    return {**table, "records": record_files(study, table), "fid_data": fid_data}


def record_files(study: dict, table: dict) -> list[str]:
    """What the report and the track job wait for, as paths under results/<study>/: each source's evaluation marker
    (or its FID records), the FD-digits classifier's record, the NLL records, every conditional group's accuracy and
    distance markers, the floors (per dataset and verb), smoothness, gradient variances and equilibria."""
    out = []
    for name, source in table["sources"].items():
        if source["evaluation"] in ("fd_digits", "sample_distance"):
            out.append(f"records/{name}/{source['evaluation']}.done")
    out += [f"records/{row['source']}/{row['row']}/fid.json" for row in table["rows"]
            if table["sources"][row["source"]]["evaluation"] == "fid"]
    if any(_evaluation(study, data) == "fd_digits" for data in study["data"]):
        out.append("records/classifier/classifier_accuracy.json")
    out += [f"records/{model}/nll/{metric}.json" for model, metric in table["nll"].items()]
    for key, group in table["conditional"]["groups"].items():
        out += [f"records/conditional/{key}.{step}.done" for step in ("accuracy", group["distance"]["verb"])]
    out += [f"records/floor-{data}/floor.{_evaluation(study, data)}.done" for data in table["floors"]]
    out += [f"records/{source}/smoothness/score_jacobian.json" for source in table["smoothness"]]
    out += [f"records/{run}/grad/{objective}/grad_variance.json" for run in table["loss_variance"]
            for objective in ("hsm", "dsm")]
    return out + [f"records/{law}/equilibrium/prior_kl.json" for law in table["equilibrium"]]


def _ablation(study: dict, src: dict) -> bool:
    """Whether a sample source is a training replica of an ablation model (models.<m>.ablation_of)."""
    return src["kind"] == "model" and bool(study["models"][src["model"]].get("ablation_of"))


def _laws(study: dict) -> dict:
    """The data laws whose approach to the prior the study measures: 'law-<data>-<sde>' -> {name, data, sde, oracle,
    sde_params (those of the dataset's first model of that SDE)} for each dataset drawn from an exact law and each
    SDE of its models."""
    out = {}
    for name, model in study["models"].items():
        spec = catalog.DATASETS[model["data"]]
        if not spec.exact_law:
            continue
        sde = model_sde(model)
        key = f"law-{model['data']}-{sde}"
        if key not in out:
            params = training_config(name, model, "study")["sde"].get("params") or {}
            # numerical_eps is the training kernel's jitter, no part of the process whose law is measured
            out[key] = {"name": key, "data": model["data"], "sde": sde, "oracle": spec.oracle,
                        "sde_params": {k: v for k, v in params.items() if k != "numerical_eps"}}
    return out


def nll_items(study: dict, data: str) -> int | None:
    """evaluation.nll.num_samples for a dataset (a number for all, or a mapping per dataset); None: every item."""
    size = (study["evaluation"].get("nll") or {}).get("num_samples")
    return size.get(data) if isinstance(size, dict) else size
