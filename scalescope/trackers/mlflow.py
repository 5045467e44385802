"""MLflow: one MLflow run per scalescope run, tagged ``scalescope.run_id``, in a local file store or a tracking URI.

Works with ``mlflow-skinny`` (MlflowClient and the file store, no server). The default store is ``<store>/mlruns``;
MLflow 3 keeps its file store in maintenance mode behind ``MLFLOW_ALLOW_FILE_STORE=true``, which this module sets for
its own process when the variable is unset and the URI is a local path.

Concurrency: many workers may open runs in one file store at once. The file store's ``create_experiment`` checks
the name, then makes a directory under a random id, so two creators can both succeed and leave two experiments of one
name; finding or creating the experiment and the run happens under an exclusive ``flock`` on
``<mlruns>/.scalescope.lock``.
A tracking server enforces unique names itself: a lost race there is RESOURCE_ALREADY_EXISTS, answered by reading.

Resume: the run tagged with this run id is reopened (RUNNING again). MLflow cannot delete metric points, so the steps
of each metric that the run already holds (an earlier attempt logged them after its checkpoint) are skipped rather than
logged twice; their values are the earlier attempt's, identical when resume is exact. A run that starts over from
step 0 soft-deletes the old MLflow run (``delete_run``) and opens a new one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

from .base import LogConfig, Opening, flatten

TAG = "scalescope.run_id"
# MLflow's limits on one log_batch call and on a param's value (mlflow/utils/validation.py).
MAX_METRICS, MAX_PARAMS, MAX_PARAM_LEN = 1000, 100, 6000
STATUS = {"finished": "FINISHED", "diverged": "FAILED", "failed": "FAILED"}


def _local_root(uri: str) -> Path | None:
    """The directory of a file store URI (``file:///x`` or a plain path), None for a server or database."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(url2pathname(parsed.path))
    if parsed.scheme == "" or len(parsed.scheme) == 1:  # a path (a one-letter scheme: a Windows drive)
        return Path(uri)
    return None


@contextlib.contextmanager
def _locked(root: Path | None) -> Iterator[None]:
    if root is None:
        yield
        return
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".scalescope.lock").open("a") as f:  # Path.open: this module's open() is the entry point
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class MlflowTracker:
    def __init__(self, log: LogConfig, ctx: Opening):
        uri = log.mlflow_uri or (ctx.store / "mlruns").resolve().as_uri()
        root = _local_root(uri)
        if root is not None:
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.tracking import MlflowClient

        self.held: dict[str, int] = {}  # metric -> the last step this MLflow run already holds (resume)
        with _locked(root):
            self.client = MlflowClient(tracking_uri=uri)
            exp_id = self._experiment(log.mlflow_experiment or ctx.experiment)
            old = self.client.search_runs([exp_id], f"tags.`{TAG}` = '{ctx.run_id}'")
            if old and ctx.start_step is not None:
                self.run_id = old[0].info.run_id
                self.client.update_run(self.run_id, status="RUNNING")
                for key in old[0].data.metrics:
                    self.held[key] = max(m.step for m in self.client.get_metric_history(self.run_id, key))
            else:
                for run in old:  # starting over: the old run's points would mix with the new ones
                    self.client.delete_run(run.info.run_id)
                tags = {TAG: ctx.run_id, "scalescope.experiment": ctx.experiment}
                self.run_id = self.client.create_run(exp_id, tags=tags, run_name=ctx.run_id).info.run_id
        if not self.held:
            self._params(ctx.config)

    def _experiment(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return str(found.experiment_id)
        try:
            return str(self.client.create_experiment(name))
        except MlflowException as e:  # another worker created it between our read and our create (server)
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise e
            return str(found.experiment_id)

    def _params(self, config: dict[str, Any]) -> None:
        from mlflow.entities import Param

        params = [Param(k, str(v)[:MAX_PARAM_LEN]) for k, v in flatten(config).items()]
        for i in range(0, len(params), MAX_PARAMS):
            self.client.log_batch(self.run_id, params=params[i : i + MAX_PARAMS])

    def log(self, rows: list[dict[str, Any]]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [
            Metric(r["metric"], float(r["value"]), now, int(r["step"]))
            for r in rows
            if r["value"] is not None and int(r["step"]) > self.held.get(r["metric"], -1)
        ]
        for i in range(0, len(metrics), MAX_METRICS):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + MAX_METRICS])

    def close(self, status: str) -> None:
        self.client.set_tag(self.run_id, "scalescope.status", status)
        self.client.set_terminated(self.run_id, STATUS.get(status, "FAILED"))


def open(log: LogConfig, ctx: Opening) -> MlflowTracker:  # noqa: A001 - the registry's entry point
    return MlflowTracker(log, ctx)
