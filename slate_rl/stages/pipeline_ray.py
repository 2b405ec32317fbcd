"""The pipeline's Ray backend (`slate-rl pipeline --backend ray`; the optional extra `slate-rl[ray]`): every job is a
Ray task with the resources of one job (`--cpus-per-job`, `--gpus-per-job`: Ray picks the node and the GPU), and runs
the same `slate-rl <stage> ...` process as the local pool does, on that node, against the driver's tracking store.

A task lost with its node (or its worker) is retried by Ray. Every start of a task re-plans its job from the store
and never writes into a run whose heartbeat is fresh: it waits until that run ends or its heartbeat stops; a run left
RUNNING by a lost attempt is marked KILLED and resumed from its last checkpoint (or, before its first, run anew).
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import mlflow

from slate_rl.errors import SlateRLError
from slate_rl.stages import pipeline
from slate_rl.stages.pipeline_backends import Outcome, job_command, job_env, job_outcome
from slate_rl.tracking.runs import heartbeat_interval

TASK_RETRIES = 3  # attempts after the first when a task's worker or node is lost
CONNECT_TIMEOUT_S = 5.0
PASSED_ENV = ("MLFLOW_TRACKING_", "SLATE_RL_")  # the driver's settings every job needs (store, presets, heartbeat)
log = logging.getLogger("slate_rl")


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise SlateRLError(
            "--backend ray needs Ray: pip install 'slate-rl[ray]' (on every node of the cluster)"
        ) from exc
    return ray


def _cluster_address(address: str) -> str:
    """The cluster's host:port, once something answers there (Ray itself would retry for minutes)."""
    from ray._private.services import canonicalize_bootstrap_address  # how `ray.init` reads 'auto' and HOST:PORT

    try:
        resolved = canonicalize_bootstrap_address(address or "auto")
    except (ConnectionError, ValueError) as exc:
        raise SlateRLError(
            f"no Ray cluster at --address {address or 'auto'}: {exc}; start one with `ray start --head` (then "
            "`ray start --address HEAD:PORT` on the other machines) or give its address HOST:PORT"
        ) from exc
    if resolved is None:
        raise SlateRLError("--address local would start a private Ray instance; give a cluster's address or 'auto'")
    host, _, port = (address if address not in ("", "auto") else resolved).rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except (OSError, ValueError) as exc:
        raise SlateRLError(
            f"no Ray cluster answers at {host}:{port} ({exc}); start one there with `ray start --head --port "
            f"{port}`, or give the address `ray start --head` printed"
        ) from exc
    return resolved


def _portable_uri(uri: str) -> str:
    """The tracking URI as every node must read it: a SQLite file or a folder by its absolute path."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
    if "://" not in uri and not uri.startswith("file:"):
        return str(Path(uri).resolve())
    return uri


class RayBackend:
    """Jobs as tasks of the Ray cluster at `cfg.address` ('' or 'auto': the one this machine belongs to)."""

    def __init__(self, cfg: pipeline.PipelineConfig) -> None:
        ray = self.ray = _import_ray()
        address = _cluster_address(cfg.address)
        try:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError) as exc:  # e.g. a cluster of another Ray or Python version
            raise SlateRLError(f"could not join the Ray cluster at {address}: {exc}") from exc
        try:
            nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
            self.parallel = self._check_resources(nodes, cfg, address)
        except BaseException:
            ray.shutdown()
            raise
        uri = _portable_uri(mlflow.get_tracking_uri())
        if uri.startswith(("sqlite:", "file:", "/")) and len(nodes) > 1:
            log.warning(
                "pipeline: the tracking store %s is a local file: every node must reach it at that path (one machine, "
                "or a shared filesystem); a cluster of machines needs a tracking server",
                uri,
            )
        self.env = {k: v for k, v in os.environ.items() if k.startswith(PASSED_ENV)} | {"MLFLOW_TRACKING_URI": uri}
        self.cfg = cfg
        self.remote = ray.remote(run_task)
        self.resources = {
            "num_cpus": cfg.cpus_per_job,
            "num_gpus": cfg.gpus_per_job,
            "max_retries": TASK_RETRIES,
            "retry_exceptions": False,
        }
        self.running: dict[Any, pipeline.Job] = {}
        log.info(
            "pipeline: Ray cluster at %s: %d nodes, %d jobs at once (%s CPU, %s GPU each)",
            address,
            len(nodes),
            self.parallel,
            cfg.cpus_per_job,
            cfg.gpus_per_job,
        )

    @staticmethod
    def _check_resources(nodes: list[dict[str, float]], cfg: pipeline.PipelineConfig, address: str) -> int:
        """How many jobs fit at once; refuses jobs that no node can hold (Ray would wait for them forever)."""
        gpus = sum(node.get("GPU", 0) for node in nodes)
        if cfg.gpus_per_job > 0 and not gpus:
            raise SlateRLError(
                f"--gpus-per-job {cfg.gpus_per_job}: the Ray cluster at {address} has no GPU; start its nodes on "
                "machines with GPUs (`ray start ... --num-gpus N`) or run on CPUs (--gpus-per-job 0)"
            )

        def fits(node: dict[str, float]) -> int:
            counts = [math.floor(node.get("CPU", 0) / cfg.cpus_per_job)]
            if cfg.gpus_per_job > 0:
                counts.append(math.floor(node.get("GPU", 0) / cfg.gpus_per_job))
            return min(counts)

        parallel = sum(fits(node) for node in nodes)
        if not parallel:
            largest = max(nodes, key=lambda node: (node.get("GPU", 0), node.get("CPU", 0)), default={})
            raise SlateRLError(
                f"no node of the Ray cluster at {address} holds one job ({cfg.cpus_per_job} CPU, {cfg.gpus_per_job} "
                f"GPU); its largest has {largest.get('CPU', 0):g} CPU, {largest.get('GPU', 0):g} GPU: lower "
                "--cpus-per-job / --gpus-per-job"
            )
        return parallel

    def free(self) -> bool:
        return True  # Ray queues the tasks until their resources are free

    def submit(self, job: pipeline.Job, parent_run_id: str) -> None:
        threads = max(1, math.ceil(self.cfg.cpus_per_job))
        ref = self.remote.options(name=job.name, **self.resources).remote(
            job, parent_run_id, self.env, os.getcwd(), threads, "cuda" if self.cfg.gpus_per_job > 0 else None
        )
        self.running[ref] = job
        resuming = f" (resuming run {job.run_id})" if job.state == "resume" else ""
        log.info("pipeline: submitted %s to the Ray cluster%s", job.name, resuming)

    def finished(self) -> list[Outcome]:
        if not self.running:
            return []
        ready, _ = self.ray.wait(list(self.running), num_returns=len(self.running), timeout=0.5)
        outcomes = []
        for ref in ready:
            job = self.running.pop(ref)
            try:
                outcomes.append(self.ray.get(ref))
            except self.ray.exceptions.RayError as exc:  # lost more often than it may be retried
                lines = str(exc).strip().splitlines()
                outcomes.append(Outcome(job, 0.0, f"Ray task lost: {lines[0] if lines else type(exc).__name__}"))
        return outcomes

    def close(self) -> None:
        self.ray.shutdown()


def run_task(
    job: pipeline.Job, parent_run_id: str, env: dict[str, str], cwd: str, threads: int, device: str | None = None
) -> Outcome:
    """A Ray task: the job's process on this node, once no live process runs the job (see the module's doc); jobs
    that take --device run on `device` ('cuda': the GPU Ray gave the task)."""
    os.environ.update(env)  # this worker serves this pipeline only: its store and settings
    started = time.monotonic()
    current = _take_over(job)
    note = ""
    if current.state != job.state or current.run_id != job.run_id:
        note = {
            "finished": "finished by another process",
            "resume": f"resumed run {current.run_id} after a lost attempt",
            "run": "started anew after a lost attempt",
        }.get(current.state, "")
    if current.state == "finished":
        return Outcome(current, time.monotonic() - started, note=note)
    with tempfile.TemporaryDirectory(prefix="slate-rl-job-") as logs:
        log_file = Path(logs) / "job.log"
        with open(log_file, "w") as handle:
            process = subprocess.Popen(
                job_command(current, parent_run_id, device),
                cwd=cwd if Path(cwd).is_dir() else logs,
                stdout=handle,
                stderr=subprocess.STDOUT,
                env=job_env(current, threads),
                preexec_fn=_die_with_parent,
            )
            process.wait()
        return job_outcome(current, process, time.monotonic() - started, log_file, note)


def _take_over(job: pipeline.Job) -> pipeline.Job:
    """The job's state now: while a run of it has a fresh heartbeat, wait; a run a lost attempt left RUNNING is
    marked KILLED (tag `lost`), then resumed (or, before its first checkpoint, replaced by a new run)."""
    while (current := pipeline.locate(job)).state == "running":
        time.sleep(heartbeat_interval())
    if current.state in ("run", "resume"):
        pipeline.retire_lost_runs(job, f"a Ray task on {socket.gethostname()}")
    return current


def _die_with_parent() -> None:
    """In the job's process: die when the task's worker dies (a lost worker leaves no process writing its run)."""
    if sys.platform == "linux":
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
