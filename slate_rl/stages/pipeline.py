"""Stage `pipeline`: the whole grid (datasets, MF and GeMS per environment and seed, every training run) as child
runs of one parent run, on a pool of worker processes, skipping what already finished; then `compare`.

Each job is a `slate-rl <stage> ... --parent-run <id>` process of its own, so a job that fails or is killed takes
nothing else down: the others go on, the failure is reported with the end of its log, and running the pipeline
again finishes only what is missing (finished runs are found by their lineage keys). Jobs run in phases
(datasets, then MF and GeMS, then training) so that two jobs never produce the same upstream output at once.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from mlflow.tracking import MlflowClient

from slate_rl import config
from slate_rl.errors import SlateRLError
from slate_rl.stage_configs import (METHOD_IDS, GenerateDatasetConfig, PretrainGemsConfig, TrainMFConfig,
                                    TrainOnlineConfig)
from slate_rl.stages import compare, generate_dataset, on_dataset, pretrain_gems, train_mf, train_online
from slate_rl.tracking.lineage import find_finished_run
from slate_rl.tracking.runs import StageRun, stage_run

STAGE = "pipeline"
PAPER_SEEDS = (58407201, 496912423, 2465781, 300029, 215567, 23437561, 309081907, 548260111, 51941177, 212407167)
ORACLE_SEED = PAPER_SEEDS[0]  # the short-term oracle is deterministic given the user stream: one seed
JOB_TAG = "pipeline_job"
log = logging.getLogger("slate_rl")


@dataclasses.dataclass
class PipelineConfig:
    envs: list[str]
    methods: list[str]
    seeds: list[int]
    preset: str = "paper"
    workers: int = 1
    devices: list[str] = dataclasses.field(default_factory=list)

    @classmethod
    def resolve(cls, envs: str, methods: str, seeds: str, **values: Any) -> "PipelineConfig":
        env_list = config.resolve_env_list(envs)
        method_list = list(METHOD_IDS) if methods.strip() in ("", "all") else compare._split(methods)
        unknown = [m for m in method_list if m not in METHOD_IDS]
        if unknown:
            raise SlateRLError(f"unknown method(s) {', '.join(unknown)}; choose from: {', '.join(METHOD_IDS)}")
        cfg = cls(env_list, method_list, parse_seeds(seeds), **values)
        if cfg.preset not in config.PRESETS:
            raise SlateRLError(f"unknown preset {cfg.preset!r}; choose one of: {', '.join(config.PRESETS)}")
        if int(cfg.workers) < 1:
            raise SlateRLError(f"workers must be >= 1 (got {cfg.workers})")
        return cfg


def parse_seeds(text: str) -> list[int]:
    """'3' -> the paper's first three seeds; '1,2,3' -> those seeds."""
    text = str(text).strip()
    try:
        if "," not in text:
            count = int(text)
            if not 1 <= count <= len(PAPER_SEEDS):
                raise SlateRLError(f"seeds must be a count in [1, {len(PAPER_SEEDS)}] or a comma-separated list "
                                   f"(got {text})")
            return list(PAPER_SEEDS[:count])
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise SlateRLError(f"seeds must be a count or a comma-separated list of integers (got {text!r})") from exc


@dataclasses.dataclass
class Job:
    """One stage run of the grid: its command-line arguments, and its lineage keys (current, then legacy) to skip it
    when done."""

    stage: str
    name: str
    args: list[str]
    keys: tuple[str, ...]

    def done(self) -> bool:
        return bool(self.keys) and find_finished_run(self.stage, self.keys) is not None


def plan(cfg: PipelineConfig) -> list[list[Job]]:
    """The jobs of the grid in dependency phases: datasets; MF and GeMS; training runs."""
    datasets, upstream, training = [], [], []
    needs = {m: train_online.method_info(m).needs for m in cfg.methods}
    for env in cfg.envs:
        data_cfg = GenerateDatasetConfig.resolve(env, cfg.preset)
        data_keys = generate_dataset.lookup_keys(data_cfg)
        if any(needs.values()):  # GeMS and MF learn from the logged dataset
            datasets.append(Job(generate_dataset.STAGE, f"dataset/{env}", ["generate-dataset", "--env", env,
                                                                             "--preset", cfg.preset], data_keys))
        data_run = find_finished_run(generate_dataset.STAGE, data_keys)
        if "mf_table" in needs.values():
            upstream.append(_upstream_job(train_mf.STAGE, TrainMFConfig.resolve(env, cfg.preset), data_run,
                                          f"mf/{env}", ["train-mf", "--env", env, "--preset", cfg.preset]))
        for seed in cfg.seeds if "gems_decoder" in needs.values() else []:
            gems_cfg = PretrainGemsConfig.resolve(env, cfg.preset, seed=seed)
            upstream.append(_upstream_job(pretrain_gems.STAGE, gems_cfg, data_run, f"gems/{env}/seed{seed}",
                                          ["pretrain-gems", "--env", env, "--preset", cfg.preset, "--seed", str(seed)]))
        for method in cfg.methods:
            for seed in [ORACLE_SEED] if method == "short_term_oracle" else cfg.seeds:
                run_cfg = TrainOnlineConfig.resolve(env, cfg.preset, method=method, seed=seed)
                training.append(Job(train_online.STAGE, f"{method}/{env}/seed{seed}",
                                    ["train-online", "--env", env, "--preset", cfg.preset, "--method", method,
                                     "--seed", str(seed)],
                                    train_online.lookup_keys(run_cfg)))
    return [datasets, upstream, training]


def _upstream_job(stage: str, stage_cfg: Any, data_run: Optional[Any], name: str, args: list[str]) -> Job:
    """An MF or GeMS job; its key is known only once its dataset exists (until then it is never 'done')."""
    keys = on_dataset.lookup_keys(stage, stage_cfg, data_run.info.run_id) if data_run else ()
    return Job(stage, name, args, keys)


def run(cfg: PipelineConfig, experiment_name: Optional[str] = None, out: str = "reports/pipeline") -> str:
    """Run the missing jobs of the grid, then `compare`; returns the parent run id."""
    with stage_run(STAGE, run_name=f"{STAGE}/{cfg.preset}", experiment_name=experiment_name,
                   tags={"preset": cfg.preset}) as mlrun:
        mlrun.log_params({"envs": ",".join(cfg.envs), "methods": ",".join(cfg.methods),
                          "seeds": ",".join(map(str, cfg.seeds)), "preset": cfg.preset, "workers": cfg.workers,
                          "devices": ",".join(cfg.devices)})
        failures: list[str] = []
        for phase in range(3):
            jobs = plan(cfg)[phase]  # re-planned: later phases know the runs earlier phases produced
            todo = [job for job in jobs if not job.done()]
            log.info("%s: phase %d/3: %d jobs, %d already finished, %d to run", STAGE, phase + 1, len(jobs),
                     len(jobs) - len(todo), len(todo))
            failures += _run_jobs(todo, cfg, mlrun)
            if phase < 2 and failures:
                raise SlateRLError(f"{len(failures)} upstream job(s) failed: {', '.join(failures)}; fix them and run "
                                   "the pipeline again (finished jobs are skipped)")
        mlrun.log_metrics({"failed_jobs": len(failures)})
        report = compare.CompareConfig.resolve(",".join(cfg.envs), ",".join(cfg.methods), preset=cfg.preset, out=out)
        try:
            compare.write_report([compare.to_result(r, with_curve=True) for r in compare.select_runs(report)],
                                 report, _folder(out))
            mlrun.log_artifacts(out, "report")
        except SlateRLError as exc:
            log.error("%s: no report: %s", STAGE, exc)
        if failures:
            raise SlateRLError(f"{len(failures)} job(s) failed: {', '.join(failures)}; run the pipeline again to "
                               "finish them (finished jobs are skipped)")
        log.info("%s: all jobs finished; report in %s", STAGE, out)
        return mlrun.run_id


def _folder(path: str) -> Path:
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _run_jobs(jobs: list[Job], cfg: PipelineConfig, parent: StageRun) -> list[str]:
    """Run `jobs` as processes, at most `cfg.workers` at once; returns the names of those that failed."""
    pending, running, failures = list(jobs), {}, []
    threads = max(1, (os.cpu_count() or 1) // cfg.workers)
    durations: dict[str, list[float]] = {}
    total, finished = len(jobs), 0
    with tempfile.TemporaryDirectory(prefix="slate-rl-pipeline-") as logs:
        while pending or running:
            free = [slot for slot in range(cfg.workers) if slot not in running]
            while pending and free:
                slot, job = free.pop(0), pending.pop(0)
                running[slot] = _start(job, slot, cfg, parent, Path(logs), threads)
            time.sleep(0.5)
            for slot, (job, process, log_file, started) in list(running.items()):
                if process.poll() is None:
                    continue
                del running[slot]
                finished += 1
                seconds = time.monotonic() - started
                durations.setdefault(job.stage, []).append(seconds)
                left = len(pending) + len(running)
                eta = _eta(pending, running, durations, cfg.workers)
                if process.returncode == 0:
                    log.info("%s: [%d/%d] %s finished in %.0f s; %d left, ETA %s", STAGE, finished, total, job.name,
                             seconds, left, eta)
                else:
                    failures.append(job.name)
                    tail = Path(log_file).read_text(errors="replace").strip().splitlines()[-15:]
                    log.error("%s: [%d/%d] %s FAILED (exit %s) after %.0f s; %d left, ETA %s; end of its log:\n  %s",
                              STAGE, finished, total, job.name, process.returncode, seconds, left, eta,
                              "\n  ".join(tail))
                    _mark_killed(parent, job)
    return failures


def _start(job: Job, slot: int, cfg: PipelineConfig, parent: StageRun, logs: Path, threads: int):
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    env.pop("MLFLOW_RUN_ID", None)
    if cfg.devices:
        env["CUDA_VISIBLE_DEVICES"] = cfg.devices[slot % len(cfg.devices)]
    log_file = logs / (job.name.replace("/", "_") + ".log")
    command = [sys.executable, "-m", "slate_rl.cli", *job.args, "--parent-run", parent.run_id]
    with open(log_file, "w") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env={**env, "SLATE_RL_JOB": job.name})
    log.info("%s: started %s", STAGE, job.name)
    return job, process, log_file, time.monotonic()


def _eta(pending: list[Job], running: dict, durations: dict[str, list[float]], workers: int) -> str:
    """Remaining work / workers, from the mean duration of finished jobs of each stage."""
    known = [d for values in durations.values() for d in values]
    mean = lambda stage: (sum(durations[stage]) / len(durations[stage]) if stage in durations  # noqa: E731
                          else sum(known) / len(known))
    seconds = sum(mean(job.stage) for job in pending) + sum(mean(job.stage) / 2 for job, *_ in running.values())
    minutes = seconds / max(workers, 1) / 60
    return f"{minutes:.0f} min" if minutes >= 1 else "< 1 min"


def _mark_killed(parent: StageRun, job: Job) -> None:
    """A job process that died without ending its run leaves it RUNNING; mark it KILLED."""
    client = MlflowClient()
    runs = client.search_runs([client.get_run(parent.run_id).info.experiment_id],
                              f"tags.`mlflow.parentRunId` = '{parent.run_id}' and tags.{JOB_TAG} = '{job.name}' "
                              "and attributes.status = 'RUNNING'")
    for r in runs:
        client.set_terminated(r.info.run_id, "KILLED")
