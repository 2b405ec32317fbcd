"""A pipeline job has finished only when its process exited 0 with every run it ran in FINISHED: checked on real
processes of the local pool, whose stage exits 0 with its run FAILED (as a SIGTERM inside Lightning once did). The
line that starts a job names the file its output goes to."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from slate_rl.stages import pipeline, pipeline_backends
from slate_rl.stages.pipeline_backends import LocalBackend, Outcome

STAGE_BODIES = {"finishes": "pass", "exits 0 inside its run": "raise SystemExit(0)"}


@pytest.mark.parametrize("body", sorted(STAGE_BODIES))
def test_a_job_has_finished_only_if_its_run_has(tracking_store, monkeypatch, caplog, body):
    stage = "print('a line of the job')\nfrom slate_rl.tracking.runs import stage_run\n"
    stage += "with stage_run('train_online', 'a job'):\n    "
    stage += STAGE_BODIES[body]
    monkeypatch.setattr(pipeline_backends, "job_command", lambda *args: [sys.executable, "-c", stage])
    job = pipeline.Job("train_online", "train_online/a", ["train-online"], ("key",))
    backend = LocalBackend(pipeline.PipelineConfig(["focused_topdown"], ["random"], [1], workers=1))
    with caplog.at_level(logging.INFO, logger="slate_rl"):
        backend.submit(job, "parent")
    (outcome,) = _wait(backend)
    (run,) = MlflowClient().search_runs(["0"], f"tags.{pipeline_backends.JOB_TAG} = '{job.name}'")
    if body == "finishes":
        assert (outcome.error, run.info.status) == ("", "FINISHED")
    else:
        assert outcome.error == f"exit 0, but its run {run.info.run_id} ended FAILED"
    (started,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("pipeline: started")]
    output = Path(started.rpartition("its output: ")[2])  # the job's output is where the pipeline says
    assert output.read_text().startswith("a line of the job\n")
    backend.close()


def _wait(backend: LocalBackend) -> list[Outcome]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if outcomes := backend.finished():
            return outcomes
    raise AssertionError("the job's process did not end within 60 s")
