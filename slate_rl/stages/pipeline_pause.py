"""`slate-rl pipeline pause` and `pipeline continue`: stop a running pipeline and its jobs where they are (SIGSTOP),
for instance while a benchmark is timed on the same machine, and let them go on later (SIGCONT).

A paused run's heartbeat stops. So that no status, and no other pipeline, takes it for a run whose process died (and
marks it KILLED, or starts its job again), every run of the stopped processes carries the tag `paused` (the time it
was paused) until `continue` removes it; a paused run whose process is gone from this machine is lost as any other.
Only a pipeline of the local backend, from the machine it runs on: a Ray pipeline's jobs run on the cluster's nodes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from slate_rl.errors import SlateRLError
from slate_rl.stages.pipeline import STAGE, clock
from slate_rl.tracking import sqlite_store
from slate_rl.tracking.runs import (
    HEARTBEAT_TAG,
    HOST_TAG,
    PAUSED_TAG,
    PID_TAG,
    active_experiment_ids,
    active_mlflow_uri,
)


def pause(run_id: str | None = None) -> str:
    """Stop the running pipeline `run_id` (the newest running one by default) and every process it started; returns
    what was stopped."""
    client = MlflowClient()
    parent = _running_pipeline(client, run_id)
    if PAUSED_TAG in parent.data.tags:
        since = clock(float(parent.data.tags[PAUSED_TAG]))
        raise SlateRLError(
            f"pipeline run {parent.info.run_id} is already paused (since {since}); `slate-rl pipeline continue` lets "
            "it go on"
        )
    now = f"{time.time():.1f}"
    client.set_tag(parent.info.run_id, PAUSED_TAG, now)  # first: whatever fails next, `continue` lets them go on
    try:
        stopped = _stop_with_the_store_free(int(parent.data.tags[PID_TAG]))
    except SlateRLError:
        client.delete_tag(parent.info.run_id, PAUSED_TAG)
        raise
    runs = _runs_of(client, stopped)
    for run in runs:
        client.set_tag(run.info.run_id, PAUSED_TAG, now)
    jobs = [run.info.run_name for run in runs if run.info.run_id != parent.info.run_id]
    return (
        f"paused pipeline run {parent.info.run_id}: {len(stopped)} process(es) stopped, the pipeline and "
        f"{len(jobs)} job run(s){': ' + ', '.join(jobs) if jobs else ''}; `slate-rl pipeline continue` lets them go on"
    )


def carry_on(run_id: str | None = None) -> str:
    """Let a paused pipeline and its processes go on (what `pipeline continue` does); returns what went on."""
    client = MlflowClient()
    parent = _running_pipeline(client, run_id)
    if PAUSED_TAG not in parent.data.tags:
        raise SlateRLError(f"pipeline run {parent.info.run_id} is not paused; nothing to continue")
    pipeline_pid = int(parent.data.tags[PID_TAG])
    stopped = [pipeline_pid, *_descendants(pipeline_pid)]
    _go_on(stopped)
    now = f"{time.time():.1f}"
    runs = [run for run in _runs_of(client, stopped) if PAUSED_TAG in run.data.tags]
    for run in runs:
        client.set_tag(run.info.run_id, HEARTBEAT_TAG, now)  # alive from now on, before its own next heartbeat
        client.delete_tag(run.info.run_id, PAUSED_TAG)
    paused = time.time() - float(parent.data.tags[PAUSED_TAG])
    return (
        f"pipeline run {parent.info.run_id} goes on after {paused / 60:.1f} min paused: {len(stopped)} process(es), "
        f"{len(runs)} run(s)"
    )


def _stop_with_the_store_free(pipeline_pid: int, tries: int = 100) -> list[int]:
    """SIGSTOP the pipeline (first, so that it starts no job meanwhile), then the processes it started; returns them.
    A process stopped while it writes to a SQLite store would keep its lock, and every other process (this one, a
    status, another pipeline) would wait for it: then they go on for 50 ms and are stopped again, until the store
    is free."""
    for _ in range(tries):
        _signal(pipeline_pid, signal.SIGSTOP)
        stopped = [pipeline_pid, *_descendants(pipeline_pid)]
        for pid in stopped[1:]:
            _signal(pid, signal.SIGSTOP)
        if sqlite_store.unlocked(active_mlflow_uri()):
            return stopped
        _go_on(stopped)
        time.sleep(0.05)
    raise SlateRLError(
        f"the tracking store stayed locked by the pipeline's processes through {tries} tries to stop them between "
        "two writes; nothing is paused: try again"
    )


def _go_on(stopped: list[int]) -> None:
    for pid in reversed(stopped):  # the jobs first, the pipeline that waits for them last
        _signal(pid, signal.SIGCONT)


def _running_pipeline(client: MlflowClient, run_id: str | None) -> Run:
    """The pipeline run to pause or continue: `run_id`, else the newest RUNNING one; refused unless it runs on the
    local backend, on this machine, in a process that still exists."""
    if not hasattr(signal, "SIGSTOP"):
        raise SlateRLError("pausing a pipeline needs a POSIX system (Linux, macOS): it stops processes with SIGSTOP")
    if run_id:
        run = client.get_run(run_id)
    else:
        experiments = active_experiment_ids(client)
        found = client.search_runs(
            experiments,
            f"tags.stage = '{STAGE}' and attributes.status = 'RUNNING'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if not found:
            raise SlateRLError(
                f"no running pipeline in the tracking store {client.tracking_uri} (`slate-rl pipeline status` shows "
                "the newest; point MLFLOW_TRACKING_URI at the store of the pipeline to pause)"
            )
        run = found[0]
    tags, name = run.data.tags, f"run {run.info.run_id}"
    if tags.get("stage") != STAGE:
        raise SlateRLError(f"{name} is not a pipeline run (its stage: {tags.get('stage')})")
    if run.info.status != "RUNNING":
        raise SlateRLError(f"pipeline {name} is {run.info.status}, not running: there is nothing to pause or continue")
    if run.data.params.get("backend", "local") != "local":
        raise SlateRLError(f"pipeline {name} runs its jobs on a Ray cluster: pause is for the local backend")
    host = tags.get(HOST_TAG, "unknown")
    if host != socket.gethostname() or not tags.get(PID_TAG, "").isdigit():
        raise SlateRLError(f"pipeline {name} runs on host {host}: pause or continue it from there")
    try:
        os.kill(int(tags[PID_TAG]), 0)
    except ProcessLookupError:
        raise SlateRLError(
            f"the process of pipeline {name} (pid {tags[PID_TAG]}) is gone: run the pipeline again to finish its jobs"
        ) from None
    return run


def _descendants(pid: int) -> list[int]:
    """The processes started by `pid`, and by them, ..., from `ps` (Linux and macOS alike)."""
    table = subprocess.run(["ps", "-A", "-o", "pid=,ppid="], capture_output=True, text=True, check=True).stdout
    children: dict[int, list[int]] = {}
    for line in table.splitlines():
        child, parent = (int(field) for field in line.split())
        children.setdefault(parent, []).append(child)
    found, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop(0)
        found.append(child)
        todo.extend(children.get(child, []))
    return found


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # it ended between the listing and the signal
        os.kill(pid, sig)


def _runs_of(client: MlflowClient, pids: list[int]) -> list[Run]:
    """The RUNNING runs of these processes of this machine (a seed group's runs share its process)."""
    experiments = active_experiment_ids(client)
    host, wanted = socket.gethostname(), {str(pid) for pid in pids}
    return [
        run
        for run in client.search_runs(experiments, "attributes.status = 'RUNNING'")
        if run.data.tags.get(HOST_TAG) == host and run.data.tags.get(PID_TAG) in wanted
    ]
