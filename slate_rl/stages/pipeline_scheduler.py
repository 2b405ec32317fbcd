"""The pipeline's queue of jobs: they run on a backend as workers free up, urgent ones (the phase the pipeline waits
for) first, then the others (training jobs that need no upstream output, queued early so that they use the workers
an upstream phase leaves free); each job is reported as it ends, with the time the queue has left."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from slate_rl.stages.pipeline import Job
    from slate_rl.stages.pipeline_backends import Backend, Outcome

log = logging.getLogger("slate_rl")


class Scheduler:
    """Runs queued jobs on `backend` as child runs of `parent_run_id`: `add` queues them, `wait` runs the queue
    until the jobs it is given have ended."""

    def __init__(self, backend: Backend, parent_run_id: str) -> None:
        self.backend, self.parent_run_id = backend, parent_run_id
        self.queued: dict[str, Job] = {}  # every job queued (as it was then), by name
        self.pending: list[Job] = []
        self.running: dict[str, Job] = {}
        self.ended: dict[str, bool] = {}  # by name: whether it finished
        self.failures: list[str] = []
        self.durations: dict[str, list[float]] = {}  # by stage: the seconds of its jobs that ended

    def add(self, jobs: list[Job], urgent: bool = False) -> None:
        """Queue `jobs` after those already waiting (before them when `urgent`)."""
        self.queued.update({job.name: job for job in jobs})
        self.pending = [*jobs, *self.pending] if urgent else [*self.pending, *jobs]

    def wait(self, jobs: list[Job] | None = None) -> list[str]:
        """Run the queue until `jobs` (every queued job when None) have ended; returns the names of those that
        failed. Other jobs go on running."""
        names = [job.name for job in jobs] if jobs is not None else list(self.queued)
        while not all(name in self.ended for name in names):
            while self.pending and self.backend.free():
                job = self.pending.pop(0)
                self.backend.submit(job, self.parent_run_id)
                self.running[job.name] = job
            for outcome in self.backend.finished():
                self._report(outcome)
        return [name for name in names if not self.ended[name]]

    def stop_starting(self) -> None:
        """Start no more jobs: those not started yet leave the queue (the running ones go on)."""
        for job in self.pending:
            del self.queued[job.name]
        self.pending.clear()

    def _report(self, outcome: Outcome) -> None:
        job = self.running.pop(outcome.job.name)
        self.ended[job.name] = not outcome.error
        self.durations.setdefault(job.stage, []).append(outcome.seconds)
        done, total = len(self.ended), len(self.queued)
        left, eta = total - done, self._eta()
        note = f" ({outcome.note})" if outcome.note else ""
        if not outcome.error:
            log.info(
                "pipeline: [%d/%d] %s finished in %.0f s%s; %d left, ETA %s",
                done,
                total,
                job.name,
                outcome.seconds,
                note,
                left,
                eta,
            )
            return
        self.failures.append(job.name)
        log.error(
            "pipeline: [%d/%d] %s FAILED (%s) after %.0f s%s; %d left, ETA %s; end of its log:\n  %s",
            done,
            total,
            job.name,
            outcome.error,
            outcome.seconds,
            note,
            left,
            eta,
            "\n  ".join(outcome.log_tail),
        )

    def _eta(self) -> str:
        """Remaining work / jobs at once, from the mean duration of the jobs of each stage that ended (of all
        stages, for a stage with none yet); a running job counts half."""
        known = [seconds for values in self.durations.values() for seconds in values]

        def mean(stage: str) -> float:
            values = self.durations.get(stage, known)
            return sum(values) / len(values)

        seconds = sum(mean(job.stage) for job in self.pending) + sum(mean(j.stage) / 2 for j in self.running.values())
        minutes = seconds / max(self.backend.parallel, 1) / 60
        return f"{minutes:.0f} min" if minutes >= 1 else "< 1 min"
