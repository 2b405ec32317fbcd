"""`pipeline pause` / `continue` without a running pipeline: what a paused run counts as, what is refused, and the
store check that keeps a stopped writer from locking everyone out (a paused pipeline end to end is in
test_pipeline.py)."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from slate_rl.cli import main
from slate_rl.errors import SlateRLError
from slate_rl.stages import pipeline, pipeline_pause
from slate_rl.tracking import sqlite_store
from slate_rl.tracking.runs import HEARTBEAT_INTERVAL_TAG, HEARTBEAT_TAG, HOST_TAG, PAUSED_TAG, PID_TAG


def _run(client: MlflowClient, pid: int, **tags: str):
    stale = {HEARTBEAT_TAG: f"{time.time() - 1000:.1f}", HEARTBEAT_INTERVAL_TAG: "30"}  # four heartbeats missed
    run_id = client.create_run(
        "0", tags={"stage": "pipeline", HOST_TAG: socket.gethostname(), PID_TAG: str(pid), **stale, **tags}
    ).info.run_id
    return client.get_run(run_id)


def test_a_paused_run_is_alive_without_heartbeat_while_its_process_exists(tracking_store):
    client = MlflowClient()
    gone = subprocess.Popen(["true"])
    gone.wait()
    assert pipeline.run_alive(_run(client, os.getpid())) is False  # no heartbeat: lost
    assert pipeline.run_alive(_run(client, os.getpid(), **{PAUSED_TAG: str(time.time())})) is True
    assert pipeline.run_alive(_run(client, gone.pid, **{PAUSED_TAG: str(time.time())})) is False


def test_pause_and_continue_refuse_what_they_cannot_do(tracking_store):
    client = MlflowClient()
    result = CliRunner().invoke(main, ["pipeline", "pause"])
    assert result.exit_code != 0 and "no running pipeline in the tracking store" in result.output, result.output
    elsewhere = _run(client, 1, **{HOST_TAG: "another-machine"}).info.run_id
    with pytest.raises(SlateRLError, match="runs on host another-machine: pause or continue it from there"):
        pipeline_pause.pause(elsewhere)
    gone = subprocess.Popen(["true"])
    gone.wait()
    dead = _run(client, gone.pid).info.run_id
    with pytest.raises(SlateRLError, match=f"pid {gone.pid}\\) is gone: run the pipeline again"):
        pipeline_pause.pause(dead)
    ray = _run(client, os.getpid()).info.run_id
    client.log_param(ray, "backend", "ray")
    with pytest.raises(SlateRLError, match="Ray cluster: pause is for the local backend"):
        pipeline_pause.pause(ray)
    mine = _run(client, os.getpid()).info.run_id
    with pytest.raises(SlateRLError, match="is not paused; nothing to continue"):
        pipeline_pause.carry_on(mine)
    client.set_terminated(mine, "FINISHED")
    with pytest.raises(SlateRLError, match="is FINISHED, not running"):
        pipeline_pause.pause(mine)


def test_a_store_locked_by_a_writer_is_not_free(tracking_store):
    uri = f"sqlite:///{tracking_store / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri).search_experiments()
    assert sqlite_store.unlocked(uri)
    writer = sqlite3.connect(tracking_store / "mlflow.db", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # as a process stopped between a write and its commit
    assert not sqlite_store.unlocked(uri, timeout=0.2)
    writer.execute("ROLLBACK")
    assert sqlite_store.unlocked(uri)
    writer.close()
    assert sqlite_store.unlocked("http://localhost:5000")  # a server keeps its own transactions


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_a_store_that_stays_locked_leaves_nothing_paused(tracking_store, monkeypatch):
    sleeper = subprocess.Popen(["sleep", "60"])  # stands for the pipeline's process
    try:
        run_id = _run(MlflowClient(), sleeper.pid).info.run_id
        monkeypatch.setattr(pipeline_pause.sqlite_store, "unlocked", lambda uri: False)
        with pytest.raises(SlateRLError, match=r"stayed locked .* nothing is paused: try again"):
            pipeline_pause.pause(run_id)
        assert _state(sleeper.pid) != "T"
        assert PAUSED_TAG not in MlflowClient().get_run(run_id).data.tags
    finally:
        sleeper.kill()
        sleeper.wait()
