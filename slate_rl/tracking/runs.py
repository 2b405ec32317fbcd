"""The life of a stage's MLflow run: start (or continue the run `mlflow run` created), tags and params, batched
metrics, artifacts, the console log, and the final status (FINISHED, FAILED or KILLED)."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import mlflow
from mlflow.entities import Metric, Param, RunStatus, RunTag, ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from slate_rl import __version__
from slate_rl.errors import SlateRLError
from slate_rl.progress import LOGGER_NAME

log = logging.getLogger(LOGGER_NAME)
_MAX_BATCH = 1000  # MLflow's limit of metrics per log_batch call
_PROJECT_DIR = Path(__file__).resolve().parents[2]
HOST_TAG, PID_TAG = "host", "pid"  # where it runs (information; and a dead process on this machine is dead at once)
# Whether a RUNNING run is alive: its process refreshes the tag `heartbeat` (unix time) every `heartbeat_interval`
# seconds (tag `heartbeat_interval`), from any machine; a run whose heartbeat is older than HEARTBEAT_MISSES
# intervals has lost its process.
HEARTBEAT_TAG, HEARTBEAT_INTERVAL_TAG = "heartbeat", "heartbeat_interval"
HEARTBEAT_ENV, HEARTBEAT_DEFAULT_S, HEARTBEAT_MISSES = "SLATE_RL_HEARTBEAT_S", 30.0, 4
PAUSED_TAG = "paused"  # unix time a run's process was stopped by `pipeline pause`: alive without heartbeat until then
RESUME_PATH, RESUME_FILE = "resume", "state.pt"  # where a resumable stage keeps the state `--resume` continues from
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"  # read by the MLflow UI to choose an experiment's default views
MODEL_TRAINING_KIND = "custom_model_development"


def configure_mlflow() -> None:
    """Process-wide MLflow settings: no telemetry; MLflow's own default store unless MLFLOW_TRACKING_URI is set."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def format_param(value: Any) -> str:
    """The string form of a config value in MLflow params and lineage keys (None -> '')."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return repr(value)
    return str(value)


def normal_param(text: str | None) -> str | None:
    """One spelling per logged value: '0.90' and '0.9' are the same number, 'True' and 'true' the same flag, and
    `mlflow run`'s quoted empty value '' is empty."""
    if text is None:
        return None
    if text in ("''", '""'):
        return ""
    try:
        return repr(float(text)) if text.strip() else ""
    except ValueError:
        return text.strip().lower()


def heartbeat_interval() -> float:
    """Seconds between two heartbeats of a run ($SLATE_RL_HEARTBEAT_S, default 30)."""
    text = os.environ.get(HEARTBEAT_ENV, str(HEARTBEAT_DEFAULT_S))
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise SlateRLError(f"{HEARTBEAT_ENV}={text!r} must be a number of seconds above 0 (default 30)")
    return seconds


def heartbeat_age(tags: dict[str, str]) -> float | None:
    """Seconds since a run's last heartbeat, or None for a run without one (logged before heartbeats existed)."""
    try:
        return time.time() - float(tags[HEARTBEAT_TAG])
    except (KeyError, ValueError):
        return None


def heartbeat_fresh(tags: dict[str, str]) -> bool | None:
    """Whether a run's process lives by its heartbeat (None: the run has none); the interval is the run's own."""
    age = heartbeat_age(tags)
    if age is None:
        return None
    try:
        interval = float(tags[HEARTBEAT_INTERVAL_TAG])
    except (KeyError, ValueError):
        interval = heartbeat_interval()
    return age < HEARTBEAT_MISSES * interval


class _Heartbeat:
    """A daemon thread that refreshes a run's heartbeat tag until stopped."""

    def __init__(self, client: MlflowClient, run_id: str, interval: float) -> None:
        self.client, self.run_id, self.interval = client, run_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{run_id}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.client.set_tag(self.run_id, HEARTBEAT_TAG, f"{time.time():.1f}")
            except Exception as exc:  # the store is away for a moment: the next beat tries again
                log.warning("heartbeat of run %s not written: %s", self.run_id, exc)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def git_commit(project_dir: Path = _PROJECT_DIR) -> str:
    """The project's current commit (with '-dirty' when the tree has changes), or 'unknown'.

    'unknown' is expected for an installed package (no `.git`); for a git checkout whose commit cannot be read (a
    worktree whose repository moved, git missing) a warning says so, since the run then records no commit.
    """
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=project_dir, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=project_dir,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError) as exc:
        if (project_dir / ".git").exists():
            why = getattr(exc, "stderr", None) or str(exc)
            log.warning(
                "the git commit of %s cannot be read (%s); this run records git_commit=unknown. Fix the checkout "
                "(for a worktree whose repository moved: `git worktree repair <this folder>` in the repository)",
                project_dir,
                why.strip(),
            )
        return "unknown"


class StageRun:
    """A handle on one MLflow run: params, tags, buffered metrics, artifacts. Create it with `stage_run`.

    `already_logged`: (metric, step) points the run holds from before (a resumed run); they are never logged again.
    """

    def __init__(
        self, client: MlflowClient, run_id: str, already_logged: frozenset[tuple[str, int]] = frozenset()
    ) -> None:
        self.client = client
        self.run_id = run_id
        self.already_logged = already_logged
        self._metrics: list[Metric] = []
        self._last_flush = time.monotonic()

    @property
    def uri(self) -> str:
        return f"runs:/{self.run_id}"

    def set_tags(self, tags: dict[str, Any]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, format_param(v)) for k, v in tags.items()])

    def log_params(self, params: dict[str, Any]) -> None:
        """Log the resolved config; keys that `mlflow run` already logged with the same value are skipped."""
        existing = self.client.get_run(self.run_id).data.params
        fresh = []
        for key, value in params.items():
            text = format_param(value)
            if key in existing:
                if not _same_value(existing[key], text):
                    raise SlateRLError(f"parameter {key} was logged as {existing[key]!r} but resolves to {text!r}")
                continue
            fresh.append(Param(key, text))
        for start in range(0, len(fresh), 100):
            self.client.log_batch(self.run_id, params=fresh[start : start + 100])

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        """Buffer metrics; they are written in batches (a single SQLite write costs ~4 ms)."""
        timestamp = int(time.time() * 1000)
        self._metrics.extend(
            Metric(k, float(v), timestamp, int(step))
            for k, v in metrics.items()
            if (k, int(step)) not in self.already_logged
        )
        if len(self._metrics) >= _MAX_BATCH or time.monotonic() - self._last_flush > 30:
            self.flush()

    def flush(self) -> None:
        while self._metrics:
            batch, self._metrics = self._metrics[:_MAX_BATCH], self._metrics[_MAX_BATCH:]
            self.client.log_batch(self.run_id, metrics=batch)
        self._last_flush = time.monotonic()

    def log_artifacts(self, local_dir: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(self.run_id, str(local_dir), artifact_path)

    def log_artifact(self, local_file: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(local_file), artifact_path)

    def replace_artifact(self, local_file: str | Path, artifact_path: str) -> None:
        """Log a file that replaces an earlier version (e.g. the resume state): on a local artifact store the
        new file is renamed into place, so a reader never sees half of it."""
        uri = urlparse(self.client.get_run(self.run_id).info.artifact_uri)
        if uri.scheme not in ("", "file"):
            self.log_artifact(local_file, artifact_path)
            return
        folder = Path(unquote(uri.path)) / artifact_path
        folder.mkdir(parents=True, exist_ok=True)
        staged = folder / f".{Path(local_file).name}.partial"
        shutil.copyfile(local_file, staged)
        os.replace(staged, folder / Path(local_file).name)


def logged_points(client: MlflowClient, run_id: str) -> frozenset[tuple[str, int]]:
    """Every (metric, step) point a run holds."""
    keys = client.get_run(run_id).data.metrics
    return frozenset((m.key, m.step) for key in keys for m in client.get_metric_history(run_id, key))


def _same_value(logged: str, resolved: str) -> bool:
    if logged in ("''", '""'):  # `mlflow run` logs an empty parameter in its shell-quoted form
        logged = ""
    if logged == resolved:
        return True
    try:
        return float(logged) == float(resolved)
    except ValueError:
        return "".join(logged.split()).lower() == "".join(resolved.split()).lower()


def _experiment_id(client: MlflowClient, experiment_name: str | None) -> str:
    name = experiment_name or os.environ.get("MLFLOW_EXPERIMENT_NAME")
    if not name:
        return os.environ.get("MLFLOW_EXPERIMENT_ID", "0")
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException:  # another process created it at the same moment
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def _mark_model_training(client: MlflowClient, run_id: str) -> None:
    """Tag the run's experiment as model training (unless it has a kind already), so that the MLflow UI opens it
    on its runs table and charts rather than on its GenAI trace views."""
    experiment = client.get_experiment(client.get_run(run_id).info.experiment_id)
    if EXPERIMENT_KIND_TAG not in experiment.tags:
        with contextlib.suppress(MlflowException):  # a job running at the same time may be setting it too
            client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)


def latest_runs_page(ui_address: str) -> str | None:
    """The MLflow UI's runs page of the experiment whose run started last in the tracking store (the UI at
    `ui_address` would otherwise open on its overview), or None when the store holds no run."""
    client = MlflowClient()
    try:
        experiments = active_experiment_ids(client)
        runs = client.search_runs(experiments, order_by=["attributes.start_time DESC"], max_results=1)
    except MlflowException:
        return None
    if not runs:
        return None
    return f"{ui_address.rstrip('/')}/#/experiments/{runs[0].info.experiment_id}/runs"


# stages whose command continues a KILLED run from its last checkpoint with --resume <run id>
RESUMABLE_STAGES = ("pretrain_gems", "train_mf", "train_online", "train_offline")


def _resume_hint(stage: str, run_id: str) -> str:
    if stage not in RESUMABLE_STAGES:
        return ""
    return f"; continue it with: slate-rl {stage.replace('_', '-')} --resume {run_id}"


@contextlib.contextmanager
def stage_run(
    stage: str,
    run_name: str,
    tags: dict[str, Any] | None = None,
    parent: StageRun | None = None,
    experiment_name: str | None = None,
    run_id: str | None = None,
) -> Iterator[StageRun]:
    """Run one stage inside an MLflow run and end it with the right status.

    With `run_id` (a resumed run) or under `mlflow run` (MLFLOW_RUN_ID) the run already exists and is continued
    (a resumed run's console log is kept as `console-<n>.log`, and the metric points it holds are not logged
    again); with `parent`, a child run is
    created in the parent's experiment; otherwise a new run in `experiment_name` (or MLFLOW_EXPERIMENT_NAME /
    the default experiment). The console log of the run is kept as the artifact `console.log`. An exception
    marks the run FAILED (KILLED for Ctrl-C) and propagates.
    """
    configure_mlflow()
    client = MlflowClient()
    env_run = os.environ.pop("MLFLOW_RUN_ID", None) if parent is None else None
    base_tags = {
        "stage": stage,
        "git_commit": git_commit(),
        "slate_rl_version": __version__,
        HOST_TAG: socket.gethostname(),
        PID_TAG: os.getpid(),
        HEARTBEAT_TAG: f"{time.time():.1f}",
        HEARTBEAT_INTERVAL_TAG: heartbeat_interval(),
        **(tags or {}),
    }
    if os.environ.get("SLATE_RL_JOB"):  # a job of `slate-rl pipeline`
        base_tags["pipeline_job"] = os.environ["SLATE_RL_JOB"]
    console_name = "console.log"
    already_logged: frozenset[tuple[str, int]] = frozenset()
    if run_id is not None:
        already_logged = logged_points(client, run_id)
        existing = {f.path for f in client.list_artifacts(run_id)}
        console_name = next(f"console-{n}.log" for n in range(1, 10_000) if f"console-{n}.log" not in existing)
        client.update_run(run_id, status="RUNNING")
    elif env_run:
        run_id = env_run
        client.update_run(run_id, status="RUNNING", name=run_name)
    else:
        experiment = (
            client.get_run(parent.run_id).info.experiment_id if parent else _experiment_id(client, experiment_name)
        )
        start_tags = {MLFLOW_RUN_NAME: run_name}
        if parent is not None:
            start_tags[MLFLOW_PARENT_RUN_ID] = parent.run_id
        run_id = client.create_run(experiment, tags=start_tags, run_name=run_name).info.run_id
    _mark_model_training(client, run_id)
    run = StageRun(client, run_id, already_logged)
    run.set_tags(base_tags)
    with tempfile.TemporaryDirectory(prefix="slate-rl-log-") as tmp:
        console = _attach_console_log(Path(tmp) / console_name)
        log.info("%s: MLflow run %s (%s)", stage, run_id, run_name)
        status = RunStatus.to_string(RunStatus.FAILED)
        heartbeat = _Heartbeat(client, run_id, float(base_tags[HEARTBEAT_INTERVAL_TAG]))
        try:
            yield run
            status = RunStatus.to_string(RunStatus.FINISHED)
        except KeyboardInterrupt:
            status = RunStatus.to_string(RunStatus.KILLED)
            log.error("%s: interrupted; run %s marked KILLED%s", stage, run_id, _resume_hint(stage, run_id))
            raise
        except BaseException as exc:
            log.error("%s: failed: %s; run %s marked FAILED", stage, exc, run_id)
            raise
        finally:
            heartbeat.stop()
            _close_console_log(console)
            with contextlib.suppress(Exception):
                run.flush()
                run.log_artifact(console.baseFilename)
            set_final_status(client, run_id, status)


def set_final_status(client: MlflowClient, run_id: str, status: str, attempts: int = 4, wait: float = 1.0) -> None:
    """End the run with `status`, trying again (after `wait`, 2 `wait`, ... seconds) when the store fails for a
    moment (a database locked by a write that an interrupt cut short, a server restarting), so that a stopped stage
    is not left RUNNING; the last failure propagates."""
    for attempt in range(1, attempts + 1):
        try:
            client.set_terminated(run_id, status)
            return
        except Exception as exc:
            if attempt == attempts:
                raise
            log.warning("status %s of run %s not written (%s); trying again", status, run_id, exc)
            time.sleep(wait * attempt)


def _attach_console_log(path: Path) -> logging.FileHandler:
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S"))
    for name in (LOGGER_NAME, "pytorch_lightning", "lightning.pytorch"):
        logging.getLogger(name).addHandler(handler)
    logging.getLogger(LOGGER_NAME).setLevel(min(logging.getLogger(LOGGER_NAME).level or logging.INFO, logging.INFO))
    return handler


def _close_console_log(handler: logging.FileHandler) -> None:
    for name in (LOGGER_NAME, "pytorch_lightning", "lightning.pytorch"):
        logging.getLogger(name).removeHandler(handler)
    handler.close()


def active_experiment_ids(client: MlflowClient) -> list[str]:
    """The ids of the store's active (not deleted) experiments, where a search for runs looks."""
    return [e.experiment_id for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY)]


def active_mlflow_uri() -> str:
    """The tracking URI in use (MLFLOW_TRACKING_URI, or MLflow's default sqlite:///mlflow.db in the current folder)."""
    return mlflow.get_tracking_uri()


def has_resume_state(run_id: str) -> bool:
    """Whether a run of a resumable stage saved the state `--resume` continues from (its first checkpoint came)."""
    client = MlflowClient()
    return any(f.path == f"{RESUME_PATH}/{RESUME_FILE}" for f in client.list_artifacts(run_id, RESUME_PATH))
