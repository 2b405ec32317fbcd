"""`slate-rl pipeline status`: a running or past pipeline's jobs as the store holds them now, phase by phase: each
job's state (finished, running, lost, killed, failed or waiting), its newest run and how long it ran, and how far a
training run got, with the time it has left."""

from __future__ import annotations

import statistics
import time

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from slate_rl.errors import SlateRLError
from slate_rl.stages import pipeline_offline
from slate_rl.stages.pipeline import STAGE, Job, PipelineConfig, Store, clock, phases, run_alive, where_running
from slate_rl.tracking.runs import PAUSED_TAG, active_experiment_ids, heartbeat_age

RECENT_WINDOWS = 5  # logging windows of a training run whose median pace gives its time left


def status(run_id: str | None = None) -> str:
    """A pipeline's jobs as the store holds them now (the newest pipeline run's unless `run_id` names one): each
    job's state, newest run and its duration, phase by phase (what `pipeline status` prints)."""
    client = MlflowClient()
    parent = _pipeline_run(client, run_id)
    params = {k: "" if v in ("''", '""') else v for k, v in parent.data.params.items()}
    cfg = PipelineConfig.resolve(
        params.get("envs", "all"),
        params.get("methods", "all"),
        params.get("seeds", "10"),
        env_param=(params.get("env_param", ""),),
        assignments=(params.get("set", ""),),
        preset=params.get("preset", "paper"),
        item_embeddings=params.get("item_embeddings", ""),
        group_seeds=params.get("group_seeds", "false").lower() == "true",  # before groups: one job per seed
    )
    cfg.offline = pipeline_offline.OfflineGrid.from_params(cfg, params)
    store = Store()
    alive = run_alive(parent) if parent.info.status == "RUNNING" else None
    state = parent.info.status + (", its process is gone" if alive is False else "")
    if alive and PAUSED_TAG in parent.data.tags:
        state += f", paused since {clock(float(parent.data.tags[PAUSED_TAG]))}: `slate-rl pipeline continue`"
    lines = [
        f"pipeline run {parent.info.run_id} ({state}): started "
        f"{clock(parent.info.start_time / 1000)}, "
        f"{_duration(parent)}; backend {params.get('backend', 'local')}"
    ]
    titled = phases(cfg, store)
    for number, (title, jobs) in enumerate(titled, start=1):
        rows = [_job_status(job, store) for job in jobs]
        counts = {word: sum(row[0] == word for row in rows) for word in dict.fromkeys(row[0] for row in rows)}
        summary = ", ".join(f"{n} {word}" for word, n in counts.items())
        lines.append(f"phase {number}/{len(titled)} ({title}): {len(jobs)} jobs" + (f": {summary}" if jobs else ""))
        for (word, job_run, detail), job in zip(rows, jobs, strict=True):
            where = f"  {job_run.info.run_id}  {_duration(job_run)}" if job_run else ""
            lines.append(f"  {word:9} {job.name}{where}" + (f" ({detail})" if detail else ""))
    return "\n".join(lines)


def _pipeline_run(client: MlflowClient, run_id: str | None) -> Run:
    if run_id:
        parent = client.get_run(run_id)
        if parent.data.tags.get("stage") != STAGE:
            raise SlateRLError(f"run {run_id} is not a pipeline run (its stage: {parent.data.tags.get('stage')})")
        return parent
    experiments = active_experiment_ids(client)
    runs = (
        client.search_runs(
            experiments, f"tags.stage = '{STAGE}'", order_by=["attributes.start_time DESC"], max_results=1
        )
        if experiments
        else []
    )
    if not runs:
        raise SlateRLError(
            f"no pipeline run in the tracking store {client.tracking_uri}; start one with `slate-rl pipeline ...` "
            "(or point MLFLOW_TRACKING_URI at the store that holds it)"
        )
    return runs[0]


def _job_status(job: Job, store: Store) -> tuple[str, Run | None, str]:
    """A job's state word, its newest run (None when it has none yet) and a detail."""
    if job.state == "finished":
        return "finished", store.finished(job.stage, job.keys), ""
    runs = store.runs(job.stage, job.keys)
    if not runs:
        return "waiting", None, "" if job.keys else job.note or "after its dataset"
    latest = runs[0]
    progress = _progress(latest, live=job.state == "running")
    next_time = "resumes from its checkpoint" if job.state == "resume" else "starts a new run"
    if job.state == "running":
        return "running", latest, progress + where_running(latest, run_alive(latest))
    if latest.info.status == "RUNNING":
        age = heartbeat_age(latest.data.tags)
        lost = f"no heartbeat for {age:.0f} s" if age is not None else "its process is gone"
        return "lost", latest, f"{progress}{lost}; the next pipeline {next_time}"
    return latest.info.status.lower(), latest, f"{progress}the next pipeline {next_time}"


def _progress(run: Run, live: bool) -> str:
    """How far a training run got, as 'episode 42,000 of 100,000; ' (when `live`, with the time left at the median
    pace of its last logging windows: ', about 1 h 5 min left'), '3 of 15 epochs done; ' or 'step 12,000, best
    held-out BPR loss 0.4210; ' ('' for a stage or run that has not said)."""
    metrics, params, stage = run.data.metrics, run.data.params, run.data.tags.get("stage")
    if stage == "train_online" and "time/episodes" in metrics and "episodes" in params:
        # time/episodes counts the episodes of one logging window; the step it was logged at is the episode reached
        history = MlflowClient().get_metric_history(run.info.run_id, "time/episodes")
        done, total = float(max(metric.step for metric in history)), float(params["episodes"])
        # the median pace of the last windows: one that was paused or stopped would say hours too many on its own
        paces = sorted(MlflowClient().get_metric_history(run.info.run_id, "time/episodes_per_s"), key=lambda m: m.step)
        rate = statistics.median(m.value for m in paces[-RECENT_WINDOWS:]) if live and paces else 0.0
        left = f", about {_seconds_text((total - done) / rate)} left" if rate > 0 else ""
        return f"episode {done:,.0f} of {total:,.0f}{left}; "
    if stage == "pretrain_gems" and "epochs" in params:
        ends = sorted(metric.timestamp for metric in MlflowClient().get_metric_history(run.info.run_id, "val/loss"))
        total = int(params["epochs"])
        # the median epoch (the first: since the run started): an epoch during which the run was stopped and resumed
        # or paused lasts far longer than the others, and would say hours too many from the last epoch alone
        starts = [run.info.start_time, *ends[:-1]]
        pace = statistics.median((end - start) / 1000 for start, end in zip(starts, ends, strict=True)) if ends else 0
        left = f", about {_seconds_text(pace * (total - len(ends)))} left" if live and pace > 0 else ""
        return f"{len(ends)} of {total} epochs done{left}; "
    if stage == "train_mf":  # early stopping: no total to count towards, the step and the best held-out loss
        history = MlflowClient().get_metric_history(run.info.run_id, "val/bpr_loss")
        if history:
            step, best = max(metric.step for metric in history), min(metric.value for metric in history)
            return f"step {step:,}, best held-out BPR loss {best:.4f}; "
    return ""


def _duration(run: Run) -> str:
    """How long a run ran (so far, when it still runs)."""
    end = run.info.end_time if run.info.status != "RUNNING" and run.info.end_time else time.time() * 1000
    return _seconds_text(max(0.0, (end - run.info.start_time) / 1000))


def _seconds_text(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds // 60:.0f} min {seconds % 60:.0f} s"
    return f"{seconds // 3600:.0f} h {seconds % 3600 // 60:.0f} min"
