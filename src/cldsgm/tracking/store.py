"""The MLflow store: where it is, its lock, its client, the study's parent run. Only this package imports mlflow.

Where the store is (`tracking_uri`): the MLFLOW_TRACKING_URI environment variable, else the study's or config's
`tracking.uri`, else `sqlite:///<cwd>/mlflow.db`, made absolute. Artifacts of a SQLite store go to `mlruns/`
beside the database file, whatever the working directory of the job. HTTP stores get a short retry budget (2
retries, 10 s timeout: seconds, not MLflow's default minutes) unless the user set MLflow's own variables. SQLite
stores are created and migrated under a file lock, so jobs that start together on a fresh store (`snakemake -j N`)
do not race on the schema.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
from pathlib import Path

from filelock import FileLock
from filelock import Timeout as LockTimeout

__all__ = ["COMMIT_TAG", "EXPERIMENT_KIND", "TrackingError", "client", "experiment_id", "finish_parent", "first_line",
           "git_commit", "init_store", "metric_key", "open_parent_run", "sqlite_path", "store_errors", "store_lock",
           "tracking_uri", "claim_tags", "headline_metrics"]

# MLflow's defaults retry for minutes (7 retries, backoff factor 2, 120 s timeout); a job waits seconds.
_HTTP_BUDGET = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
_QUIET = {"MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",  # "View run" lines pollute captured stdout
          "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
_LOCK_WAIT_S = 120.0
COMMIT_TAG = "mlflow.source.git.commit"  # MLflow's own tag: the UI's "Source" / version column shows it
# MLflow 3's UI opens an experiment by its kind: without this tag it infers a GenAI experiment and opens on an empty
# "Traces" overview; a model-training experiment opens on its runs
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


class TrackingError(RuntimeError):
    """The tracking store could not be reached or written (only raised where the caller asked for it)."""


def tracking_uri(configured: str | None = None) -> str:
    """$MLFLOW_TRACKING_URI, else `configured`, else sqlite:///<cwd>/mlflow.db; SQLite paths made absolute."""
    return absolute_uri(os.environ.get("MLFLOW_TRACKING_URI") or configured or "sqlite:///mlflow.db")


def absolute_uri(uri: str | None) -> str | None:
    """A stored tracking URI as MLflow takes it: a relative SQLite path resolved against the working directory."""
    db = sqlite_path(uri) if uri else None
    return f"sqlite:///{db}" if db is not None else uri


def sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite:/// URI (absolute), or None for other stores."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):]).expanduser().absolute()


def git_commit() -> str:
    """The current git commit of the working directory, or 'unknown' outside a repository."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0][:300] if text else ''}"


@contextlib.contextmanager
def store_lock(uri: str):
    """An exclusive lock on <db>.lock for SQLite stores (nothing for servers, which serialise themselves). A holder
    that dies releases it with its file descriptor; the timeout only guards against a holder that hangs."""
    db = sqlite_path(uri)
    if db is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(db.with_name(db.name + ".lock"), timeout=_LOCK_WAIT_S)
    try:
        lock.acquire()
    except LockTimeout:
        raise TrackingError(f"the lock {lock.lock_file} of the store {uri} was held for over {_LOCK_WAIT_S:.0f} s") \
            from None
    try:
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def store_errors(uri: str, doing: str = "is not usable"):
    """Any exception inside (MLflow raises many types; all mean the store is unusable) -> TrackingError."""
    try:
        yield
    except TrackingError:
        raise
    except Exception as err:  # noqa: BLE001
        raise TrackingError(f"MLflow store {uri} {doing}: {first_line(err)}") from err


def client(uri: str):
    """An MlflowClient of the store, with a short HTTP retry budget and without MLflow's console chatter."""
    for key, value in {**_QUIET, **(_HTTP_BUDGET if sqlite_path(uri) is None else {})}.items():
        os.environ.setdefault(key, value)
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def experiment_id(mlflow_client, uri: str, name: str) -> str:
    """The id of experiment `name`, a model-training experiment (EXPERIMENT_KIND), created if absent (for SQLite
    with artifacts in mlruns/ beside the db); an experiment of an older store gets the kind tag."""
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is not None:
        if not experiment.tags.get("mlflow.experimentKind"):
            for key, value in EXPERIMENT_KIND.items():
                mlflow_client.set_experiment_tag(experiment.experiment_id, key, value)
        return experiment.experiment_id
    db = sqlite_path(uri)
    location = None
    if db is not None:
        location = (db.parent / "mlruns" / re.sub(r"[^A-Za-z0-9_.-]", "_", name)).as_uri()
    return mlflow_client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND)


def metric_key(name: str) -> str:
    """`name` with what MLflow refuses in a metric or param key (it takes letters, digits, _ - . space / :) made _."""
    return re.sub(r"[^A-Za-z0-9_\-. /:]", "_", name).strip()[:250]


def init_store(uri: str | None = None, experiment: str | None = None) -> tuple[str, str | None]:
    """Create (and migrate) the store and, if named, the experiment, under the store's lock.

    Run once before parallel jobs (`cldsgm track --init`); safe to run concurrently. Returns
    (uri, experiment id or None). Raises TrackingError naming the store on failure.
    """
    uri = tracking_uri(uri)
    with store_errors(uri), store_lock(uri):
        mlflow_client = client(uri)
        exp_id = experiment_id(mlflow_client, uri, experiment) if experiment else None
        if exp_id is None:
            mlflow_client.search_experiments(max_results=1)  # opens (and for SQLite creates) the store
    return uri, exp_id


def open_parent_run(uri: str, experiment: str, path: str | Path | None) -> dict:
    """The study's parent run: the one `path` names, else the experiment's active study run, else a new one;
    written to `path` when given. It stays RUNNING while the jobs log their children; `finish_parent` closes it.
    """
    from cldsgm.utils.io import atomic_write_json, portable_uri

    path = Path(path) if path is not None else None
    with store_errors(uri), store_lock(uri):
        mlflow_client = client(uri)
        exp_id = experiment_id(mlflow_client, uri, experiment)
        run_id = None
        if path is not None and path.is_file():
            old = json.loads(path.read_text())
            if absolute_uri(old.get("uri")) == uri and old.get("experiment_id") == exp_id and old.get("run_id"):
                try:
                    run_id = mlflow_client.get_run(old["run_id"]).info.run_id
                except Exception:  # noqa: BLE001 - deleted or unknown: look further
                    run_id = None
        if run_id is None:
            found = mlflow_client.search_runs([exp_id], filter_string="tags.`cldsgm.role` = 'study'", max_results=1)
            run_id = found[0].info.run_id if found else mlflow_client.create_run(exp_id, run_name=experiment, tags={
                "cldsgm.role": "study", COMMIT_TAG: git_commit()}).info.run_id
    parent = {"uri": uri, "experiment": experiment, "experiment_id": exp_id, "run_id": run_id}
    if path is not None:
        atomic_write_json(path, {**parent, "uri": portable_uri(uri)})
    return parent


def _study_params(study: dict) -> dict:
    """The resolved study flattened to MLflow params (dotted keys, values as text of at most 500 characters)."""
    from cldsgm.config import flatten

    return {metric_key(k): str(v)[:500] for k, v in flatten(study).items()}


# a verdict as a number the UI can chart and compare between two runs of a study: 1 holds, -1 does not hold, 0 not
# decided (inconclusive, with one training seed or not)
VERDICT_SIGN = {"holds": 1, "does not hold": -1}


def claim_tags(summary: dict) -> dict:
    """Tags of a study's parent run: claim/<key> -> the verdict in words, with the seeds per side (the UI's run
    comparison shows them beside the claim/<key> metrics)."""
    return {metric_key(f"claim/{c.get('key') or name}")[:220]: f"{c['verdict']} (seeds {c.get('seeds (A/B)', '?')})"
            for name, c in (summary.get("claims") or {}).items()}


def headline_metrics(summary: dict) -> dict:
    """Metrics of a study's parent run from the report's summary.json: each decided comparison's difference, interval
    and verdict (claim/<key>, _ci_low, _ci_high, _verdict: 1 holds, -1 does not hold, 0 not decided; the key names
    the claim and its setting, e.g. 'cld-sscs-em diamond_cld nfe50'), each model's
    NLL, and per source and metric the best row's value (best/<data>/<source>/<metric>; every sample metric is
    lower-is-better)."""
    out = {}
    for name, claim in (summary.get("claims") or {}).items():
        if claim.get("difference") is not None:
            key = metric_key(f"claim/{claim.get('key') or name}")[:220]
            out[key] = claim["difference"]
            for end in ("ci_low", "ci_high"):
                if claim.get(end) is not None:
                    out[f"{key}_{end}"] = claim[end]
            out[f"{key}_verdict"] = VERDICT_SIGN.get(claim.get("verdict"), 0)
    for name, nll in (summary.get("nll") or {}).items():
        if nll.get("value") is not None:
            out[metric_key(f"nll/{name}")] = nll["value"]
    for name, row in (summary.get("quality") or {}).items():
        data, source, _, metric = (name.split("/") + [None] * 4)[:4]
        value = row.get("value") if isinstance(row, dict) else None
        if metric is None or value is None or value != value:  # NaN: a row without a value
            continue
        key = metric_key(f"best/{data}/{source}/{metric}")
        out[key] = min(out.get(key, value), value)
    return out


def finish_parent(parent: dict, artifacts: str | Path | None = None, study: dict | None = None,
                  study_file: str | Path | None = None) -> None:
    """Close the study's parent run (FINISHED) after logging what describes the whole study: the report folder as
    artifacts; `study_file` and the resolved `study` (as cldsgm.study.load_study returns it) as artifacts under
    study/, and the resolved study as params (only those the run lacks: params cannot change); the report's
    summary.json as headline metrics (`headline_metrics`)."""
    if not parent.get("run_id"):
        return
    import tempfile
    import time

    import yaml

    uri = absolute_uri(parent["uri"])
    with store_errors(uri, "failed while closing the study run"):
        mlflow_client = client(uri)
        run_id = parent["run_id"]
        if study_file is not None:
            mlflow_client.log_artifact(run_id, str(study_file), "study")
        if study is not None:
            from mlflow.entities import Param

            with tempfile.TemporaryDirectory() as tmp:
                resolved = Path(tmp) / "resolved_study.yaml"
                resolved.write_text(yaml.safe_dump(study, sort_keys=False))
                mlflow_client.log_artifact(run_id, str(resolved), "study")
            have = mlflow_client.get_run(run_id).data.params
            params = [Param(k, v) for k, v in _study_params(study).items() if k not in have]
            for start in range(0, len(params), 100):  # log_batch takes at most 100 params per call
                mlflow_client.log_batch(run_id, params=params[start:start + 100])
        summary_path = Path(artifacts) / "summary.json" if artifacts is not None else None
        if summary_path is not None and summary_path.is_file():
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            metrics = [Metric(k, float(v), now, 0) for k, v in headline_metrics(json.loads(
                summary_path.read_text())).items()]
            for start in range(0, len(metrics), 900):  # log_batch takes at most 1000 metrics per call
                mlflow_client.log_batch(run_id, metrics=metrics[start:start + 900])
            from mlflow.entities import RunTag

            tags = [RunTag(k, v) for k, v in claim_tags(json.loads(summary_path.read_text())).items()]
            for start in range(0, len(tags), 100):
                mlflow_client.log_batch(run_id, tags=tags[start:start + 100])
        if artifacts is not None and Path(artifacts).is_dir():
            mlflow_client.log_artifacts(run_id, str(artifacts), "report")
        mlflow_client.set_terminated(run_id, "FINISHED")
