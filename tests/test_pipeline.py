"""The pipeline: a tiny grid with one job killed on purpose, re-run to completion; the store under concurrency."""

from __future__ import annotations

import csv
import io
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from slate_rl.errors import SlateRLError
from slate_rl.stages import pipeline

pytestmark = pytest.mark.slow
GRID = ["--envs", "focused_mix", "--methods", "random,short_term_oracle", "--seeds", "2", "--preset", "quick",
        "--workers", "2"]


def _pipeline(store: Path) -> subprocess.Popen:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.Popen([sys.executable, "-m", "slate_rl.cli", "pipeline", *GRID], cwd=store, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                pass
    return found


def test_killed_job_is_reported_and_a_rerun_completes_the_table(tracking_store):
    process = _pipeline(tracking_store)
    victim = None
    deadline = time.monotonic() + 300
    while victim is None and time.monotonic() < deadline and process.poll() is None:
        jobs = [p for p in _children(process.pid) if b"short_term_oracle" in Path(f"/proc/{p}/cmdline").read_bytes()]
        victim = jobs[0] if jobs else None
        time.sleep(0.2)
    assert victim is not None, "the oracle job never started"
    time.sleep(3)  # let it create its run
    os.kill(victim, signal.SIGKILL)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 1
    assert "short_term_oracle/focused_mix/seed58407201 FAILED" in output
    assert "[2/3]" in output or "[3/3]" in output  # the other jobs went on
    statuses = {r.data.tags.get("method"): r.info.status
                for r in MlflowClient().search_runs(["0"], "tags.stage = 'train_online'")}
    assert statuses.get("short_term_oracle") in (None, "KILLED")

    rerun = _pipeline(tracking_store)
    output, _ = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, output
    assert "3 jobs, 2 already finished, 1 to run" in output
    rows = list(csv.DictReader(io.StringIO((tracking_store / "reports" / "pipeline" / "results.csv").read_text())))
    assert {(row["method"], row["n"]) for row in rows} == {("random", "2"), ("short_term_oracle", "1")}


def _log_like_a_stage(uri: str, parent: str, index: int) -> str:
    os.environ["MLFLOW_TRACKING_URI"] = uri
    from slate_rl.tracking.runs import StageRun, stage_run

    with stage_run("stress", run_name=f"stress/{index}", parent=StageRun(MlflowClient(), parent)) as run:
        run.log_params({f"p{i}": i for i in range(20)})
        for step in range(300):
            run.log_metrics({"a": step, "b": index}, step=step)
            if step % 25 == 0:
                run.flush()
                run.set_tags({"step": step})
        return run.run_id


def test_concurrent_jobs_do_not_corrupt_the_store(tracking_store):
    client = MlflowClient()
    parent = client.create_run("0").info.run_id
    uri = os.environ["MLFLOW_TRACKING_URI"]
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        run_ids = pool.starmap(_log_like_a_stage, [(uri, parent, i) for i in range(4)])
    for run_id in run_ids:
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and run.data.tags["mlflow.parentRunId"] == parent
        assert len(client.get_metric_history(run_id, "a")) == 300 and len(run.data.params) == 20


def test_bad_pipeline_input():
    with pytest.raises(SlateRLError, match="workers must be >= 1"):
        pipeline.PipelineConfig.resolve("all", "all", "2", workers=0)
    with pytest.raises(SlateRLError, match="unknown method"):
        pipeline.PipelineConfig.resolve("all", "sac_gem", "2")
    with pytest.raises(SlateRLError, match="seeds must be a count in"):
        pipeline.PipelineConfig.resolve("all", "all", "11")
    assert pipeline.parse_seeds("2") == [58407201, 496912423] and pipeline.parse_seeds("1,5") == [1, 5]
