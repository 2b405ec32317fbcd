"""The pipeline's queue of jobs, on a backend that only records what it is given: urgent jobs start first, a wait
ends with the jobs it waits for while the others run on, and a failed upstream job stops new jobs but lets the
running ones end; the training jobs of methods that need no upstream output start with the upstream phases."""

from __future__ import annotations

import logging

import pytest
from mlflow.tracking import MlflowClient

from slate_rl.errors import SlateRLError
from slate_rl.stages import pipeline
from slate_rl.stages.pipeline import Job
from slate_rl.stages.pipeline_backends import Outcome
from slate_rl.stages.pipeline_scheduler import Scheduler


class RecordingBackend:
    """Runs nothing: `workers` jobs at once, the oldest ends at each call of `finished` (failed if named in
    `fail`)."""

    def __init__(self, workers: int, fail: tuple[str, ...] = ()) -> None:
        self.parallel, self.fail = workers, fail
        self.started: list[str] = []
        self.running: list[Job] = []

    def free(self) -> bool:
        return len(self.running) < self.parallel

    def submit(self, job: Job, parent_run_id: str) -> None:
        self.started.append(job.name)
        self.running.append(job)

    def finished(self) -> list[Outcome]:
        if not self.running:
            return []
        job = self.running.pop(0)
        return [Outcome(job, 1.0, "exit 1" if job.name in self.fail else "")]

    def close(self) -> None:
        pass


def _job(name: str) -> Job:
    return Job("train_online", name, ["train-online"], (name,))


def test_urgent_jobs_start_first_and_a_wait_ends_with_its_own_jobs():
    backend = RecordingBackend(workers=2, fail=("early",))
    scheduler = Scheduler(backend, "parent")
    scheduler.add([_job("early"), _job("late"), _job("never")])
    urgent = [_job("urgent")]
    scheduler.add(urgent, urgent=True)

    assert scheduler.wait(urgent) == []
    assert backend.started == ["urgent", "early"] and list(scheduler.running) == ["early"]  # early runs on
    scheduler.stop_starting()  # the jobs not started leave the queue; the running one ends
    assert scheduler.wait() == ["early"] and backend.started == ["urgent", "early"] and not scheduler.running
    assert scheduler.failures == ["early"] and list(scheduler.queued) == ["early", "urgent"]


def test_training_jobs_without_upstream_needs_start_with_the_dataset_and_end_before_a_failure_stops(
    tracking_store, monkeypatch, caplog
):
    cfg = pipeline.PipelineConfig.resolve("focused_mix", "sac_gems,random", "58407201", preset="quick", workers=2)
    backend = RecordingBackend(workers=2, fail=("dataset/focused_mix",))
    monkeypatch.setattr(pipeline, "_backend", lambda cfg: backend)
    caplog.set_level(logging.INFO, logger="slate_rl")

    with pytest.raises(SlateRLError, match=r"1 job\(s\) failed or still running: dataset/focused_mix; the later"):
        pipeline.run(cfg)
    assert backend.started == ["dataset/focused_mix", "random/focused_mix/seed58407201"]  # no GeMS, no SAC+GeMS
    assert not backend.running  # the Random job ended before the pipeline stopped
    assert "1 training job(s) need no dataset, MF or GeMS" in caplog.text
    assert "waiting for the 1 job(s) still running" in caplog.text
    (parent,) = MlflowClient().search_runs(["0"], "tags.stage = 'pipeline'")
    assert parent.info.status == "FAILED"
