"""Logging what is on disk into the store later: a training run's records (`relog_run_dir`) and a study's evaluation
records (`log_records`), only what the store lacks. Both go through `Tracker`, the one gate into MLflow."""

from __future__ import annotations

import csv
import shutil
import tempfile
from pathlib import Path

from cldsgm.tracking.store import COMMIT_TAG, TrackingError, absolute_uri, git_commit, tracking_uri
from cldsgm.tracking.tracker import TRACKING_FILE, Tracker

__all__ = ["log_records", "relog_run_dir"]


def _read_loss_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return [{k: (int(v) if k == "step" else float(v)) for k, v in row.items()} for row in csv.DictReader(handle)]


def relog_run_dir(run_dir: str | Path, uri: str | None = None, *, parent_run_id: str | None = None,
                  experiment: str | None = None) -> dict:
    """Log a training run's on-disk records (config.yaml, loss.csv) to the store; only what is missing.

    Reopens the run named in run_dir/tracking.json when it is in this store, else creates one. Metrics whose
    step the store already has are not logged twice. Returns {'run_id', 'logged', 'status'}.
    Raises FileNotFoundError for a directory without records and TrackingError if the store fails.
    """
    import yaml

    from cldsgm.config import flatten

    run_dir = Path(run_dir)
    config_path, loss_path = run_dir / "config.yaml", run_dir / "loss.csv"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: {run_dir} holds no training records")
    config = yaml.safe_load(config_path.read_text())
    history = _read_loss_csv(loss_path) if loss_path.is_file() else []
    finished = bool(history) and history[-1]["step"] >= config["train"]["steps"]
    tracking = config.get("tracking", {})
    tracker = Tracker(enabled=True, experiment=experiment or tracking.get("experiment", "cldsgm"),
                      run_name=tracking.get("run_name") or run_dir.name, uri=uri or absolute_uri(tracking.get("uri")),
                      run_dir=run_dir, parent_run_id=parent_run_id)
    if tracker.run_id is None:
        raise TrackingError(tracker.failure or f"could not open a run in {tracker.uri}")
    tracker.log_params(flatten(config))
    logged = tracker.log_metric_rows(history, keys=("loss", "lr", "grad_norm"))
    tracker.log_artifact(loss_path)
    status = "FINISHED" if finished else "KILLED"
    tracker.end(status)
    if tracker.failure:
        raise TrackingError(tracker.failure)
    return {"run_id": tracker.run_id, "logged": logged, "status": status, "uri": tracker.uri}


def _step(row) -> int:
    """A record's step: a learning curve's training step; else its NFE budget, else the NFE it spent (the adaptive
    ODE), else 0 (NLL, accuracy)."""
    if row.variant == "curve" and row.train_step == row.train_step and row.train_step is not None:
        return int(row.train_step)
    for value in (row.nfe_budget, row.nfe):
        if value == value and value:  # NaN (missing in the frame) != NaN
            return int(round(value))
    return 0


def _group(row) -> tuple[str, dict]:
    """The child run a record belongs to, and that run's tags: one run per (source, variant, striding), so that the
    UI draws each metric against NFE (step = NFE); one per model for NLL; one for the classifier; one per floor and
    per property measurement (score Jacobian, gradient variance, equilibrium)."""
    if row.metric == "classifier_accuracy":
        return "classifier", {"cldsgm.rule": "digits_classifier"}
    if row.metric.startswith("nll"):
        return f"{row.source}/nll", {"cldsgm.rule": "nll", "sde": str(row.sde), "model": row.source}
    if row.kind == "floor" or row.metric in ("score_jacobian", "grad_variance", "prior_kl"):
        # one run per measurement of a source: its row (floor-n200, smoothness, grad-hsm, equilibrium)
        return f"{row.source}/{row.row}", {"cldsgm.rule": str(row.row).split("-")[0], "source": row.source,
                                           "sde": str(row.sde), "kind": str(row.kind)}
    return f"{row.source}/{row.variant}-{row.striding}", {
        "cldsgm.rule": "sample", "source": row.source, "sde": str(row.sde), "sampler": str(row.sampler),
        "variant": str(row.variant), "striding": str(row.striding), "network": str(row.network), "kind": row.kind}


def _present(value) -> bool:
    return value is not None and value == value  # NaN (missing in the frame) != NaN


def _run_params(rows: list) -> tuple[dict, dict]:
    """(params, tags) of a child run from its records: what is the same across its rows (sampler, options,
    striding, n, seed, t_min, precision, shard plan, checkpoint sha256 and step, dataset sha256 ...), the NFE budgets
    it spans (its steps), and the MLflow run of the training that made the checkpoint (cldsgm.training_run_id)."""
    import json

    from cldsgm.records import read_record

    first = read_record(rows[0].path)
    source, dataset = first.get("source") or {}, first.get("dataset") or {}
    params = {"metric_source": first.get("metric"), "sde": first.get("sde"), "network": first.get("network"),
              "sampler": first.get("sampler"), "options": json.dumps(first.get("options") or {}, sort_keys=True),
              "striding": first.get("striding"), "n": first.get("n"), "seed": first.get("seed"),
              "t_min": first.get("t_min"), "dataset": dataset.get("name"), "dataset_split": dataset.get("split"),
              "dataset_sha256": dataset.get("sha256"), "checkpoint_sha256": source.get("sha256"),
              "checkpoint_step": source.get("step"), "weights": source.get("weights"), "oracle": source.get("oracle")}
    budgets = sorted({int(r.nfe_budget) for r in rows if _present(r.nfe_budget)})
    if budgets:
        params["nfe_budgets"] = " ".join(map(str, budgets))
    samples = first.get("samples")
    manifest = Path(samples) / "manifest.json" if samples else None
    if manifest is not None and manifest.is_file():  # what the sample set's identity adds: precision, shard plan
        identity = json.loads(manifest.read_text())["identity"]
        params.update({k: identity.get(k) for k in ("precision", "shard_size", "net_batch", "denoise")})
    params = {k: v for k, v in params.items() if v is not None}
    tags = {}
    checkpoint = source.get("checkpoint")
    tracking = Path(checkpoint).parent / TRACKING_FILE if checkpoint else None
    if tracking is not None and tracking.is_file():  # the training run's own MLflow run (not for imported weights)
        try:
            run_id = json.loads(tracking.read_text()).get("run_id")
        except (OSError, ValueError):
            run_id = None
        if run_id:
            tags["cldsgm.training_run_id"] = run_id
            params["training_run_id"] = run_id
    return params, tags


def log_records(records_dir: str | Path, parent: dict) -> dict:
    """Log every record under records_dir (cldsgm.records.records_frame) into child runs of the study's parent
    run; only what is missing.

    Quality metrics go in with step = NFE budget (the adaptive ODE: its mean NFE; a learning curve: the training
    step), with their 95 % interval as <metric>_ci_low / <metric>_ci_high at the same step; NLL and accuracy at
    step 0; each sample set's grid.png becomes an artifact of its run. Each run's params say what made its
    records (`_run_params`), and its tag cldsgm.training_run_id names the training run of the checkpoint.
    Returns {'runs', 'logged'}; TrackingError names the store when it fails.
    """
    from cldsgm.records import records_frame

    frame = records_frame(records_dir)
    groups: dict[str, list] = {}
    tags_of: dict[str, dict] = {}
    for row in frame.itertuples(index=False):
        name, tags = _group(row)
        groups.setdefault(name, []).append(row)
        tags_of[name] = tags
    uri, logged, commit = tracking_uri(parent["uri"]), 0, git_commit()
    for name, rows in groups.items():
        params, link = _run_params(rows)
        tracker = Tracker(enabled=True, experiment=parent["experiment"], run_name=name, uri=uri, group=name,
                          parent_run_id=parent.get("run_id"), tags={**tags_of[name], **link, COMMIT_TAG: commit})
        tracker.log_params(params)
        tracker.set_tags(link)  # also on a run reopened by a later study run
        by_step: dict[int, dict] = {}
        for r in rows:
            if r.value == r.value:  # NaN: a record without a value
                point = by_step.setdefault(_step(r), {"step": _step(r)})
                point[r.metric] = r.value
                for end in ("ci_low", "ci_high"):  # the 95 % interval, at the same step (NFE)
                    if getattr(r, end) == getattr(r, end) and getattr(r, end) is not None:
                        point[f"{r.metric}_{end}"] = getattr(r, end)
        keys = sorted({k for point in by_step.values() for k in point if k != "step"})
        tracker.log_metric_rows(list(by_step.values()), keys=keys)
        logged += tracker.points_logged
        have = tracker.artifacts("grids")
        for r in rows:
            if not isinstance(r.samples, str):  # None / NaN: a record of no sample set (NLL, the classifier)
                continue
            grid = Path(r.samples) / "grid.png"
            target = f"grids/{r.row}.png"
            if grid.is_file() and target not in have:
                with tempfile.TemporaryDirectory() as tmp:  # the artifact is named after its sample set
                    shutil.copy(grid, Path(tmp) / f"{r.row}.png")
                    tracker.log_artifact(Path(tmp) / f"{r.row}.png", "grids")
                have.add(target)
        tracker.end("FINISHED")
        if tracker.failure:
            raise TrackingError(f"MLflow store {uri} failed while logging records: {tracker.failure}")
    return {"runs": len(groups), "logged": logged}
