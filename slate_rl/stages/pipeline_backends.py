"""Where the pipeline's jobs run: a backend takes jobs and reports those that ended. The local backend runs each job as
a `slate-rl <stage> ... --parent-run <id>` process of a pool on this machine; the Ray backend (`pipeline_ray`) runs
the same command inside a Ray task on a cluster's node."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from slate_rl.tracking.runs import HOST_TAG, PID_TAG, active_experiment_ids

if TYPE_CHECKING:
    from slate_rl.stages.pipeline import Job, PipelineConfig

JOB_TAG = "pipeline_job"
SIGNAL_TAG = "exit_signal"  # set on a job's runs when its process died by a signal (so the run can be resumed)
JOB_ENV = "SLATE_RL_JOB"  # the job's name, in its process's environment (the stage tags its runs with it)
# The stages that take --device: their jobs run on a GPU when the pipeline has some (the others stay on the CPU).
GPU_STAGES = ("train_online", "pretrain_gems", "train_mf", "collect", "train_offline")
LOG_TAIL_LINES = 15
log = logging.getLogger("slate_rl")


@dataclasses.dataclass
class Outcome:
    """A job that ended: `error` is '' when it finished, else why not ('exit 1', 'killed by SIGKILL', ...);
    `note` says what happened on the way (e.g. a run resumed after a lost attempt)."""

    job: Job
    seconds: float
    error: str = ""
    log_tail: list[str] = dataclasses.field(default_factory=list)
    note: str = ""


class Backend(Protocol):
    """Runs jobs; `parallel` is how many run at once (for the ETA)."""

    parallel: int

    def free(self) -> bool:
        """Whether another job may be submitted now."""
        ...

    def submit(self, job: Job, parent_run_id: str) -> None: ...

    def finished(self) -> list[Outcome]:
        """The jobs that ended since the last call (waits a moment when none did)."""
        ...

    def close(self) -> None: ...


def job_command(job: Job, parent_run_id: str, device: str | None = None) -> list[str]:
    """The job's process: a resumed run keeps its parent, a new one becomes a child of the pipeline's run; with
    `device` (e.g. 'cuda:1'), a job of a stage that takes --device runs there."""
    command = [sys.executable, "-m", "slate_rl.cli", *job.command()]
    if device is not None and job.stage in GPU_STAGES:
        command += ["--device", device]
    return command if job.state == "resume" else [*command, "--parent-run", parent_run_id]


def pick_gpu(devices: list[str], busy: list[str]) -> str:
    """The GPU (of `devices`, numbers as given to --devices) running the fewest of the `busy` jobs' GPUs; ties go
    to the first listed. Jobs thus spread round-robin and stay spread as they finish at different times."""
    return min(devices, key=lambda gpu: (busy.count(gpu), devices.index(gpu)))


def job_env(job: Job, threads: int, base: dict[str, str] | None = None) -> dict[str, str]:
    """The job process's environment: its name, its CPU threads, no run of the parent's."""
    env = {**(os.environ if base is None else base), "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    env.pop("MLFLOW_RUN_ID", None)
    return {**env, JOB_ENV: job.name}


def exit_reason(returncode: int) -> str:
    return f"killed by {signal.Signals(-returncode).name}" if returncode < 0 else f"exit {returncode}"


def log_tail(log_file: Path) -> list[str]:
    return log_file.read_text(errors="replace").strip().splitlines()[-LOG_TAIL_LINES:]


def job_outcome(job: Job, process: subprocess.Popen, seconds: float, log_file: Path, note: str = "") -> Outcome:
    """How a job's process that has exited ended. It finished only if it exited 0 with every run it ran in
    FINISHED: a stage that exits 0 with its run FAILED or KILLED (as Lightning once made of a SIGTERM) has not, and
    the jobs after it must not start. A process that died is recorded on its runs (`record_death`)."""
    if process.returncode != 0:
        record_death(job, process.pid, process.returncode)
        return Outcome(job, seconds, exit_reason(process.returncode), log_tail(log_file), note)
    unfinished = [r.info for r in _runs_of(job, process.pid) if r.info.status != "FINISHED"]
    if unfinished:
        error = f"exit 0, but its run {unfinished[0].run_id} ended {unfinished[0].status}"
        return Outcome(job, seconds, error, log_tail(log_file), note)
    return Outcome(job, seconds, note=note)


def record_death(job: Job, pid: int, returncode: int) -> None:
    """A job process that died without ending its runs leaves them RUNNING: mark them KILLED; when a signal killed
    it, say so on its runs (tag `exit_signal`), so that the next pipeline resumes them. Runs where it ran."""
    client = MlflowClient()
    for r in _runs_of(job, pid):
        if returncode < 0:
            client.set_tag(r.info.run_id, SIGNAL_TAG, signal.Signals(-returncode).name)
        if r.info.status == "RUNNING":
            client.set_terminated(r.info.run_id, "KILLED")


def _runs_of(job: Job, pid: int) -> list[Run]:
    """The runs that the job's process `pid` on this machine ran in."""
    client = MlflowClient()
    experiments = active_experiment_ids(client)
    return client.search_runs(
        experiments,
        f"tags.{JOB_TAG} = '{job.name}' and tags.{PID_TAG} = '{pid}' and tags.{HOST_TAG} = '{socket.gethostname()}'",
    )


class LocalBackend:
    """A pool of `cfg.workers` job processes on this machine; with `cfg.devices`, every job of a stage that takes
    --device (`GPU_STAGES`) gets `--device cuda:K`, K the listed GPU with the fewest running jobs."""

    def __init__(self, cfg: PipelineConfig) -> None:
        self.cfg = cfg
        self.parallel = cfg.workers
        self._threads = max(1, (os.cpu_count() or 1) // cfg.workers)
        self._logs = tempfile.TemporaryDirectory(prefix="slate-rl-pipeline-")
        self._running: dict[int, tuple[Job, subprocess.Popen, Path, float]] = {}
        self._gpus: dict[int, str] = {}  # the GPU of each running job that has one, by slot

    def free(self) -> bool:
        return len(self._running) < self.cfg.workers

    def submit(self, job: Job, parent_run_id: str) -> None:
        slot = next(slot for slot in range(self.cfg.workers) if slot not in self._running)
        env = job_env(job, self._threads)
        device = None
        if self.cfg.devices and job.stage in GPU_STAGES:
            gpu = pick_gpu(self.cfg.devices, list(self._gpus.values()))
            self._gpus[slot], device = gpu, f"cuda:{gpu}"
        log_file = Path(self._logs.name) / (job.name.replace("/", "_").replace(" ", "") + ".log")
        with open(log_file, "w") as handle:
            process = subprocess.Popen(
                job_command(job, parent_run_id, device), stdout=handle, stderr=subprocess.STDOUT, env=env
            )
        resuming = f" (resuming run {job.run_id})" if job.state == "resume" else ""
        log.info("pipeline: started %s%s; its output: %s", job.name, resuming, log_file)
        self._running[slot] = (job, process, log_file, time.monotonic())

    def finished(self) -> list[Outcome]:
        time.sleep(0.5)
        outcomes = []
        for slot, (job, process, log_file, started) in list(self._running.items()):
            if process.poll() is None:
                continue
            del self._running[slot]
            self._gpus.pop(slot, None)
            outcomes.append(job_outcome(job, process, time.monotonic() - started, log_file))
        return outcomes

    def close(self) -> None:
        self._logs.cleanup()
