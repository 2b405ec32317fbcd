"""Stage `pipeline`: the whole grid (datasets, MF and GeMS per environment and seed, every training run) as child
runs of one parent run, on a pool of worker processes (or as tasks of a Ray cluster, `--backend ray`), skipping
what already finished; then `compare`.

Each job is a `slate-rl <stage> ... --parent-run <id>` process of its own, so a job that fails or is killed takes
nothing else down: the others go on, the failure is reported with the end of its log, and running the pipeline
again finishes only what is missing (finished runs are found by their lineage keys). A job whose run did not finish
because its process died (killed by a signal, or RUNNING without a fresh heartbeat) is resumed from its
last checkpoint in the same run when its stage can resume. Jobs run in phases (datasets, then MF and GeMS, then
training) so that two jobs never produce the same upstream output at once; the training jobs of methods that need
no dataset, MF or GeMS do not wait for those phases: they run on the workers the phases leave free.

Seed groups (`group_seeds`, on by default): the seeds of a SAC method (`train_online.GROUPED_METHODS`) in one
environment and variant are one job, `train-online --seeds ...` (one GroupTrainer, a parent run with a child run
per seed). It is finished when every seed has a finished run of its lineage (however it was trained); otherwise it
trains its unfinished seeds as a group, or resumes the killed group that holds them (`--resume <its parent run>`).
A variant with `fused_update=true` keeps one job per seed: the fused update is a single-seed kernel.

Variants: `env_params` and `overrides` map a name to a list of values; every combination of values is one variant
of the grid, with its own jobs (a sweep).

Policy selection (`select_policies`, a fraction in (0, 1); 0 = off): after training, per environment, the finished
run of `select_method` with the best test return (over all seeds and variants of that environment) chooses the
collection policies as `slate-rl registry select --medium <fraction>` does.

The offline grid (`offline`, see `pipeline_offline`): then datasets collected from those policies, and offline
algorithms trained on them, in phases of their own.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

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
    reference_switches,
)
from slate_rl.stages import (
    collect,
    compare,
    generate_dataset,
    on_dataset,
    pipeline_offline,
    pretrain_gems,
    registry,
    train_mf,
    train_offline,
    train_online,
)
from slate_rl.stages.pipeline_backends import SIGNAL_TAG, Backend, LocalBackend
from slate_rl.stages.pipeline_scheduler import Scheduler
from slate_rl.tracking.lineage import LINEAGE_TAG
from slate_rl.tracking.runs import (
    HOST_TAG,
    PAUSED_TAG,
    PID_TAG,
    active_experiment_ids,
    format_param,
    has_resume_state,
    heartbeat_age,
    heartbeat_fresh,
    stage_run,
)

STAGE = "pipeline"
ORACLE_SEED = PAPER_SEEDS[0]  # the short-term oracle is deterministic given the user stream: one seed
GEMS_SETTINGS = ("latent_dim", "lambda_kl", "lambda_click")  # train_online options that also shape its GeMS
MF_SETTINGS = {"mf_reference_validation": "reference_validation"}  # train_online options that choose its MF, by field
SET_BY_PIPELINE = ("env", "preset", "method", "seed", "agent", "item_embeddings", "env_params", "dataset", "gems", "mf")
PHASES = ("datasets", "MF and GeMS", "training")
TRAINING = PHASES.index("training")
LOST_TAG = "lost"  # set on a run a dead process left RUNNING, when a later pipeline or Ray task takes its job over
BACKENDS = ("local", "ray")
# Stages whose unfinished runs continue with `--resume <run id>`, and how to tell that a run saved a state to do so.
RESUMABLE = (
    train_online.STAGE,
    pretrain_gems.STAGE,
    train_mf.STAGE,
    train_offline.STAGE,
)  # stages whose killed runs `--resume` continues
log = logging.getLogger("slate_rl")


@dataclasses.dataclass
class PipelineConfig:
    envs: list[str]
    methods: list[str]
    seeds: list[int]
    preset: str = "paper"
    workers: int = 1
    devices: list[str] = dataclasses.field(default_factory=list)
    backend: str = "local"  # where jobs run: a local process pool, or tasks of a Ray cluster
    address: str = ""  # the Ray cluster ('' or 'auto': the one this machine belongs to)
    cpus_per_job: float = 1.0  # Ray resources of each job
    gpus_per_job: float = 0.0
    env_params: dict[str, list[Any]] = dataclasses.field(default_factory=dict)  # simulator overrides (sweeps)
    item_embeddings: str = ""
    overrides: dict[str, list[Any]] = dataclasses.field(default_factory=dict)  # parameters of the training runs
    given: dict[str, str] = dataclasses.field(default_factory=dict)  # the options as given (logged as params)
    select_policies: float = 0.0  # after training, choose collection policies by this medium fraction (0: no)
    select_method: str = ""  # ... from the best run of this method (default: the grid's first online method)
    offline: pipeline_offline.OfflineGrid | None = None  # then collect datasets and train offline algorithms on them
    group_seeds: bool = True  # the seeds of a SAC method (GROUPED_METHODS) in one job, trained as one group

    @classmethod
    def resolve(
        cls,
        envs: str,
        methods: str,
        seeds: str,
        env_param: tuple[str, ...] = (),
        assignments: tuple[str, ...] = (),
        offline: dict[str, Any] | None = None,
        **values: Any,
    ) -> PipelineConfig:
        """The grid of these options, checked; `offline` holds the options of the offline grid (none: no grid)."""
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
        bad = [gpu for gpu in cfg.devices if not gpu.isdigit()]
        if bad:
            raise SlateRLError(f"--devices lists GPU numbers, e.g. 0,1,2,3 (got {', '.join(bad)})")
        _check_backend(cfg)
        _check_overrides(cfg.overrides, cfg.methods)
        if cfg.select_policies:
            _check_selection(cfg)
        cfg.offline = pipeline_offline.OfflineGrid.resolve(cfg, **(offline or {}))
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
            "backend": self.backend,
            "group_seeds": self.group_seeds,
            **(
                {"address": self.address, "cpus_per_job": self.cpus_per_job, "gpus_per_job": self.gpus_per_job}
                if self.backend == "ray"
                else {}
            ),
            **(self.offline.params() if self.offline else {}),
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


def _check_backend(cfg: PipelineConfig) -> None:
    """The options of one backend are refused with the other (they would be silently ignored)."""
    if cfg.backend not in BACKENDS:
        raise SlateRLError(f"unknown backend {cfg.backend!r}; choose one of: {', '.join(BACKENDS)}")
    if cfg.backend == "local":
        given = [
            option
            for option, value, default in (
                ("--address", cfg.address, ""),
                ("--cpus-per-job", cfg.cpus_per_job, 1.0),
                ("--gpus-per-job", cfg.gpus_per_job, 0.0),
            )
            if value != default
        ]
        if given:
            raise SlateRLError(
                f"{', '.join(given)}: only with --backend ray (the local pool takes --workers and --devices)"
            )
        return
    if cfg.workers != 1 or cfg.devices:
        raise SlateRLError(
            "--workers and --devices are for the local pool; on Ray the cluster's free resources decide how many "
            "jobs run at once and which GPU each gets: size a job with --cpus-per-job and --gpus-per-job"
        )
    if not cfg.cpus_per_job > 0 or cfg.gpus_per_job < 0:
        raise SlateRLError(
            f"--cpus-per-job must be above 0 and --gpus-per-job at least 0 (got {cfg.cpus_per_job}, {cfg.gpus_per_job})"
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
        if name in _stage_fields() | hyper:
            continue
        owners = [method for method in method_ids(ONLINE_FAMILIES) if name in reference_switches(method)]
        if owners:
            raise SlateRLError(
                f"--set {name}: a reference switch of {', '.join(owners)}, none of the grid's methods; their "
                "reference switches: "
                + "; ".join(f"{method}: {', '.join(reference_switches(method)) or 'none'}" for method in methods)
            )
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
    needs = get_method(method).needs
    hyper = agent_defaults(method)
    options = {
        k: v
        for k, v in cfg.overrides.items()
        if k in _stage_fields()
        and (Need.GEMS in needs or k not in GEMS_SETTINGS)
        and (Need.MF in needs or k not in MF_SETTINGS)
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
    members: dict[int, Job] = dataclasses.field(default_factory=dict)  # a seed group: each seed's job, by seed
    independent: bool = False  # a training job that needs no dataset, MF or GeMS: it may run while those do

    def command(self) -> list[str]:
        """The slate-rl arguments that do what the state asks (a resumed run keeps its configuration and parent; a
        seed group trains its unfinished seeds)."""
        if self.state == "resume":
            return [self.args[0], "--resume", self.run_id]
        if self.members:
            return [*self.args, "--seeds", seeds_option(self.unfinished())]
        return self.args

    def unfinished(self) -> list[int]:
        """The seeds of a seed group whose run has not finished."""
        return [seed for seed, member in self.members.items() if member.state != "finished"]

    def seed_jobs(self) -> list[Job]:
        """The jobs of each seed: a group's members, else the job itself."""
        return list(self.members.values()) or [self]


def seeds_option(seeds: list[int]) -> str:
    """`seeds` as --seeds takes them ('7,' for the single seed 7: '7' alone is a count)."""
    return describe(seeds) + ("," if len(seeds) == 1 else "")


class Store:
    """The runs of the pipeline's stages in the tracking store, by lineage key (read once per plan); with `job`,
    only that job's runs."""

    STAGES = (
        generate_dataset.STAGE,
        train_mf.STAGE,
        pretrain_gems.STAGE,
        train_online.STAGE,
        collect.STAGE,
        train_offline.STAGE,
    )

    def __init__(self, job: Job | None = None) -> None:
        self.client = MlflowClient()
        self.experiments = active_experiment_ids(self.client)
        self.by_key: dict[str, list[Run]] = {}
        if job is None:
            for stage in self.STAGES:
                self._read(f"tags.stage = '{stage}'")
        else:
            for key in job.keys:
                self._read(f"tags.stage = '{job.stage}' and tags.{LINEAGE_TAG} = '{key}'")

    def _read(self, filter_string: str) -> None:
        token = None
        while self.experiments:
            page = self.client.search_runs(
                self.experiments,
                filter_string,
                max_results=1000,
                order_by=["attributes.start_time DESC"],
                page_token=token,
            )
            for run in page:
                if LINEAGE_TAG in run.data.tags:
                    self.by_key.setdefault(f"{run.data.tags['stage']}:{run.data.tags[LINEAGE_TAG]}", []).append(run)
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
        if job.members:
            return self._locate_group(job)
        runs = self.runs(job.stage, job.keys)
        done = self.finished(job.stage, job.keys)
        if done is not None:
            return dataclasses.replace(job, state="finished", run_id=done.info.run_id)
        if not runs:
            return job
        latest = runs[0]  # newest first
        status, tags, run_id = latest.info.status, latest.data.tags, latest.info.run_id
        alive = run_alive(latest)
        if status == "RUNNING" and alive is not False:
            return dataclasses.replace(
                job, state="running", run_id=run_id, note=f"RUNNING ({where_running(latest, alive)})"
            )
        died = status in ("RUNNING", "KILLED") or (status == "FAILED" and SIGNAL_TAG in tags)
        why = f"{status}" + (f" by {tags[SIGNAL_TAG]}" if SIGNAL_TAG in tags else "")
        if died and job.stage in RESUMABLE:
            if has_resume_state(run_id):
                return dataclasses.replace(job, state="resume", run_id=run_id, note=why)
            return dataclasses.replace(job, note=f"run {run_id} {why} before its first checkpoint")
        return dataclasses.replace(job, note=f"run {run_id} {why}")

    def _locate_group(self, job: Job) -> Job:
        """A seed group's state: finished when every seed's run finished; running while one of its runs lives;
        resume the killed group whose unfinished seeds are exactly this job's; else run the unfinished seeds."""
        members = {
            seed: self.locate(dataclasses.replace(member, state="run", run_id="", note=""))
            for seed, member in job.members.items()
        }
        job = dataclasses.replace(job, members=members, state="run", run_id="", note="")
        todo = job.unfinished()
        if not todo:
            return dataclasses.replace(job, state="finished", note="")
        running = next((members[seed] for seed in todo if members[seed].state == "running"), None)
        if running is not None:
            return dataclasses.replace(job, state="running", run_id=running.run_id, note=running.note)
        group = self._killed_group(members, todo)
        if group is not None:
            return dataclasses.replace(job, state="resume", run_id=group[0], note=group[1])
        done = [seed for seed in members if seed not in todo]
        return dataclasses.replace(job, note=f"seeds {describe(done)} finished; runs the others" if done else "")

    def _killed_group(self, members: dict[int, Job], todo: list[int]) -> tuple[str, str] | None:
        """(parent run id, how it ended) of the seed group that died (killed, not failed by an error) leaving the
        runs of exactly the seeds `todo` unfinished, with every other seed of it finished; None when there is
        none."""
        latest = [self.runs(members[seed].stage, members[seed].keys) for seed in todo]
        parents = {runs[0].data.tags.get(MLFLOW_PARENT_RUN_ID) if runs else None for runs in latest}
        if len(parents) != 1 or None in parents:
            return None
        group = self.client.get_run(str(parents.pop()))
        status, tags = group.info.status, group.data.tags
        if tags.get("stage") != train_online.GROUP_STAGE or status == "FINISHED":
            return None
        died = (status == "RUNNING" and run_alive(group) is False) or status == "KILLED"
        if not (died or (status == "FAILED" and SIGNAL_TAG in tags)):
            return None
        recorded = {int(seed) for seed in group.data.params.get("seeds_resolved", "").split(",") if seed}
        failed = {int(seed) for seed in tags.get("failed_seeds", "").split(",") if seed}
        finished = {seed for seed, member in members.items() if member.state == "finished"}
        if recorded - set(members) or recorded - failed - finished != set(todo):
            return None
        return group.info.run_id, status + (f" by {tags[SIGNAL_TAG]}" if SIGNAL_TAG in tags else "")


def run_alive(run: Run) -> bool | None:
    """Whether the process that runs `run` lives: by its heartbeat (fresh, and its process not gone from this
    machine; a paused run's heartbeat waits for `pipeline continue`); for a run without one (logged before
    heartbeats), by its process on this machine, None elsewhere."""
    tags = run.data.tags
    here = tags.get(HOST_TAG) == socket.gethostname() and tags.get(PID_TAG, "").isdigit()
    if here and not _process_exists(int(tags[PID_TAG])):
        return False
    if PAUSED_TAG in tags:
        return True
    fresh = heartbeat_fresh(tags)
    if fresh is not None:
        return fresh
    return True if here else None


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def where_running(run: Run, alive: bool | None) -> str:
    """Where a live RUNNING run runs, for the plan."""
    tags = run.data.tags
    if PAUSED_TAG in tags:
        since = clock(float(tags[PAUSED_TAG]))
        return f"paused since {since} by `slate-rl pipeline pause`, host {tags.get(HOST_TAG, 'unknown')}"
    age = heartbeat_age(tags)
    if age is not None:
        return f"heartbeat {age:.0f} s ago, host {tags.get(HOST_TAG, 'unknown')}, pid {tags.get(PID_TAG, 'unknown')}"
    if alive:
        return f"pid {tags[PID_TAG]}"
    return (
        f"on host {tags.get(HOST_TAG, 'unknown')}, pid {tags.get(PID_TAG, 'unknown')}; mark it KILLED if that "
        "process is gone"
    )


def clock(unix_time: float) -> str:
    """A moment as local date and time, to the second."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(unix_time))


def locate(job: Job) -> Job:
    """The job's state now, from its runs in the store (what a Ray task that starts or restarts it runs)."""
    return Store(job).locate(job)


def retire_lost_runs(job: Job, by: str) -> None:
    """Mark KILLED (tag `lost`, naming `by`) the runs of a job about to run or resume that a process which died
    with its pipeline left RUNNING: no later stage or status reads them as live. Call it only on a job whose state
    `locate` gave as 'run' or 'resume' (none of its runs lives)."""
    client = MlflowClient()
    for lost in job_runs(job):
        if lost.info.status == "RUNNING":
            _mark_lost(client, lost, f"taken over by {by}")


def retire_lost_pipelines(by: str) -> None:
    """Mark KILLED (tag `lost`) the pipeline runs whose process died without ending them (a session or machine that
    stopped): the runs list and the UI show only the pipelines that still run."""
    client = MlflowClient()
    experiments = active_experiment_ids(client)
    for lost in client.search_runs(experiments, f"tags.stage = '{STAGE}' and attributes.status = 'RUNNING'"):
        if lost.info.run_id != by and run_alive(lost) is False:
            log.info("%s: run %s lost its process; marked KILLED", STAGE, lost.info.run_id)
            _mark_lost(client, lost, f"found by pipeline run {by}")


def _mark_lost(client: MlflowClient, run: Run, how: str) -> None:
    client.set_tag(run.info.run_id, LOST_TAG, f"its process stopped; {how}")
    client.set_terminated(run.info.run_id, "KILLED")


def job_runs(job: Job) -> list[Run]:
    """The runs of the job's lineage keys, newest first; for a seed group, then the group runs that hold them."""
    store = Store(job)
    runs = store.runs(job.stage, job.keys)
    if not job.members:
        return runs
    parents = {run.data.tags.get(MLFLOW_PARENT_RUN_ID) for run in runs} - {None}
    groups = [store.client.get_run(str(parent)) for parent in sorted(parents, key=str)]
    return runs + [group for group in groups if group.data.tags.get("stage") == train_online.GROUP_STAGE]


def plan(cfg: PipelineConfig, store: Store | None = None) -> list[list[Job]]:
    """The jobs of the grid in dependency phases (datasets; MF and GeMS; training runs), each with its state."""
    store = store or Store()
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
        for method in cfg.methods:
            options, agent = _method_overrides(cfg, method)
            independent = not get_method(method).needs
            grouped = cfg.group_seeds and method in train_online.GROUPED_METHODS and len(cfg.seeds) > 1
            groups: dict[str, dict[int, Job]] = {}  # a seed group's jobs by variant (its name's label)
            group_args: dict[str, list[str]] = {}  # and its train-online arguments but --seeds
            for seed in [ORACLE_SEED] if method == "short_term_oracle" else cfg.seeds:
                for chosen, hyper in itertools.product(_combinations(options), _combinations(agent)):
                    name = f"{method}/{env}/seed{seed}{label({**env_params, **chosen, **hyper})}"
                    for job in _model_jobs(cfg, method, env, env_params, seed, chosen, data_run, label):
                        add(1, job)
                    run_cfg = TrainOnlineConfig.resolve(
                        env,
                        cfg.preset,
                        method=method,
                        seed=seed,
                        agent=hyper or None,
                        **chosen,
                        **_env_values(cfg, TrainOnlineConfig, env_params),
                    )
                    head = ["train-online", "--env", env, "--preset", cfg.preset, "--method", method]
                    tail = [
                        *_option_args(chosen),
                        *[a for k, v in hyper.items() for a in ("--set", f"{k}={json.dumps(v)}")],
                        *_env_args(cfg, TrainOnlineConfig, env_params),
                    ]
                    keys = train_online.lookup_keys(run_cfg)
                    job = Job(
                        train_online.STAGE, name, [*head, "--seed", str(seed), *tail], keys, independent=independent
                    )
                    if not grouped or run_cfg.agent.get("fused_update"):  # a group has no fused update: one job a seed
                        add(2, job)
                        continue
                    variant_label = label({**env_params, **chosen, **hyper})
                    groups.setdefault(variant_label, {})[seed] = job
                    group_args[variant_label] = [*head, *tail]
            for variant_label, members in groups.items():
                keys = tuple(key for member in members.values() for key in member.keys)
                name = f"{method}/{env}/seeds {describe(list(members))}{variant_label}"
                args = group_args[variant_label]
                add(2, Job(train_online.STAGE, name, args, keys, members=members, independent=independent))
    return [list(jobs.values()) for jobs in phases]


def phases(cfg: PipelineConfig, store: Store | None = None) -> list[tuple[str, list[Job]]]:
    """Every phase of the grid as (title, jobs): those of `plan`, then those of the offline grid when it has one."""
    store = store or Store()
    titled = list(zip(PHASES, plan(cfg, store), strict=True))
    return titled + (pipeline_offline.plan(cfg, store) if cfg.offline else [])


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


def _model_jobs(
    cfg: PipelineConfig,
    method: str,
    env: str,
    env_params: dict[str, Any],
    seed: int,
    chosen: dict[str, Any],
    data_run: Run | None,
    label: Callable[[dict[str, Any]], str],
) -> list[Job]:
    """The MF and GeMS jobs whose tables a training run of `method` (options `chosen`) uses; `label` names the swept
    values of a job."""
    needs = get_method(method).needs
    jobs = []
    if Need.MF in needs:
        mf = {k: v for k, v in chosen.items() if k in MF_SETTINGS}
        fields = {MF_SETTINGS[k]: v for k, v in mf.items()}
        mf_cfg = TrainMFConfig.resolve(env, cfg.preset, **fields, **_env_values(cfg, TrainMFConfig, env_params))
        name = f"mf/{env}{label({**env_params, **mf})}"
        jobs.append(_upstream_job(cfg, env_params, mf_cfg, data_run, name, ["train-mf", *_option_args(fields)]))
    if Need.GEMS in needs:
        gems = {k: v for k, v in chosen.items() if k in GEMS_SETTINGS}
        gems_cfg = PretrainGemsConfig.resolve(
            env, cfg.preset, seed=seed, **gems, **_env_values(cfg, PretrainGemsConfig, env_params)
        )
        name = f"gems/{env}/seed{seed}{label({**env_params, **gems})}"
        args = ["pretrain-gems", "--seed", str(seed), *_option_args(gems)]
        jobs.append(_upstream_job(cfg, env_params, gems_cfg, data_run, name, args))
    return jobs


def _upstream_job(
    cfg: PipelineConfig, env_params: dict[str, Any], stage_cfg: Any, data_run: Run | None, name: str, command: list[str]
) -> Job:
    """An MF or GeMS job running `command` (the stage's command and options) in its config's environment, with the
    grid's preset and simulator overrides; its keys are known only once its dataset exists (until then it is to run)."""
    keys = on_dataset.lookup_keys(stage_cfg.stage, stage_cfg, data_run.info.run_id) if data_run else ()
    env_args = _env_args(cfg, type(stage_cfg), env_params)
    args = [command[0], "--env", stage_cfg.env, "--preset", cfg.preset, *command[1:], *env_args]
    return Job(stage_cfg.stage, name, args, keys)


def describe_plan(cfg: PipelineConfig) -> str:
    """The plan as text: the seeds, then every job of every phase with its state (what `--dry-run` prints)."""
    lines = [f"seeds: {cfg.given.get('seeds', describe(cfg.seeds))} -> {describe(cfg.seeds)}"]
    words = {"finished": "finished", "run": "to run", "resume": "to resume", "running": "running"}
    titled = phases(cfg)
    upstream = any(job.state in ("run", "resume") for _, jobs in titled[:TRAINING] for job in jobs)
    for number, (title, jobs) in enumerate(titled, start=1):
        early = sum(job.independent and job.state in ("run", "resume") for job in jobs) if upstream else 0
        verb = "s" if early == 1 else ""
        started = (
            f"; {early} need{verb} no dataset, MF or GeMS and start{verb} with the earlier phases" if early else ""
        )
        lines.append(f"phase {number}/{len(titled)} ({title}): {_counts(jobs)}{started}")
        for job in jobs:
            detail = job.run_id if job.state in ("finished", "resume", "running") else ""
            note = f" ({job.note})" if job.note else ""
            if job.state == "run" and not job.keys:
                note = f" ({job.note or 'after its dataset'})"
            lines.append(f"  {words[job.state]:10} {job.name}" + (f"  {detail}" if detail else "") + note)
        if number == len(PHASES) and cfg.select_policies:
            lines.append(
                f"then: per environment, registry select --medium {cfg.select_policies:g} on the "
                f"{cfg.select_method} run with the best test return"
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
    pipeline_offline.check_aliases(cfg)
    backend = _backend(cfg)  # a Ray cluster that does not answer is refused before any run is created
    try:
        with stage_run(
            STAGE, run_name=f"{STAGE}/{cfg.preset}", experiment_name=experiment_name, tags={"preset": cfg.preset}
        ) as mlrun:
            mlrun.log_params(cfg.params())
            retire_lost_pipelines(mlrun.run_id)
            log.info("%s: seeds %s -> %s", STAGE, cfg.given.get("seeds", ""), describe(cfg.seeds))
            scheduler = Scheduler(backend, mlrun.run_id)
            select_failures: list[str] = []
            elsewhere: list[str] = []
            count = len(PHASES) + (len(pipeline_offline.PHASES) if cfg.offline else 0)
            for phase in range(count):
                planned = phases(cfg)  # re-planned: later phases know the runs earlier phases produced
                jobs = [job for job in planned[phase][1] if job.name not in scheduler.queued]
                early = [scheduler.queued[job.name] for job in planned[phase][1] if job.name in scheduler.queued]
                started = f" ({len(early)} of them started while the earlier phases ran)" if early else ""
                log.info("%s: phase %d/%d: %s%s", STAGE, phase + 1, count, _counts(jobs + early), started)
                elsewhere += _log_states(jobs)
                todo = [job for job in jobs if job.state in ("run", "resume")]
                _queue(scheduler, todo, urgent=True)
                if phase < TRAINING and todo:
                    _queue_independent(scheduler, planned[TRAINING][1])
                failed = scheduler.wait(todo if phase < TRAINING else None)
                if phase == TRAINING and cfg.select_policies:  # the training runs choose the policies
                    select_failures = select_policies(cfg, plan(cfg)[-1])
                if phase < count - 1 and (failed or select_failures or elsewhere):  # later phases need them
                    if scheduler.running:
                        log.info("%s: waiting for the %d job(s) still running", STAGE, len(scheduler.running))
                    scheduler.stop_starting()
                    scheduler.wait()
                    stopped = scheduler.failures + select_failures + elsewhere
                    raise SlateRLError(
                        f"{len(stopped)} job(s) failed or still running: {', '.join(stopped)}; the later phases "
                        "need them: run the pipeline again once they are fixed or done (finished jobs are skipped)"
                    )
            failures = scheduler.failures + select_failures
            mlrun.log_metrics({"failed_jobs": len(failures)})
            report = compare.CompareConfig.resolve(
                ",".join(cfg.envs), ",".join(cfg.methods), preset=cfg.preset, out=out
            )
            try:
                compare.write_report(
                    compare.to_results(compare.select_runs(report), with_curve=True),
                    report,
                    _folder(out),
                    pipeline_offline.report_inputs(cfg),
                )
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
    finally:
        backend.close()


def _backend(cfg: PipelineConfig) -> Backend:
    if cfg.backend == "ray":
        from slate_rl.stages.pipeline_ray import RayBackend  # Ray is an optional extra, imported when asked for

        return RayBackend(cfg)
    return LocalBackend(cfg)


def select_policies(cfg: PipelineConfig, jobs: list[Job]) -> list[str]:
    """Per environment, `registry select` on the finished run of `cfg.select_method` with the best test return among
    `jobs`; returns 'select/<env>' for each environment where that failed (the reason is logged)."""
    client = MlflowClient()
    runs = [client.get_run(seed.run_id) for job in jobs for seed in job.seed_jobs() if seed.state == "finished"]
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


def _log_states(jobs: list[Job]) -> list[str]:
    """Say which jobs resume and which run in another process; returns the names of the latter."""
    elsewhere = []
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
            log.info("%s: %s: resuming run %s (%s) from its last checkpoint", STAGE, job.name, job.run_id, job.note)
    return elsewhere


def _queue(scheduler: Scheduler, jobs: list[Job], urgent: bool = False) -> None:
    """Queue `jobs`, after marking KILLED the runs of theirs that dead processes left RUNNING."""
    for job in jobs:
        retire_lost_runs(job, f"pipeline run {scheduler.parent_run_id}")
    scheduler.add(jobs, urgent=urgent)


def _queue_independent(scheduler: Scheduler, training: list[Job]) -> None:
    """Queue the training jobs that need no upstream output, to run on the workers the upstream phases leave free."""
    jobs = [
        job
        for job in training
        if job.independent and job.state in ("run", "resume") and job.name not in scheduler.queued
    ]
    if jobs:
        log.info(
            "%s: %d training job(s) need no dataset, MF or GeMS: they run on the workers this phase leaves free",
            STAGE,
            len(jobs),
        )
        _log_states(jobs)
        _queue(scheduler, jobs)
