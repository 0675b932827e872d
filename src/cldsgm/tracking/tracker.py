"""The live tracker: one MLflow run, behind one gate.

Tracking is a side service: it must never stop, hang or fail a job. Every call into MLflow goes through
`Tracker._call`; the first failure prints one warning that names the store, and the tracker switches itself off
for the rest of the job, which goes on with its records on disk (`cldsgm track` logs them later).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from cldsgm.tracking.store import absolute_uri, client, experiment_id, first_line, store_lock, tracking_uri

__all__ = ["TRACKING_FILE", "Tracker"]

TRACKING_FILE = "tracking.json"  # beside a run's records: which store and run they were logged to


class Tracker:
    """One MLflow run: params, metrics with steps, artifacts and tags; never raises, never hangs for long.

    Args:
        enabled: False gives a tracker that does nothing and never imports mlflow (callers never branch on it).
        experiment, run_name: where the run goes and what it is called.
        uri: the configured store (see `tracking_uri`).
        run_dir: if given, the run id is kept in run_dir/tracking.json; a later Tracker on the same run_dir
            and store reopens that run (a killed run is first marked KILLED) instead of opening a second one.
        group: instead of a run_dir, the run is the one tagged `cldsgm.group = group` in the experiment, reopened
            if it exists (how the study's evaluation runs are found again by `cldsgm track`).
        parent_run_id, tags: for child runs of a study.
    """

    def __init__(self, *, enabled: bool = True, experiment: str = "cldsgm", run_name: str | None = None,
                 uri: str | None = None, run_dir: str | Path | None = None, group: str | None = None,
                 parent_run_id: str | None = None, tags: dict | None = None):
        self.enabled, self.run_id, self.failure, self.resumed = enabled, None, None, False
        self.points_logged = 0  # metric values this tracker logged
        self._logged_params: dict = {}
        self._logged_steps: dict[str, set] = {}  # metric -> the steps a reopened run already holds
        self.uri = tracking_uri(uri) if enabled else None
        self._monitor = None  # MLflow's system-metrics thread (training runs)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.group = group
        if not enabled:
            return
        tags = {**(tags or {}), **({"cldsgm.group": group} if group else {})}
        self._call(self._open, experiment, run_name, parent_run_id, tags)

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
        self.failure = (f"warning: MLflow tracking to {self.uri} failed ({first_line(err)}); tracking is off "
                        f"for the rest of this job, which goes on with its records on disk{where}{relog}. "
                        "Pass --no-tracking to skip tracking, or set MLFLOW_TRACKING_URI to another store.")
        print(self.failure, file=sys.stderr, flush=True)

    def _open(self, experiment, run_name, parent_run_id, tags) -> None:
        with store_lock(self.uri):
            self._client = client(self.uri)
            exp_id = experiment_id(self._client, self.uri, experiment)
            previous = self._previous_run(exp_id)
            if previous is not None:
                self._reopen(previous)
                return
            if parent_run_id:
                tags["mlflow.parentRunId"] = parent_run_id
            self.run_id = self._client.create_run(exp_id, run_name=run_name, tags=tags).info.run_id
        if self.run_dir is not None:
            from cldsgm.utils.io import atomic_write_json, portable_uri

            atomic_write_json(self.run_dir / TRACKING_FILE, {"uri": portable_uri(self.uri), "experiment": experiment,
                                                             "experiment_id": exp_id, "run_id": self.run_id})

    def _reopen(self, previous) -> None:
        self.run_id, self.resumed = previous.info.run_id, True
        self._logged_params = dict(previous.data.params)
        for key in previous.data.metrics:  # steps redone after a kill are not logged twice
            self._logged_steps[key] = {m.step for m in self._client.get_metric_history(self.run_id, key)}
        if previous.info.status == "RUNNING" and self.run_dir is not None:  # its process died without closing it
            self._client.set_terminated(self.run_id, "KILLED")
        self._client.update_run(self.run_id, status="RUNNING")
        if self.run_dir is not None:
            self._client.set_tag(self.run_id, "cldsgm.resumed", "true")

    def _previous_run(self, exp_id: str):
        """The run recorded in run_dir/tracking.json (if it lives in this store and experiment), or the group's."""
        if self.group is not None:
            found = self._client.search_runs([exp_id], filter_string=f"tags.`cldsgm.group` = '{self.group}'",
                                             max_results=1)
            return found[0] if found else None
        if self.run_dir is None or not (self.run_dir / TRACKING_FILE).is_file():
            return None
        try:
            record = json.loads((self.run_dir / TRACKING_FILE).read_text())
        except (OSError, json.JSONDecodeError):
            return None
        if absolute_uri(record.get("uri")) != self.uri or record.get("experiment_id") != exp_id:
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
        """Log rows {'step', key: value, ...} in batches, skipping (key, step) pairs the run already holds.

        Returns how many rows held something new (a reopened run continues where it stopped)."""
        if not self.enabled:  # tracking off (or failed): mlflow is never imported
            return 0
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items, new_rows = [], 0
        for row in rows:
            step = int(row["step"])
            fresh = [Metric(k, float(row[k]), now, step) for k in keys
                     if row.get(k) is not None and step not in self._logged_steps.get(k, ())]
            items += fresh
            new_rows += bool(fresh)
        for start in range(0, len(items), 900):  # log_batch takes at most 1000 metrics per call
            self._call(lambda chunk=items[start:start + 900]: self._client.log_batch(self.run_id, metrics=chunk))
        if self.enabled:
            self.points_logged += len(items)
            for item in items:
                self._logged_steps.setdefault(item.key, set()).add(item.step)
        return new_rows

    def artifacts(self, folder: str) -> set[str]:
        """The paths of the run's artifacts under `folder` (empty when tracking is off)."""
        found = self._call(lambda: self._client.list_artifacts(self.run_id, folder))
        return {a.path for a in found or []}

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if Path(path).exists():
            self._call(lambda: self._client.log_artifact(self.run_id, str(path), artifact_path))

    def start_system_metrics(self, interval_s: float = 10.0) -> None:
        """Log MLflow's system metrics (system/cpu_utilization_percentage, memory, disk, network, GPU) every
        `interval_s` seconds from a thread until `end`. The thread only warns if the store fails (MLflow's own)."""
        def start():
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            monitor = SystemMetricsMonitor(self.run_id, sampling_interval=interval_s, resume_logging=self.resumed,
                                           tracking_uri=self.uri)
            monitor.start()
            self._monitor = monitor

        if self.run_id is not None:
            self._call(start)

    def end(self, status: str = "FINISHED") -> None:
        """Close the run with FINISHED, FAILED or KILLED (after the system-metrics thread's last batch)."""
        if self._monitor is not None:
            monitor, self._monitor = self._monitor, None
            self._call(monitor.finish)
        if self.run_id is not None:
            self._call(lambda: self._client.set_terminated(self.run_id, status))
        self.enabled = False
