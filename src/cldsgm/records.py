"""The one JSON record format that every evaluation command writes; the report and MLflow read only these.

A record is one metric of one sample set (or data split): its value and standard error where defined, and
everything needed to tell two numbers apart: the NFE actually spent, the sampler and its options, striding,
SDE, network, checkpoint (sha256 and step) or oracle, n, FID mode, seed, wall seconds, device and version, and the
labels the study gave the set (source, row, variant, data, kind). `records_frame` is the one reader of a
folder of records (the report and the MLflow re-logging use it); nothing parses a directory name.
Records are validated against RECORD_SCHEMA when written and when read; this module imports no torch.
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
from pathlib import Path

from cldsgm import __version__
from cldsgm.config import first_error
from cldsgm.utils.io import atomic_write_json, project_path

__all__ = ["BIASED", "METRICS", "NONNEGATIVE", "RECORD_SCHEMA", "RecordError", "dataset_fields", "make_record",
           "measured", "read_record", "records_frame", "sample_set_fields", "write_measured", "write_metric",
           "write_record"]

# metric name -> what it is (the report's column captions come from here)
METRICS = {
    "fid": "Fréchet Inception distance (clean-fid)",
    "kid": "kernel Inception distance (clean-fid)",
    "fd_digits": "Fréchet distance in the features of the digits classifier (not FID)",
    "sliced_w2": "sliced 2-Wasserstein distance to fresh data",
    "energy": "energy distance to fresh data",
    "mode_tv": "total variation between mode weights and the true weights",
    "nll_bpd": "negative log-likelihood in bits/dim (probability-flow ODE; CLD/PSLD: upper bound)",
    "nll_nats": "negative log-likelihood in nats per sample (probability-flow ODE; CLD/PSLD: upper bound)",
    "classifier_accuracy": "test accuracy of the digits classifier",
    "class_accuracy": "share of conditional samples a classifier assigns to the class asked for (guided sampling: "
                      "the class; inpainting: the original image's)",
    "known_pixel_error": "largest absolute difference of an inpainted set's known pixels from the image's (0: kept)",
    "score_jacobian": "the score's Jacobian norm relative to the prior score's: mean over t of log10 (0: as smooth "
                      "as the prior)",
    "grad_variance": "trace of the covariance of per-example gradients of the score-matching loss (HSM or DSM, "
                     "likelihood weighting) at one network",
    "prior_kl": "the time at which KL(p_t || prior) of the forward process's marginal falls below 0.01 nats (exact "
                "law, Monte Carlo; lower: a faster approach to equilibrium)",
}
# metrics whose plug-in estimate is biased upwards at finite n (a distance between n draws and a reference is
# positive even for draws of the reference's law): their records report the bias-corrected estimate
BIASED = frozenset({"fid", "fd_digits", "sliced_w2", "energy", "mode_tv"})
# metrics that cannot be negative: value and interval stop at 0 (KID's unbiased estimate can be negative)
NONNEGATIVE = frozenset({"fid", "fd_digits", "sliced_w2", "energy", "mode_tv", "class_accuracy", "known_pixel_error",
                         "grad_variance", "prior_kl"})

_NUM = {"type": "number"}
_OPT_STR = {"type": ["string", "null"]}
RECORD_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["format", "metric", "value", "n", "seed", "wall_s", "device", "cldsgm_version", "created"],
    "additionalProperties": False,
    "properties": {
        "format": {"const": "cldsgm-record-v1"},
        "metric": {"enum": sorted(METRICS)},
        "value": {"type": ["number", "null"]},
        # the plug-in estimate, where the value is another (bias-corrected: BIASED)
        "plug_in": {"type": ["number", "null"]},
        "stderr": {"type": ["number", "null"]},
        "nfe": {"type": ["number", "null"], "minimum": 0},
        "nfe_budget": {"type": ["integer", "null"], "minimum": 0},
        "sampler": _OPT_STR,
        "options": {"type": "object"},
        "striding": _OPT_STR,
        "t_min": {"type": ["number", "null"]},
        "sde": _OPT_STR,
        "sde_params": {"type": "object"},
        "network": _OPT_STR,
        "source": {"type": "object"},  # checkpoint {path, sha256, step, weights} or oracle {oracle}
        "dataset": {"type": "object"},  # the reference / evaluated data: {path, sha256, split}
        "samples": _OPT_STR,  # the sample directory evaluated
        "n": {"type": "integer", "minimum": 0},
        "mode": _OPT_STR,  # FID: clean | legacy_tensorflow
        "backbone": _OPT_STR,  # FID: sha256 of the feature extractor file
        "seed": {"type": ["integer", "null"]},
        "wall_s": {**_NUM, "minimum": 0},
        "device": {"type": "string"},
        "cldsgm_version": {"type": "string"},
        "created": {"type": "string"},
        "host": {"type": "string"},
        "extra": {"type": "object"},
        # what the study calls the evaluated set: source (model or oracle), row, variant, data, kind, model, seed
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        # a 95 % interval of the value (cldsgm.stats) and the replicates paired comparisons are made from
        "ci_low": {"type": ["number", "null"]},
        "ci_high": {"type": ["number", "null"]},
        "ci_method": _OPT_STR,
        "bootstrap": {"type": "object", "required": ["resamples", "seed", "replicates"], "properties": {
            "resamples": {"type": "integer", "minimum": 1}, "seed": {"type": "integer"},
            "replicates": {"type": "array", "items": {"type": "number"}}}},
        # NLL: whether the value bounds the NLL from above (CLD, PSLD), the exact NLL of the data law on the same
        # points where it is known (with the gap estimate - exact), and the variance split (data, probes)
        "bound": {"type": "boolean"},
        "exact": {"type": "object"},
        "variance": {"type": "object"},
        # a conditional set: the manifest's guidance {classifier, class, scale, ...} or inpaint {images,
        # mask, ...} block, under its name
        "condition": {"type": "object"},
    },
}


class RecordError(ValueError):
    """A record that does not match RECORD_SCHEMA; the message names the file and the key."""


def make_record(metric: str, value, *, n: int, seed, wall_s: float, device: str, **fields) -> dict:
    """A record dict with the common fields filled in (format, version, time, host); validated."""
    record = {"format": "cldsgm-record-v1", "metric": metric, "value": None if value is None else float(value),
              "n": int(n), "seed": None if seed is None else int(seed), "wall_s": float(wall_s),
              "device": str(device), "cldsgm_version": __version__,
              "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"), "host": platform.node(),
              **{k: v for k, v in fields.items() if v is not None}}
    _validate(record, "record")
    return record


def _validate(record: dict, where: str) -> None:
    found = first_error(RECORD_SCHEMA, record)
    if found:
        key, err = found
        raise RecordError(f"{where}: invalid record at {key}: {err.message}")


def write_record(path: str | Path, record: dict) -> Path:
    """Validate and write one record atomically (JSON); return the path."""
    _validate(record, str(path))
    atomic_write_json(path, record)
    return Path(path)


def write_metric(out_dir: str | Path, metric: str, value, **fields) -> Path:
    """`<out_dir>/<metric>.json`: one record made and written (the evaluation verbs' one way to record)."""
    return write_record(Path(out_dir) / f"{metric}.json", make_record(metric, value, **fields))


def measured(metric: str, estimate: float, replicates, seed: int, **kw) -> dict:
    """The record fields of a metric's value with its bootstrap interval (cldsgm.stats.interval_fields): value
    (bias-corrected for BIASED metrics), plug_in, ci_low, ci_high, ci_method, bootstrap; without replicates only
    the value. kw: method, upper."""
    from cldsgm.stats import interval_fields

    if replicates is None:
        return {"value": float(estimate)}
    return interval_fields(estimate, replicates, seed, biased=metric in BIASED, nonnegative=metric in NONNEGATIVE,
                           **kw)


def write_measured(out_dir: str | Path, metric: str, estimate: float, replicates, resample_seed: int, *,
                   method: str | None = None, upper: float | None = None, **fields) -> Path:
    """write_metric of a value with its interval (`measured`; resample_seed: the seed the replicates' resampling
    was drawn from)."""
    kw = {"upper": upper, **({"method": method} if method else {})}
    values = measured(metric, estimate, replicates, resample_seed, **kw)
    return write_metric(out_dir, metric, values.pop("value"), **values, **fields)


def sample_set_fields(manifest: dict, samples_dir: str | Path) -> dict:
    """Record fields describing a sample directory from its manifest (cldsgm.shards): what produced the samples,
    the NFE actually spent (the mean over its shards), where they are and what the study calls them."""
    ident = manifest["identity"]
    shards = manifest["shards"].values()
    nfe = sum(e["nfe"] * e["count"] for e in shards) / max(1, sum(e["count"] for e in shards))
    return {"nfe": nfe, "nfe_budget": ident["nfe_budget"], "sampler": ident["sampler"], "options": ident["options"],
            "striding": ident["striding"], "t_min": ident["t_min"], "sde": ident["sde"],
            "sde_params": ident["sde_params"], "network": ident["network"], "source": ident["source"],
            "samples": project_path(samples_dir), "seed": ident["seed"], "labels": manifest.get("labels"),
            # absent (not null) for an unconditional set: its records carry no conditional keys
            "condition": {k: ident[k] for k in ("guidance", "inpaint") if k in ident} or None}


def dataset_fields(path: str | Path) -> dict:
    """Record fields describing a prepared split (its path, sha256, name and split), from its manifest."""
    from cldsgm.data.prepared import read_manifest

    manifest = read_manifest(Path(path).with_suffix(".json"))
    return {"path": project_path(path), "sha256": manifest["sha256"], "name": manifest.get("name"),
            "split": manifest.get("split")}


def read_record(path: str | Path) -> dict:
    """Read and validate one record; RecordError names the file for unreadable JSON or a schema mismatch."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RecordError(f"record {path} is unreadable ({err})") from err
    _validate(record, str(path))
    return record


# the columns of records_frame, in order
FRAME_COLUMNS = ["source", "row", "variant", "data", "kind", "model", "train_seed", "metric", "value", "plug_in",
                 "stderr", "ci_low", "ci_high", "replicates", "nfe", "nfe_budget", "sampler", "options", "striding",
                 "sde", "network", "n", "seed", "wall_s", "samples", "bound", "exact", "variance", "path", "train_step",
                 "condition", "extra"]


def _described(record: dict) -> dict:
    """What a record says about itself: its labels, or for a record made by hand without them, names built from
    its own fields (the checkpoint or oracle it came from, sampler-striding-nfe<budget>)."""
    from cldsgm import catalog

    labels, identity = record.get("labels") or {}, record.get("source") or {}
    sampler = record.get("sampler")
    adaptive = sampler in catalog.SAMPLERS and catalog.SAMPLERS[sampler].adaptive
    striding = record.get("striding") or ("adaptive" if adaptive else None)
    budget = record.get("nfe_budget")
    default_row = "-".join(str(p) for p in (sampler, striding, f"nfe{budget}" if budget else None) if p)
    default_source = (f"oracle:{identity['oracle']}" if "oracle" in identity
                      else identity.get("checkpoint") or record["metric"])
    data = labels.get("data") or (record.get("dataset") or {}).get("name")
    source = labels.get("source") or default_source
    return {"source": source, "row": labels.get("row") or default_row, "variant": labels.get("variant") or sampler,
            "data": data, "striding": striding, "kind": labels.get("kind") or ("oracle" if "oracle" in identity
                                                                                  else "model"),
            "model": labels.get("model") or source, "train_seed": labels.get("seed"),
            "train_step": identity.get("step")}  # the checkpoint's training step (None for an oracle)


def records_frame(records_dir: str | Path):
    """Every record under records_dir (recursively) as one row of a pandas DataFrame with FRAME_COLUMNS: the one
    reader of records, for the report and the MLflow re-logging. `options` is the sampler options as sorted JSON;
    `replicates` the bootstrap replicates (a list, or None); `model` and `train_seed` name a training replica."""
    import pandas as pd

    rows = []
    for path in sorted(Path(records_dir).rglob("*.json")):
        record = read_record(path)
        rows.append({**{k: record.get(k) for k in FRAME_COLUMNS}, **_described(record),
                     "plug_in": record.get("plug_in", record.get("value")),
                     "options": json.dumps(record.get("options") or {}, sort_keys=True), "path": str(path),
                     "replicates": (record.get("bootstrap") or {}).get("replicates")})
    return pd.DataFrame(rows, columns=FRAME_COLUMNS)
