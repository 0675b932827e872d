"""MLflow logging behind one small class; the only module that imports mlflow.

Tracking is a side service: it must never stop, hang or fail a job. Every call into MLflow goes through
`Tracker._call`; the first failure prints one warning that names the store, and the tracker switches itself
off for the rest of the job, which goes on with its records on disk (a training run's `loss.csv`,
`config.yaml` and `checkpoint.pt`). `relog_run_dir` (`cldsgm track --run-dir DIR`) logs those records later.

Where the store is (`tracking_uri`): the MLFLOW_TRACKING_URI environment variable, else the study's or
config's `tracking.uri`, else `sqlite:///<cwd>/mlflow.db`, made absolute. Artifacts of a SQLite store go to
`mlruns/` beside the database file, whatever the working directory of the job.

HTTP stores get a short retry budget (2 retries, 10 s timeout: seconds, not MLflow's default minutes) unless
the user set MLflow's own variables. SQLite stores are created and migrated under a file lock, so jobs that
start together on a fresh store (`snakemake -j N`) do not race on the schema.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["TRACKING_FILE", "Tracker", "TrackingError", "finish_parent", "git_commit", "init_store", "log_records",
           "open_parent_run", "relog_run_dir", "tracking_uri"]

TRACKING_FILE = "tracking.json"  # beside a run's records: which store and run they were logged to

# MLflow's defaults retry for minutes (7 retries, backoff factor 2, 120 s timeout); a job waits seconds.
_HTTP_BUDGET = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
_QUIET = {"MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",  # "View run" lines pollute captured stdout
          "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
_LOCK_WAIT_S = 120.0


class TrackingError(RuntimeError):
    """The tracking store could not be reached or written (only raised where the caller asked for it)."""


def tracking_uri(configured: str | None = None) -> str:
    """$MLFLOW_TRACKING_URI, else `configured`, else sqlite:///<cwd>/mlflow.db; SQLite paths made absolute."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or configured or "sqlite:///mlflow.db"
    db = sqlite_path(uri)
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


@contextlib.contextmanager
def _store_lock(uri: str):
    """An exclusive lock on <db>.lock for SQLite stores (nothing for servers, which serialise themselves)."""
    db = sqlite_path(uri)
    if db is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as handle:
        deadline = time.monotonic() + _LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                # a holder that died releases the lock with its file descriptor, so waiting ends; the deadline
                # only guards against a holder that hangs
                if time.monotonic() > deadline:
                    raise TrackingError(f"the lock {handle.name} of the store {uri} was held for over "
                                        f"{_LOCK_WAIT_S:.0f} s") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _store_errors(uri: str, doing: str = "is not usable"):
    """Any exception inside (MLflow raises many types; all mean the store is unusable) -> TrackingError."""
    try:
        yield
    except TrackingError:
        raise
    except Exception as err:  # noqa: BLE001
        raise TrackingError(f"MLflow store {uri} {doing}: {_first_line(err)}") from err


def _client(uri: str):
    for key, value in {**_QUIET, **(_HTTP_BUDGET if sqlite_path(uri) is None else {})}.items():
        os.environ.setdefault(key, value)
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _experiment_id(client, uri: str, name: str) -> str:
    """The id of experiment `name`, created if absent (for SQLite with artifacts in mlruns/ beside the db)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    db = sqlite_path(uri)
    location = None
    if db is not None:
        location = (db.parent / "mlruns" / re.sub(r"[^A-Za-z0-9_.-]", "_", name)).as_uri()
    return client.create_experiment(name, artifact_location=location)


def init_store(uri: str | None = None, experiment: str | None = None) -> tuple[str, str | None]:
    """Create (and migrate) the store and, if named, the experiment, under the store's lock.

    Run once before parallel jobs (`cldsgm track --init`); safe to run concurrently. Returns
    (uri, experiment id or None). Raises TrackingError naming the store on failure.
    """
    uri = tracking_uri(uri)
    with _store_errors(uri), _store_lock(uri):
        client = _client(uri)
        exp_id = _experiment_id(client, uri, experiment) if experiment else None
        if exp_id is None:
            client.search_experiments(max_results=1)  # opens (and for SQLite creates) the store
    return uri, exp_id


def open_parent_run(uri: str, experiment: str, path: str | Path | None) -> dict:
    """The study's parent run: the one `path` names, else the experiment's active study run, else a new one;
    written to `path` when given. It stays RUNNING while the jobs log their children; `finish_parent` closes it.
    """
    from cldsgm.utils.io import atomic_write_json

    path = Path(path) if path is not None else None
    with _store_errors(uri), _store_lock(uri):
        client = _client(uri)
        exp_id = _experiment_id(client, uri, experiment)
        run_id = None
        if path is not None and path.is_file():
            old = json.loads(path.read_text())
            if old.get("uri") == uri and old.get("experiment_id") == exp_id and old.get("run_id"):
                try:
                    run_id = client.get_run(old["run_id"]).info.run_id
                except Exception:  # noqa: BLE001 - deleted or unknown: look further
                    run_id = None
        if run_id is None:
            found = client.search_runs([exp_id], filter_string="tags.`cldsgm.role` = 'study'", max_results=1)
            run_id = found[0].info.run_id if found else client.create_run(exp_id, run_name=experiment, tags={
                "cldsgm.role": "study", "git_commit": git_commit()}).info.run_id
    parent = {"uri": uri, "experiment": experiment, "experiment_id": exp_id, "run_id": run_id}
    if path is not None:
        atomic_write_json(path, parent)
    return parent


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0][:300] if text else ''}"


class Tracker:
    """One MLflow run: params, metrics with steps, artifacts and tags; never raises, never hangs for long.

    Args:
        enabled: False gives a tracker that does nothing (callers never branch on it).
        experiment, run_name: where the run goes and what it is called.
        uri: the configured store (see `tracking_uri`).
        run_dir: if given, the run id is kept in run_dir/tracking.json; a later Tracker on the same run_dir
            and store reopens that run (a killed run is first marked KILLED) instead of opening a second one.
        parent_run_id, tags: for child runs of a study.
    """

    def __init__(self, *, enabled: bool = True, experiment: str = "cldsgm", run_name: str | None = None,
                 uri: str | None = None, run_dir: str | Path | None = None, parent_run_id: str | None = None,
                 tags: dict | None = None):
        self.enabled, self.run_id, self.failure, self.resumed = enabled, None, None, False
        self._logged_params: dict = {}
        self._logged_until: dict = {}  # metric -> last step a reopened run already holds
        self.uri = tracking_uri(uri) if enabled else None
        self.run_dir = Path(run_dir) if run_dir is not None else None
        if not enabled:
            return
        self._call(self._open, experiment, run_name, parent_run_id, dict(tags or {}))

    # -- the one gate into MLflow ----------------------------------------------------------------------------
    def _call(self, fn, *args):
        if not self.enabled:
            return None
        try:
            return fn(*args)
        except Exception as err:  # noqa: BLE001 - any tracking failure: warn once, go on without tracking
            self._fail(err)
            return None

    def _fail(self, err: BaseException) -> None:
        self.enabled = False
        where = f" in {self.run_dir}" if self.run_dir is not None else ""
        relog = f"; re-log them later with `cldsgm track --run-dir {self.run_dir}`" if self.run_dir else ""
        self.failure = (f"warning: MLflow tracking to {self.uri} failed ({_first_line(err)}); tracking is off "
                        f"for the rest of this job, which goes on with its records on disk{where}{relog}. "
                        "Pass --no-tracking to skip tracking, or set MLFLOW_TRACKING_URI to another store.")
        print(self.failure, file=sys.stderr, flush=True)

    def _open(self, experiment, run_name, parent_run_id, tags) -> None:
        with _store_lock(self.uri):
            self._client = _client(self.uri)
            exp_id = _experiment_id(self._client, self.uri, experiment)
            previous = self._previous_run(exp_id)
            if previous is not None:
                self.run_id, self.resumed = previous.info.run_id, True
                self._logged_params = dict(previous.data.params)
                for key in previous.data.metrics:  # steps redone after a kill are not logged twice
                    self._logged_until[key] = max(m.step for m in self._client.get_metric_history(self.run_id, key))
                if previous.info.status == "RUNNING":  # its process died without closing it
                    self._client.set_terminated(self.run_id, "KILLED")
                self._client.update_run(self.run_id, status="RUNNING")
                self._client.set_tag(self.run_id, "cldsgm.resumed", "true")
                return
            if parent_run_id:
                tags["mlflow.parentRunId"] = parent_run_id
            self.run_id = self._client.create_run(exp_id, run_name=run_name, tags=tags).info.run_id
        if self.run_dir is not None:
            from cldsgm.utils.io import atomic_write_json

            atomic_write_json(self.run_dir / TRACKING_FILE, {"uri": self.uri, "experiment": experiment,
                                                             "experiment_id": exp_id, "run_id": self.run_id})

    def _previous_run(self, exp_id: str):
        """The run recorded in run_dir/tracking.json, if it lives in this store and experiment."""
        if self.run_dir is None or not (self.run_dir / TRACKING_FILE).is_file():
            return None
        try:
            record = json.loads((self.run_dir / TRACKING_FILE).read_text())
        except (OSError, json.JSONDecodeError):
            return None
        if record.get("uri") != self.uri or record.get("experiment_id") != exp_id:
            return None
        from mlflow.exceptions import MlflowException

        try:
            run = self._client.get_run(record["run_id"])
        except MlflowException:  # deleted from the store: open a new run
            return None
        return run if run.info.lifecycle_stage == "active" else None

    # -- what callers use ------------------------------------------------------------------------------------
    def log_params(self, params: dict) -> None:
        if not self.enabled:  # tracking off (or failed): mlflow is never imported
            return
        from mlflow.entities import Param

        # params are immutable in MLflow: a reopened run logs only those it lacks (a changed value, allowed by
        # --allow-config-change, stays in the run's config.yaml records, not here)
        items = [Param(k, str(v)[:500]) for k, v in params.items() if k not in self._logged_params]
        for start in range(0, len(items), 100):  # log_batch takes at most 100 params per call
            self._call(lambda chunk=items[start:start + 100]: self._client.log_batch(self.run_id, params=chunk))

    def set_tags(self, tags: dict) -> None:
        self._call(lambda: [self._client.set_tag(self.run_id, k, str(v)) for k, v in tags.items()])

    def log_metrics(self, metrics: dict, step: int) -> None:
        self.log_metric_rows([{**metrics, "step": step}], keys=list(metrics))

    def log_metric_rows(self, rows: list[dict], keys) -> int:
        """Log rows {'step', key: value, ...} in batches, skipping steps a reopened run already holds.

        Returns how many rows were new (the store holds a prefix of the steps: once a call fails, tracking
        stops, and a reopened run continues after its last step)."""
        if not self.enabled:  # tracking off (or failed): mlflow is never imported
            return 0
        from mlflow.entities import Metric

        new = [row for row in rows if int(row["step"]) > min(self._logged_until.get(k, -1) for k in keys)]
        now = int(time.time() * 1000)
        items = [Metric(k, float(row[k]), now, int(row["step"])) for row in new for k in keys
                 if int(row["step"]) > self._logged_until.get(k, -1)]
        for start in range(0, len(items), 900):  # log_batch takes at most 1000 metrics per call
            self._call(lambda chunk=items[start:start + 900]: self._client.log_batch(self.run_id, metrics=chunk))
        return len(new)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if Path(path).exists():
            self._call(lambda: self._client.log_artifact(self.run_id, str(path), artifact_path))

    def end(self, status: str = "FINISHED") -> None:
        """Close the run with FINISHED, FAILED or KILLED."""
        if self.run_id is not None:
            self._call(lambda: self._client.set_terminated(self.run_id, status))
        self.enabled = False


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
                      run_name=tracking.get("run_name") or run_dir.name, uri=uri or tracking.get("uri"),
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


def _record_group(path: Path, records_dir: Path, record: dict) -> tuple[str, dict]:
    """The child run a record belongs to, and that run's tags: one run per (source, sampler, striding) so that
    the UI draws each metric against NFE (step = NFE); one per model for NLL; one for the classifier."""
    parts = path.relative_to(records_dir).parts
    if record["metric"] == "classifier_accuracy":
        return "classifier", {"cldsgm.rule": "digits_classifier"}
    if record["metric"].startswith("nll"):
        return f"{parts[0]}/nll", {"cldsgm.rule": "nll", "sde": str(record.get("sde")), "model": parts[0]}
    sampler, striding = record.get("sampler"), record.get("striding") or "adaptive"
    return f"{parts[0]}/{sampler}-{striding}", {
        "cldsgm.rule": "sample", "source": parts[0], "sde": str(record.get("sde")), "sampler": str(sampler),
        "striding": str(striding), "network": str(record.get("network")),
        "kind": "oracle" if "oracle" in (record.get("source") or {}) else "model"}


def log_records(records_dir: str | Path, parent: dict) -> dict:
    """Log every record under records_dir into child runs of the study's parent run; only what is missing.

    Quality metrics go in with step = NFE budget (the adaptive ODE: its mean NFE), NLL and accuracy at step 0;
    each sample set's grid.png becomes an artifact of its run. Returns {'runs', 'logged'}; TrackingError
    names the store when it fails.
    """
    from mlflow.entities import Metric

    from cldsgm.records import read_record

    records_dir = Path(records_dir)
    groups: dict[str, list] = {}
    tags_of: dict[str, dict] = {}
    for path in sorted(records_dir.rglob("*.json")):
        record = read_record(path)
        name, tags = _record_group(path, records_dir, record)
        groups.setdefault(name, []).append((path, record))
        tags_of[name] = tags
    uri, logged = parent["uri"], 0
    with _store_errors(uri, "failed while logging records"):
        with _store_lock(uri):
            client = _client(uri)
            exp_id = _experiment_id(client, uri, parent["experiment"])
        commit = git_commit()
        for name, items in groups.items():
            found = client.search_runs([exp_id], filter_string=f"tags.`cldsgm.group` = '{name}'", max_results=1)
            if found:
                run_id = found[0].info.run_id
                have = {(k, m.step) for k in found[0].data.metrics for m in client.get_metric_history(run_id, k)}
                client.update_run(run_id, status="RUNNING")
            else:
                tags = {**tags_of[name], "cldsgm.group": name, "git_commit": commit}
                if parent.get("run_id"):
                    tags["mlflow.parentRunId"] = parent["run_id"]
                run_id = client.create_run(exp_id, run_name=name, tags=tags).info.run_id
                have = set()
            now = int(time.time() * 1000)
            metrics = []
            for _, record in items:
                step = int(record.get("nfe_budget") or round(record.get("nfe") or 0))
                if (record["metric"], step) not in have and record["value"] is not None:
                    metrics.append(Metric(record["metric"], float(record["value"]), now, step))
            for start in range(0, len(metrics), 500):
                client.log_batch(run_id, metrics=metrics[start:start + 500])
            logged += len(metrics)
            artifacts = {a.path for a in client.list_artifacts(run_id, "grids")} if found else set()
            for path, record in items:
                grid = Path(record.get("samples") or "") / "grid.png"
                target = f"grids/{path.parent.name}.png"
                if record.get("samples") and grid.is_file() and target not in artifacts:
                    with tempfile.TemporaryDirectory() as tmp:  # the artifact is named after its sample set
                        shutil.copy(grid, Path(tmp) / f"{path.parent.name}.png")
                        client.log_artifact(run_id, str(Path(tmp) / f"{path.parent.name}.png"), "grids")
                    artifacts.add(target)
            client.set_terminated(run_id, "FINISHED")
    return {"runs": len(groups), "logged": logged}


def finish_parent(parent: dict, artifacts: str | Path | None = None) -> None:
    """Log the report folder as artifacts of the study's parent run and mark it FINISHED."""
    if not parent.get("run_id"):
        return
    with _store_errors(parent["uri"], "failed while closing the study run"):
        client = _client(parent["uri"])
        if artifacts is not None and Path(artifacts).is_dir():
            client.log_artifacts(parent["run_id"], str(artifacts), "report")
        client.set_terminated(parent["run_id"], "FINISHED")
