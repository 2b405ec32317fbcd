"""Stage `pipeline`: the whole grid (datasets, MF and GeMS per environment and seed, every training run) as child
runs of one parent run, on a pool of worker processes, skipping what already finished; then `compare`.

Each job is a `slate-rl <stage> ... --parent-run <id>` process of its own, so a job that fails or is killed takes
nothing else down: the others go on, the failure is reported with the end of its log, and running the pipeline
again finishes only what is missing (finished runs are found by their lineage keys). A job whose run did not finish
because its process died (killed by a signal, or RUNNING with no live process on this machine) is resumed from its
last checkpoint in the same run when its stage can resume. Jobs run in phases (datasets, then MF and GeMS, then
training) so that two jobs never produce the same upstream output at once.

Variants: `env_params` and `overrides` map a name to a list of values; every combination of values is one variant
of the grid, with its own jobs (a sweep).

Policy selection (`select_policies`, a fraction in (0, 1); 0 = off): after training, per environment, the finished
run of `select_method` with the best test return (over all seeds and variants of that environment) chooses the
collection policies as `slate-rl registry select --medium <fraction>` does.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from mlflow.entities import Run, ViewType
from mlflow.tracking import MlflowClient

from slate_rl import config
from slate_rl.errors import SlateRLError
from slate_rl.methods import ONLINE_FAMILIES, Need, get_method, method_ids
from slate_rl.seeds import PAPER_SEEDS, describe, parse_seeds
from slate_rl.stage_configs import (
    GenerateDatasetConfig,
    PretrainGemsConfig,
    TrainMFConfig,
    TrainOnlineConfig,
    agent_defaults,
)
from slate_rl.stages import compare, generate_dataset, on_dataset, pretrain_gems, registry, train_mf, train_online
from slate_rl.tracking.lineage import LINEAGE_TAG
from slate_rl.tracking.runs import HOST_TAG, PID_TAG, StageRun, format_param, has_resume_state, stage_run

STAGE = "pipeline"
ORACLE_SEED = PAPER_SEEDS[0]  # the short-term oracle is deterministic given the user stream: one seed
JOB_TAG = "pipeline_job"
SIGNAL_TAG = "exit_signal"  # set on a job's runs when its process died by a signal (so the run can be resumed)
GEMS_SETTINGS = ("latent_dim", "lambda_kl", "lambda_click")  # train_online options that also shape its GeMS
SET_BY_PIPELINE = ("env", "preset", "method", "seed", "agent", "item_embeddings", "env_params", "dataset", "gems", "mf")
PHASES = ("datasets", "MF and GeMS", "training")
# Stages whose unfinished runs continue with `--resume <run id>`, and how to tell that a run saved a state to do so.
RESUMABLE = (train_online.STAGE, pretrain_gems.STAGE)  # stages whose killed runs `--resume` continues
log = logging.getLogger("slate_rl")


@dataclasses.dataclass
class PipelineConfig:
    envs: list[str]
    methods: list[str]
    seeds: list[int]
    preset: str = "paper"
    workers: int = 1
    devices: list[str] = dataclasses.field(default_factory=list)
    env_params: dict[str, list[Any]] = dataclasses.field(default_factory=dict)  # simulator overrides (sweeps)
    item_embeddings: str = ""
    overrides: dict[str, list[Any]] = dataclasses.field(default_factory=dict)  # parameters of the training runs
    given: dict[str, str] = dataclasses.field(default_factory=dict)  # the options as given (logged as params)
    select_policies: float = 0.0  # after training, choose collection policies by this medium fraction (0: no)
    select_method: str = ""  # ... from the best run of this method (default: the grid's first online method)

    @classmethod
    def resolve(
        cls,
        envs: str,
        methods: str,
        seeds: str,
        env_param: tuple[str, ...] = (),
        assignments: tuple[str, ...] = (),
        **values: Any,
    ) -> PipelineConfig:
        env_list = config.resolve_env_list(envs)
        method_list = list(method_ids(ONLINE_FAMILIES)) if methods.strip() in ("", "all") else compare._split(methods)
        for method in method_list:
            get_method(method, ONLINE_FAMILIES)
        given = {
            "envs": envs,
            "methods": methods,
            "seeds": seeds,
            "env_param": ",".join(env_param),
            "set": ",".join(assignments),
        }
        cfg = cls(
            env_list,
            method_list,
            parse_seeds(seeds),
            env_params=parse_sweep(env_param, "--env-param"),
            overrides=parse_sweep(assignments, "--set"),
            given=given,
            **values,
        )
        if cfg.preset not in config.PRESETS:
            raise SlateRLError(f"unknown preset {cfg.preset!r}; choose one of: {', '.join(config.PRESETS)}")
        if int(cfg.workers) < 1:
            raise SlateRLError(f"workers must be >= 1 (got {cfg.workers})")
        _check_overrides(cfg.overrides, cfg.methods)
        if cfg.select_policies:
            _check_selection(cfg)
        return cfg

    def params(self) -> dict[str, Any]:
        """The run's params: the options as given (as `mlflow run` logs them) and the seeds they resolve to."""
        return {
            **self.given,
            "seeds_resolved": describe(self.seeds),
            "preset": self.preset,
            "workers": self.workers,
            "devices": ",".join(self.devices),
            "item_embeddings": self.item_embeddings,
            "select_policies": self.select_policies,
            "select_method": self.select_method,
        }


def _check_selection(cfg: PipelineConfig) -> None:
    """A fraction in (0, 1) and a method of the grid that trains online (the first such one when none is named)."""
    registry.check_fraction(float(cfg.select_policies))
    learners = [method for method in cfg.methods if get_method(method).family == "online"]
    if not cfg.select_method:
        if not learners:
            raise SlateRLError(
                f"--select-policies chooses from a trained policy, but the grid's methods ({', '.join(cfg.methods)}) "
                "train none; add an online method such as sac_topk_ideal"
            )
        cfg.select_method = learners[0]
    if cfg.select_method not in learners:
        raise SlateRLError(
            f"--select-method {cfg.select_method}: not a method of this grid that trains online; choose one of: "
            f"{', '.join(learners) or 'none (add an online method)'}"
        )


def parse_sweep(items: tuple[str, ...] | list[str], what: str) -> dict[str, list[Any]]:
    """'KEY=VALUE' items -> {KEY: [VALUE]}; 'KEY=V1,V2' sweeps the values (a YAML flow list: '[64, 64]' stays one
    value); one item may hold several assignments, 'K1=V1,K2=V2' (as MLflow's `-P` passes them)."""
    result: dict[str, list[Any]] = {}
    parts = [part for item in items for part in re.split(r",(?=\s*[A-Za-z_]\w*\s*=)", item) if part.strip()]
    for part in parts:
        key, sep, text = (s.strip() for s in part.partition("="))
        if not sep or not key or not text:
            raise SlateRLError(f"{what} {part!r} must look like KEY=VALUE or KEY=VALUE1,VALUE2 (a sweep)")
        if key in result:
            raise SlateRLError(f"{what} gives {key} twice; give all its values at once, {key}=VALUE1,VALUE2")
        try:
            values = yaml.safe_load(f"[{text}]")
        except yaml.YAMLError as exc:
            raise SlateRLError(f"{what} {part!r}: {text!r} is not a value or a comma-separated list of values") from exc
        if len({json.dumps(v, sort_keys=True, default=str) for v in values}) != len(values):
            raise SlateRLError(f"{what} {part!r} names a value twice")
        result[key] = values
    return result


def _stage_fields() -> set[str]:
    return {f.name for f in dataclasses.fields(TrainOnlineConfig)} - set(SET_BY_PIPELINE)


def _check_overrides(overrides: dict[str, list[Any]], methods: list[str]) -> None:
    """Every --set name is a train_online option or a hyper-parameter of one of the methods."""
    hyper = {name for method in methods for name in agent_defaults(method)}
    for name in overrides:
        if name in SET_BY_PIPELINE:
            raise SlateRLError(
                f"--set {name}=... is not allowed: the pipeline sets {name} itself"
                + {"item_embeddings": "; use --item-embeddings", "env_params": "; use --env-param"}.get(name, "")
            )
        if name not in _stage_fields() | hyper:
            raise SlateRLError(
                f"--set {name}: not a train_online option nor a hyper-parameter of "
                f"{', '.join(methods)}; valid: {', '.join(sorted(_stage_fields() | hyper))}"
            )


def _combinations(values: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of one value per name ([{}] when there is no name)."""
    names = list(values)
    return [dict(zip(names, chosen, strict=True)) for chosen in itertools.product(*(values[n] for n in names))]


def _method_overrides(cfg: PipelineConfig, method: str) -> tuple[dict[str, list[Any]], dict[str, list[Any]]]:
    """The --set values that apply to `method`: (train_online options, agent hyper-parameters)."""
    needs_gems = Need.GEMS in get_method(method).needs
    hyper = agent_defaults(method)
    options = {
        k: v for k, v in cfg.overrides.items() if k in _stage_fields() and (needs_gems or k not in GEMS_SETTINGS)
    }
    agent = {k: v for k, v in cfg.overrides.items() if k in hyper and k not in options}
    return options, agent


@dataclasses.dataclass
class Job:
    """One stage run of the grid: its command-line arguments, its lineage keys (current, then legacy), and what the
    store holds of it: state 'finished', 'run' (a new run), 'resume' (continue `run_id`) or 'running' (`run_id` is
    live elsewhere)."""

    stage: str
    name: str
    args: list[str]
    keys: tuple[str, ...]
    state: str = "run"
    run_id: str = ""
    note: str = ""

    def command(self) -> list[str]:
        """The slate-rl arguments that do what the state asks (a resumed run keeps its configuration and parent)."""
        return [self.args[0], "--resume", self.run_id] if self.state == "resume" else self.args


class _Store:
    """The runs of the pipeline's stages in the tracking store, by lineage key (read once per plan)."""

    def __init__(self) -> None:
        client = MlflowClient()
        experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY)]
        self.by_key: dict[str, list[Run]] = {}
        stages = (generate_dataset.STAGE, train_mf.STAGE, pretrain_gems.STAGE, train_online.STAGE)
        for stage in stages if experiments else ():
            token = None
            while True:
                page = client.search_runs(
                    experiments,
                    f"tags.stage = '{stage}'",
                    max_results=1000,
                    order_by=["attributes.start_time DESC"],
                    page_token=token,
                )
                for run in page:
                    if LINEAGE_TAG in run.data.tags:
                        self.by_key.setdefault(f"{stage}:{run.data.tags[LINEAGE_TAG]}", []).append(run)
                token = page.token
                if not token:
                    break

    def runs(self, stage: str, keys: tuple[str, ...]) -> list[Run]:
        """The runs of any of `keys`, the current key's first, each key's newest first."""
        return [run for key in keys for run in self.by_key.get(f"{stage}:{key}", [])]

    def finished(self, stage: str, keys: tuple[str, ...]) -> Run | None:
        return next((r for r in self.runs(stage, keys) if r.info.status == "FINISHED"), None)

    def locate(self, job: Job) -> Job:
        """Set the job's state from the runs of its key: finished, resume, running, or run (a new run)."""
        runs = self.runs(job.stage, job.keys)
        done = self.finished(job.stage, job.keys)
        if done is not None:
            return dataclasses.replace(job, state="finished", run_id=done.info.run_id)
        if not runs:
            return job
        latest = runs[0]  # newest first
        status, tags, run_id = latest.info.status, latest.data.tags, latest.info.run_id
        alive = _alive(latest)
        if status == "RUNNING" and alive is not False:
            where = (
                f"pid {tags[PID_TAG]}"
                if alive
                else f"on host {tags.get(HOST_TAG, 'unknown')}, pid "
                f"{tags.get(PID_TAG, 'unknown')}; mark it KILLED if that process is gone"
            )
            return dataclasses.replace(job, state="running", run_id=run_id, note=f"RUNNING ({where})")
        died = status in ("RUNNING", "KILLED") or (status == "FAILED" and SIGNAL_TAG in tags)
        why = f"{status}" + (f" by {tags[SIGNAL_TAG]}" if SIGNAL_TAG in tags else "")
        if died and job.stage in RESUMABLE:
            if has_resume_state(run_id):
                return dataclasses.replace(job, state="resume", run_id=run_id, note=why)
            return dataclasses.replace(job, note=f"run {run_id} {why} before its first checkpoint")
        return dataclasses.replace(job, note=f"run {run_id} {why}")


def _alive(run: Run) -> bool | None:
    """Whether the process that runs `run` lives: None when it ran on another machine (or did not say where)."""
    tags = run.data.tags
    if tags.get(HOST_TAG) != socket.gethostname() or not tags.get(PID_TAG, "").isdigit():
        return None
    try:
        os.kill(int(tags[PID_TAG]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def plan(cfg: PipelineConfig) -> list[list[Job]]:
    """The jobs of the grid in dependency phases (datasets; MF and GeMS; training runs), each with its state."""
    store = _Store()
    phases: list[dict[str, Job]] = [{}, {}, {}]

    needs = {need for method in cfg.methods for need in get_method(method).needs}

    def add(phase: int, job: Job) -> None:
        phases[phase].setdefault(f"{job.stage}:{job.keys[0] if job.keys else job.name}", store.locate(job))

    def label(values: dict[str, Any]) -> str:  # the swept values of a job, in its name
        swept = {k: v for k, v in values.items() if len({**cfg.env_params, **cfg.overrides}[k]) > 1}
        return f" [{', '.join(f'{k}={format_param(v)}' for k, v in swept.items())}]" if swept else ""

    for env, env_params in itertools.product(cfg.envs, _combinations(cfg.env_params)):
        variant = label(env_params)
        data_cfg = GenerateDatasetConfig.resolve(env, cfg.preset, **_env_values(cfg, GenerateDatasetConfig, env_params))
        data_keys = generate_dataset.lookup_keys(data_cfg)
        data_run = store.finished(generate_dataset.STAGE, data_keys)
        if needs:  # GeMS and MF learn from the logged dataset
            add(
                0,
                Job(
                    generate_dataset.STAGE,
                    f"dataset/{env}{variant}",
                    [
                        "generate-dataset",
                        "--env",
                        env,
                        "--preset",
                        cfg.preset,
                        *_env_args(cfg, GenerateDatasetConfig, env_params),
                    ],
                    data_keys,
                ),
            )
        if Need.MF in needs:
            mf_cfg = TrainMFConfig.resolve(env, cfg.preset, **_env_values(cfg, TrainMFConfig, env_params))
            add(
                1,
                _upstream_job(
                    train_mf.STAGE,
                    mf_cfg,
                    data_run,
                    f"mf/{env}{variant}",
                    ["train-mf", "--env", env, "--preset", cfg.preset, *_env_args(cfg, TrainMFConfig, env_params)],
                ),
            )
        for method in cfg.methods:
            options, agent = _method_overrides(cfg, method)
            for seed in [ORACLE_SEED] if method == "short_term_oracle" else cfg.seeds:
                for chosen, hyper in itertools.product(_combinations(options), _combinations(agent)):
                    name = f"{method}/{env}/seed{seed}{label({**env_params, **chosen, **hyper})}"
                    if Need.GEMS in get_method(method).needs:
                        gems = {k: v for k, v in chosen.items() if k in GEMS_SETTINGS}
                        gems_cfg = PretrainGemsConfig.resolve(
                            env, cfg.preset, seed=seed, **gems, **_env_values(cfg, PretrainGemsConfig, env_params)
                        )
                        add(
                            1,
                            _upstream_job(
                                pretrain_gems.STAGE,
                                gems_cfg,
                                data_run,
                                f"gems/{env}/seed{seed}{label({**env_params, **gems})}",
                                [
                                    "pretrain-gems",
                                    "--env",
                                    env,
                                    "--preset",
                                    cfg.preset,
                                    "--seed",
                                    str(seed),
                                    *_option_args(gems),
                                    *_env_args(cfg, PretrainGemsConfig, env_params),
                                ],
                            ),
                        )
                    run_cfg = TrainOnlineConfig.resolve(
                        env,
                        cfg.preset,
                        method=method,
                        seed=seed,
                        agent=hyper or None,
                        **chosen,
                        **_env_values(cfg, TrainOnlineConfig, env_params),
                    )
                    add(
                        2,
                        Job(
                            train_online.STAGE,
                            name,
                            [
                                "train-online",
                                "--env",
                                env,
                                "--preset",
                                cfg.preset,
                                "--method",
                                method,
                                "--seed",
                                str(seed),
                                *_option_args(chosen),
                                *[a for k, v in hyper.items() for a in ("--set", f"{k}={json.dumps(v)}")],
                                *_env_args(cfg, TrainOnlineConfig, env_params),
                            ],
                            train_online.lookup_keys(run_cfg),
                        ),
                    )
    return [list(jobs.values()) for jobs in phases]


def _option_args(values: dict[str, Any]) -> list[str]:
    return [a for k, v in values.items() for a in (f"--{k.replace('_', '-')}", format_param(v))]


def _env_values(cfg: PipelineConfig, config_class: type, env_params: dict[str, Any]) -> dict[str, Any]:
    """The item table and the simulator overrides: for the stages that play the simulator, and for those that
    learn from its logged data when their config names them (to find that data)."""
    fields = {f.name for f in dataclasses.fields(config_class)}
    plays = config_class in (GenerateDatasetConfig, TrainOnlineConfig)
    values = {"item_embeddings": cfg.item_embeddings or None, "env_params": env_params or None}
    return {k: v for k, v in values.items() if v is not None and (plays or k in fields)}


def _env_args(cfg: PipelineConfig, config_class: type, env_params: dict[str, Any]) -> list[str]:
    """--item-embeddings and --env-param options, for the stages that take them (their configs have the field)."""
    values = _env_values(cfg, config_class, env_params)
    args = ["--item-embeddings", values["item_embeddings"]] if "item_embeddings" in values else []
    return args + [a for k, v in values.get("env_params", {}).items() for a in ("--env-param", f"{k}={json.dumps(v)}")]


def _upstream_job(stage: str, stage_cfg: Any, data_run: Run | None, name: str, args: list[str]) -> Job:
    """An MF or GeMS job; its keys are known only once its dataset exists (until then it is to run)."""
    keys = on_dataset.lookup_keys(stage, stage_cfg, data_run.info.run_id) if data_run else ()
    return Job(stage, name, args, keys)


def describe_plan(cfg: PipelineConfig) -> str:
    """The plan as text: the seeds, then every job of every phase with its state (what `--dry-run` prints)."""
    lines = [f"seeds: {cfg.given.get('seeds', describe(cfg.seeds))} -> {describe(cfg.seeds)}"]
    words = {"finished": "finished", "run": "to run", "resume": "to resume", "running": "running"}
    for number, (title, jobs) in enumerate(zip(PHASES, plan(cfg), strict=True), start=1):
        lines.append(f"phase {number}/{len(PHASES)} ({title}): {_counts(jobs)}")
        for job in jobs:
            detail = job.run_id if job.state in ("finished", "resume", "running") else ""
            note = f" ({job.note})" if job.note else ""
            if job.state == "run" and not job.keys:
                note = " (after its dataset)"
            lines.append(f"  {words[job.state]:10} {job.name}" + (f"  {detail}" if detail else "") + note)
    if cfg.select_policies:
        lines.append(
            f"then: per environment, registry select --medium {cfg.select_policies:g} on the {cfg.select_method} run "
            "with the best test return"
        )
    return "\n".join(lines)


def _counts(jobs: list[Job]) -> str:
    count = lambda state: sum(job.state == state for job in jobs)  # noqa: E731
    return (
        f"{len(jobs)} jobs, {count('finished')} already finished, {count('run')} to run, {count('resume')} to "
        f"resume" + (f", {count('running')} running elsewhere" if count("running") else "")
    )


def run(cfg: PipelineConfig, experiment_name: str | None = None, out: str = "reports/pipeline") -> str:
    """Run the missing jobs of the grid (resuming those that died), then `compare`; returns the parent run id."""
    with stage_run(
        STAGE, run_name=f"{STAGE}/{cfg.preset}", experiment_name=experiment_name, tags={"preset": cfg.preset}
    ) as mlrun:
        mlrun.log_params(cfg.params())
        log.info("%s: seeds %s -> %s", STAGE, cfg.given.get("seeds", ""), describe(cfg.seeds))
        failures: list[str] = []
        elsewhere: list[str] = []
        for phase in range(len(PHASES)):
            jobs = plan(cfg)[phase]  # re-planned: later phases know the runs earlier phases produced
            log.info("%s: phase %d/%d: %s", STAGE, phase + 1, len(PHASES), _counts(jobs))
            for job in jobs:
                if job.state == "running":
                    log.warning(
                        "%s: %s is running in another process (run %s, %s); not started again",
                        STAGE,
                        job.name,
                        job.run_id,
                        job.note,
                    )
                    elsewhere.append(job.name)
                elif job.state == "resume":
                    log.info(
                        "%s: %s: resuming run %s (%s) from its last checkpoint", STAGE, job.name, job.run_id, job.note
                    )
            failures += _run_jobs([job for job in jobs if job.state in ("run", "resume")], cfg, mlrun)
            if phase < len(PHASES) - 1 and (failures or elsewhere):
                raise SlateRLError(
                    f"{len(failures) + len(elsewhere)} upstream job(s) failed or still running: "
                    f"{', '.join(failures + elsewhere)}; run the pipeline again once they are fixed "
                    "or done (finished jobs are skipped)"
                )
        if cfg.select_policies:
            failures += select_policies(cfg, plan(cfg)[-1])
        mlrun.log_metrics({"failed_jobs": len(failures)})
        report = compare.CompareConfig.resolve(",".join(cfg.envs), ",".join(cfg.methods), preset=cfg.preset, out=out)
        try:
            compare.write_report(compare.to_results(compare.select_runs(report), with_curve=True), report, _folder(out))
            mlrun.log_artifacts(out, "report")
        except SlateRLError as exc:
            log.error("%s: no report: %s", STAGE, exc)
        if failures or elsewhere:
            raise SlateRLError(
                f"{len(failures)} job(s) failed"
                + (f": {', '.join(failures)}" if failures else "")
                + (f"; {len(elsewhere)} still running elsewhere: {', '.join(elsewhere)}" if elsewhere else "")
                + "; run the pipeline again to finish them (finished jobs are skipped, killed ones "
                "resume)"
            )
        log.info("%s: all jobs finished; report in %s", STAGE, out)
        return mlrun.run_id


def select_policies(cfg: PipelineConfig, jobs: list[Job]) -> list[str]:
    """Per environment, `registry select` on the finished run of `cfg.select_method` with the best test return among
    `jobs`; returns 'select/<env>' for each environment where that failed (the reason is logged)."""
    client = MlflowClient()
    runs = [client.get_run(job.run_id) for job in jobs if job.state == "finished"]
    failures = []
    for env in cfg.envs:
        mine = [
            r
            for r in runs
            if r.data.tags.get("env") == env
            and r.data.tags.get("method") == cfg.select_method
            and "test_return" in r.data.metrics
        ]
        try:
            if not mine:
                raise SlateRLError(f"no finished {cfg.select_method} run on {env} to choose policies from")
            best = max(mine, key=lambda r: r.data.metrics["test_return"])
            selection = registry.select_policies(best.info.run_id, float(cfg.select_policies))
        except SlateRLError as exc:
            log.error("%s: select/%s: %s", STAGE, env, exc)
            failures.append(f"select/{env}")
            continue
        log.info("%s: policies chosen by rule for %s\n%s", STAGE, env, selection.describe())
    return failures


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
                    log.info(
                        "%s: [%d/%d] %s finished in %.0f s; %d left, ETA %s",
                        STAGE,
                        finished,
                        total,
                        job.name,
                        seconds,
                        left,
                        eta,
                    )
                    continue
                failures.append(job.name)
                tail = Path(log_file).read_text(errors="replace").strip().splitlines()[-15:]
                why = (
                    f"killed by {signal.Signals(-process.returncode).name}"
                    if process.returncode < 0
                    else f"exit {process.returncode}"
                )
                log.error(
                    "%s: [%d/%d] %s FAILED (%s) after %.0f s; %d left, ETA %s; end of its log:\n  %s",
                    STAGE,
                    finished,
                    total,
                    job.name,
                    why,
                    seconds,
                    left,
                    eta,
                    "\n  ".join(tail),
                )
                _record_death(job, process)
    return failures


def _start(job: Job, slot: int, cfg: PipelineConfig, parent: StageRun, logs: Path, threads: int):
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    env.pop("MLFLOW_RUN_ID", None)
    if cfg.devices:
        env["CUDA_VISIBLE_DEVICES"] = cfg.devices[slot % len(cfg.devices)]
    log_file = logs / (job.name.replace("/", "_").replace(" ", "") + ".log")
    command = [sys.executable, "-m", "slate_rl.cli", *job.command()]
    if job.state != "resume":
        command += ["--parent-run", parent.run_id]
    with open(log_file, "w") as handle:
        process = subprocess.Popen(
            command, stdout=handle, stderr=subprocess.STDOUT, env={**env, "SLATE_RL_JOB": job.name}
        )
    log.info("%s: started %s%s", STAGE, job.name, f" (resuming run {job.run_id})" if job.state == "resume" else "")
    return job, process, log_file, time.monotonic()


def _eta(pending: list[Job], running: dict, durations: dict[str, list[float]], workers: int) -> str:
    """Remaining work / workers, from the mean duration of finished jobs of each stage."""
    known = [d for values in durations.values() for d in values]

    def mean(stage: str) -> float:
        values = durations.get(stage, known)
        return sum(values) / len(values)

    seconds = sum(mean(job.stage) for job in pending) + sum(mean(job.stage) / 2 for job, *_ in running.values())
    minutes = seconds / max(workers, 1) / 60
    return f"{minutes:.0f} min" if minutes >= 1 else "< 1 min"


def _record_death(job: Job, process: subprocess.Popen) -> None:
    """A job process that died without ending its runs leaves them RUNNING: mark them KILLED; when a signal killed
    it, say so on its runs (tag `exit_signal`), so that the next pipeline resumes them."""
    client = MlflowClient()
    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY)]
    runs = client.search_runs(
        experiments,
        f"tags.{JOB_TAG} = '{job.name}' and tags.{PID_TAG} = '{process.pid}' "
        f"and tags.{HOST_TAG} = '{socket.gethostname()}'",
    )
    for r in runs:
        if process.returncode < 0:
            client.set_tag(r.info.run_id, SIGNAL_TAG, signal.Signals(-process.returncode).name)
        if r.info.status == "RUNNING":
            client.set_terminated(r.info.run_id, "KILLED")
