"""MLflow tracking, the only package that imports mlflow: `store` (where the store is, its lock, the study's parent
run), `tracker` (one live run behind one gate: a failing store warns once and the job goes on) and `relog` (logging
what is on disk later: training runs and evaluation records)."""

from cldsgm.tracking.relog import log_records, relog_run_dir
from cldsgm.tracking.store import (
    COMMIT_TAG,
    TrackingError,
    finish_parent,
    git_commit,
    init_store,
    open_parent_run,
    sqlite_path,
    tracking_uri,
)
from cldsgm.tracking.tracker import TRACKING_FILE, Tracker

__all__ = ["COMMIT_TAG", "TRACKING_FILE", "Tracker", "TrackingError", "finish_parent", "git_commit", "init_store",
           "log_records", "open_parent_run", "relog_run_dir", "sqlite_path", "tracking_uri"]
