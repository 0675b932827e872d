"""Training configuration: defaults, YAML loading and JSON-Schema validation (unknown keys are errors)."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import yaml

from cldsgm import catalog

__all__ = ["DEFAULTS", "RESUMABLE_KEYS", "SCHEMA", "ConfigError", "config_changes", "first_error", "flatten",
           "load_config", "resolve_config"]


class ConfigError(ValueError):
    """A configuration that does not match the schema; the message names the key and what was expected."""


def _obj(properties: dict, required=()) -> dict:
    return {"type": "object", "properties": properties, "required": list(required), "additionalProperties": False}


_NUM, _INT, _BOOL, _STR = {"type": "number"}, {"type": "integer"}, {"type": "boolean"}, {"type": "string"}

SCHEMA = _obj({
    "seed": _INT,
    # score: a score model (cldsgm train); classifier: a noise-conditioned classifier of u_t (cldsgm train-classifier)
    "task": {"enum": ["score", "classifier"]},
    "data": _obj({"path": _STR, "hflip": _BOOL}, required=["path"]),
    "sde": _obj({"name": {"enum": list(catalog.SDES)}, "params": {"type": "object"}}, required=["name"]),
    "loss": _obj({"objective": {"enum": ["hsm", "dsm"]},
                  "weighting": {"enum": ["reweightedv2", "reweightedv1", "likelihood"]},
                  "mixed_score": _BOOL, "t_min": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
                  "reduction": {"enum": ["sum", "mean"]}}),
    "model": _obj({"name": _STR, "options": {"type": "object"}}, required=["name"]),
    "optim": _obj({"optimizer": {"enum": ["adam", "adamw"]}, "lr": {"type": "number", "exclusiveMinimum": 0},
                   "weight_decay": {"type": "number", "minimum": 0},
                   "betas": {"type": "array", "items": _NUM, "minItems": 2, "maxItems": 2},
                   "eps": {"type": "number", "exclusiveMinimum": 0}, "warmup_steps": {"type": "integer", "minimum": 0},
                   "fused": _BOOL,
                   # the batch-size rule: lr and warm-up are given for lr_reference_batch and scaled to
                   # train.batch_size (sqrt: Adam's square-root rule; linear; none: as written)
                   "lr_scaling": {"enum": ["none", "sqrt", "linear"]},
                   "lr_reference_batch": {"type": "integer", "minimum": 1},
                   "grad_clip": {"type": ["number", "null"], "exclusiveMinimum": 0}}),
    "train": _obj({"steps": {"type": "integer", "minimum": 1}, "batch_size": {"type": "integer", "minimum": 1},
                   "ema_rate": {"type": "number", "minimum": 0, "maximum": 1}, "ema_warmup": _BOOL,
                   "precision": {"enum": list(catalog.PRECISIONS)},
                   "checkpoint_every": {"type": "integer", "minimum": 1},
                   # keep a copy of the checkpoint every k steps (snapshots/step_<k>.pt) for learning curves; 0: none
                   "snapshot_every": {"type": "integer", "minimum": 0},
                   "log_every": {"type": "integer", "minimum": 1}, "device": {"enum": list(catalog.DEVICES)},
                   # torch.compile: true (inductor, whole network), a backend name, "blocks" (inductor, each
                   # repeated block once) or "blocks:BACKEND"; channels-last memory format
                   "compile": {"type": ["boolean", "string"]},
                   "channels_last": _BOOL,
                   # GroupNorm under bf16/fp16 autocast: in float32 (autocast's rule) or in the compute dtype
                   "norm_dtype": {"enum": ["fp32", "compute"]}}),
    "tracking": _obj({"enabled": _BOOL, "experiment": _STR, "run_name": {"type": ["string", "null"]},
                      "uri": {"type": ["string", "null"]}}),
}, required=["data", "sde", "model"])

DEFAULTS = {  # no "task": absent means score (a score run's config carries no task key)
    "seed": 0,
    "data": {"hflip": False},
    "sde": {"params": {}},
    "loss": {"objective": "hsm", "weighting": "reweightedv2", "mixed_score": False, "t_min": 1e-5, "reduction": "sum"},
    "model": {"options": {}},
    "optim": {"optimizer": "adam", "lr": 2e-4, "weight_decay": 0.0, "betas": [0.9, 0.999], "eps": 1e-8,
              "warmup_steps": 0, "grad_clip": 1.0, "fused": False, "lr_scaling": "none", "lr_reference_batch": 128},
    "train": {"steps": 1000, "batch_size": 128, "ema_rate": 0.9999, "ema_warmup": True, "precision": "fp32",
              "checkpoint_every": 1000, "snapshot_every": 0,
              "log_every": 50, "device": "auto", "compile": False, "channels_last": False,
              "norm_dtype": "fp32"},
    "tracking": {"enabled": True, "experiment": "cldsgm", "run_name": None, "uri": None},
}

# Keys a resumed run may change freely: how long and how often, where it runs, how it is logged. Any other
# change alters the maths of the steps still to come, so resuming with it needs --allow-config-change.
# free to change on resume: how long, how often, where and how fast (not what is computed)
RESUMABLE_KEYS = ("train.steps", "train.log_every", "train.checkpoint_every", "train.snapshot_every",
                  "train.device", "tracking.",
                  "train.compile", "train.channels_last", "train.norm_dtype", "optim.fused")


def _hint(err: jsonschema.ValidationError) -> str:
    """Advice for the usual YAML trap: PyYAML reads 1e-3 (no dot in the mantissa) as a string."""
    if err.validator == "type" and isinstance(err.instance, str):
        try:
            value = float(err.instance)
        except ValueError:
            return ""
        mantissa, _, exponent = err.instance.lower().partition("e")
        fixed = f"{mantissa if '.' in mantissa else mantissa + '.0'}e{exponent}" if exponent else repr(value)
        return f" (YAML reads {err.instance} as a string; write {fixed})"
    return ""


def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def nest(dotted: dict) -> dict:
    """{'train.steps': 500, 'model.options': {'nf': 16}} -> {'train': {'steps': 500}, 'model': {'options': ...}}:
    the form of a study's `overrides` and of `--set` arguments, as a config fragment to merge."""
    out: dict = {}
    for key, value in dotted.items():
        node = out
        *parents, leaf = str(key).split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def apply_overrides(config: dict, dotted: dict) -> dict:
    """`config` with dotted-key overrides merged in (a copy; mappings merge, other values replace)."""
    return _merge(config, nest(dotted))


def override_argument(key: str, value) -> str:
    """One `--set` argument, KEY=VALUE, the value written as one line of YAML so that `--set` (which reads its
    value as YAML) gets back exactly `value`, a nested mapping included. The caller shell-quotes the result."""
    text = yaml.safe_dump(value, default_flow_style=True, width=float("inf"), sort_keys=False)
    return f"{key}={text.removesuffix(chr(10) + '...' + chr(10)).strip()}"  # a plain scalar ends with a '...' line


def first_error(schema: dict, instance) -> tuple[str, jsonschema.ValidationError] | None:
    """The first JSON-Schema violation of `instance` (ordered by path) and its dotted location, or None."""
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(instance), key=lambda e: list(e.path))
    if not errors:
        return None
    return ".".join(str(p) for p in errors[0].path) or "(top level)", errors[0]


def resolve_config(config: dict, *, source: str = "config") -> dict:
    """Validate `config` against SCHEMA and fill in DEFAULTS; raise ConfigError naming the offending key."""
    if not isinstance(config, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(config).__name__}")
    found = first_error(SCHEMA, config)
    if found:
        where, err = found
        raise ConfigError(f"{source}: invalid value at {where}: {err.message}{_hint(err)}")
    if config.get("sde", {}).get("name") == "vpsde" and config.get("loss", {}).get("objective", "hsm") == "hsm":
        config = _merge(config, {"loss": {"objective": "dsm"}})  # VPSDE has a single (DSM) kernel
    return _merge(DEFAULTS, config)


def load_config(path: str | Path, overrides: dict | None = None) -> dict:
    """Read a YAML file, apply overrides (nested dict), validate and resolve."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from err
    return resolve_config(_merge(raw, overrides or {}), source=str(path))


def flatten(config: dict, prefix: str = "") -> dict:
    """{'a': {'b': 1}} -> {'a.b': 1}, for logging parameters."""
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def config_changes(old: dict, new: dict) -> list[str]:
    """Flattened keys whose values differ between two resolved configs, except RESUMABLE_KEYS."""
    # a key added to the schema after `old` was written counts as its default there (e.g. train.ema_warmup)
    flat_old, flat_new = {**flatten(DEFAULTS), **flatten(old)}, {**flatten(DEFAULTS), **flatten(new)}
    keys = sorted(set(flat_old) | set(flat_new))
    return [k for k in keys if flat_old.get(k) != flat_new.get(k)
            and not any(k == r or (r.endswith(".") and k.startswith(r)) for r in RESUMABLE_KEYS)]
