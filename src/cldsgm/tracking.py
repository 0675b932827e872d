"""MLflow logging behind one small class; the only module that imports mlflow.

The tracking URI comes from MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working directory. A
disabled tracker does nothing, so callers never branch on it.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

__all__ = ["Tracker", "git_commit", "tracking_uri"]


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")


def git_commit() -> str:
    """The current git commit of the working directory, or 'unknown' outside a repository."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class Tracker:
    """One MLflow run: params (flattened config), metrics with steps, artifacts and tags."""

    def __init__(self, *, enabled: bool = True, experiment: str = "cldsgm", run_name: str | None = None):
        self.enabled = enabled
        self.run_id = None
        if not enabled:
            return
        # no "View run" line on stdout (it pollutes captured output), no usage telemetry
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        import mlflow

        self._mlflow = mlflow
        mlflow.set_tracking_uri(tracking_uri())
        mlflow.set_experiment(experiment)
        self.run_id = mlflow.start_run(run_name=run_name).info.run_id

    def log_params(self, params: dict) -> None:
        if self.enabled:
            self._mlflow.log_params({k: str(v)[:500] for k, v in params.items()})

    def set_tags(self, tags: dict) -> None:
        if self.enabled:
            self._mlflow.set_tags(tags)

    def log_metrics(self, metrics: dict, step: int) -> None:
        if self.enabled:
            self._mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def log_artifact(self, path: str | Path) -> None:
        if self.enabled and Path(path).exists():
            self._mlflow.log_artifact(str(path))

    def end(self, status: str = "FINISHED") -> None:
        if self.enabled and self.run_id is not None:
            self._mlflow.end_run(status=status)
            self.run_id = None
