"""Stage `train_online`: one of the paper's eight methods trained, validated and tested with the paper's protocol,
its checkpoints logged, its best policy registered; resumable into the same run after a kill."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from slate_rl import atomic, envs
from slate_rl.agents.export import policy_payload
from slate_rl.agents.group_training import GroupTrainer, SeedRecord
from slate_rl.agents.methods import build_agent
from slate_rl.agents.rollout import evaluate_policy
from slate_rl.agents.training import Hooks, Trainer
from slate_rl.devices import DEVICE_TAG, resolve_device
from slate_rl.envs.spec import EnvSpec
from slate_rl.errors import SlateRLError
from slate_rl.methods import Need, get_method
from slate_rl.progress import Progress
from slate_rl.rankers.decoders import GeMSDecoder
from slate_rl.reporting.figures import plot_run_curve
from slate_rl.safe_load import torch_load
from slate_rl.seeds import describe
from slate_rl.stage_configs import PretrainGemsConfig, TrainMFConfig, TrainOnlineConfig, agent_defaults
from slate_rl.stages import environment, generate_dataset, pretrain_gems, train_mf
from slate_rl.tracking import models
from slate_rl.tracking.lineage import (
    LINEAGE_TAG,
    artifact_dir,
    get_unfinished_run,
    legacy_applies,
    lineage_key,
    parse_run_uri,
)
from slate_rl.tracking.runs import RESUME_FILE, RESUME_PATH, StageRun, stage_run

STAGE = "train_online"
CONTEXT_METRICS = {"random": "test_return_random", "short_term_oracle": "test_return_oracle"}
CONFIG_FILE = "config.json"
GROUP_STAGE = "train_online_group"  # the parent run of a seed group (its seeds' runs are train_online runs)
GROUPED_METHODS = ("sac_topk_ideal", "sac_topk_mf", "sac_gems")  # the methods a SeedGroup trains
REFERENCE_TAGS = ("reference_bugs", "reference_parity")  # the umbrellas, also as run tags (true / false)
log = logging.getLogger("slate_rl")


@dataclasses.dataclass
class Upstream:
    """The upstream runs a method acts through (run ids; empty when the method needs none). A field per `Need`,
    named by its value, plus the dataset they were trained on."""

    dataset: str = ""
    gems: str = ""
    mf: str = ""


def run(
    cfg: TrainOnlineConfig,
    parent: StageRun | None = None,
    experiment_name: str | None = None,
    resume_run: str | None = None,
    device: str = "cpu",
) -> str:
    """Train, validate, test and register inside an MLflow run; returns the run id.

    resume_run: continue that (killed or failed) run from its last periodic checkpoint instead of starting anew.
    device: where the simulator, the replay buffer and the agent live ('cpu', 'cuda' or 'cuda:K'; tag `device`);
        upstream GeMS / MF runs it has to produce run there too.
    """
    on = resolve_device(device)
    with _seed_run(cfg, str(on), parent, experiment_name, resume_run) as mlrun:
        env = environment.make_env(cfg, device=on)
        session = _Session.open(cfg, mlrun, env, str(on), fresh=resume_run is None)
        agent = session.agent
        trainer = Trainer(agent, env, cfg.protocol(), session.hooks())
        if resume_run is not None:
            session.resume(trainer)
        if agent.learns:
            with session.progress(trainer):
                trainer.fit()
        test_returns = trainer.test()
        session.finish(trainer, test_returns)
        return mlrun.run_id


def _seed_run(
    cfg: TrainOnlineConfig, device: str, parent: StageRun | None, experiment_name: str | None, run_id: str | None
) -> contextlib.AbstractContextManager[StageRun]:
    """The MLflow run of one seed (see `stage_run`)."""
    return stage_run(
        STAGE,
        run_name=f"{cfg.method}/{cfg.env}/seed{cfg.seed}",
        parent=parent,
        experiment_name=experiment_name,
        run_id=run_id,
        tags={
            "env": cfg.env,
            "method": cfg.method,
            "seed": cfg.seed,
            "preset": cfg.preset,
            DEVICE_TAG: device,
            **{name: getattr(cfg, name) for name in REFERENCE_TAGS},
        },
    )


@dataclasses.dataclass
class SeedsResult:
    """The runs of several seeds: run id by seed, and why each failed seed failed."""

    runs: dict[int, str]
    failed: dict[int, str]
    group_run: str | None = None  # the parent run of a seed group
    config: TrainOnlineConfig | None = None  # the configuration (of the first seed)


def run_seeds(
    cfg: TrainOnlineConfig,
    seeds: list[int],
    parent: StageRun | None = None,
    experiment_name: str | None = None,
    device: str = "cpu",
) -> SeedsResult:
    """Train `cfg` for each of `seeds` (its own seed is replaced) under a parent run of stage `train_online_group`
    that records them (param seeds_resolved, method, env; tags run.<seed>): each seed has its child run, which logs
    what a single-seed run logs and is resumable alone (`--resume <its run id>`). The methods of `GROUPED_METHODS`
    train all seeds together (`GroupTrainer`); the others one seed after another. A seed that fails ends its run
    FAILED and the other seeds go on: in a group, a seed whose training diverges; one after another, a seed whose
    run raises a SlateRLError. An error while a group starts (an upstream run not found or not made) fails them all."""
    grouped = cfg.method in GROUPED_METHODS
    if grouped and cfg.agent.get("fused_update"):
        raise SlateRLError(
            "a seed group runs the plain SAC update stacked over its seeds, not fused_update; drop "
            "fused_update=true, or train the seeds one by one (one train-online --seed each)"
        )
    on = resolve_device(device)
    if grouped:
        check_group_memory(cfg, len(seeds), on)
    with _group_run(cfg, seeds, str(on), parent, experiment_name) as group_run:
        group_run.log_params(
            {"method": cfg.method, "env": cfg.env, "preset": cfg.preset, "seeds_resolved": describe(seeds)}
        )
        result = SeedsResult({}, {}, group_run.run_id, cfg)
        if grouped:
            _train_group({seed: dataclasses.replace(cfg, seed=seed) for seed in seeds}, group_run, on, result)
        else:
            for seed in seeds:
                try:
                    result.runs[seed] = run(dataclasses.replace(cfg, seed=seed), parent=group_run, device=str(on))
                except SlateRLError as exc:
                    result.failed[seed] = str(exc)
                    result.runs[seed] = _last_child(group_run, seed)
                group_run.set_tags({f"run.{seed}": f"runs:/{result.runs[seed]}"})
        if result.failed:
            group_run.set_tags({"failed_seeds": describe(sorted(result.failed))})
        return result


def _group_run(
    cfg: TrainOnlineConfig,
    seeds: list[int],
    device: str,
    parent: StageRun | None,
    experiment_name: str | None,
    run_id: str | None = None,
) -> contextlib.AbstractContextManager[StageRun]:
    """The parent run of several seeds (see `stage_run`; `run_id`: a resumed one)."""
    tags = {"env": cfg.env, "method": cfg.method, "seeds": describe(seeds), "preset": cfg.preset, DEVICE_TAG: device}
    name = f"{cfg.method}/{cfg.env}/seeds {describe(seeds)}"
    return stage_run(GROUP_STAGE, name, tags, parent=parent, experiment_name=experiment_name, run_id=run_id)


def _train_group(
    configs: dict[int, TrainOnlineConfig],
    group_run: StageRun,
    on: torch.device,
    result: SeedsResult,
    resume: dict[int, str] | None = None,
    states: list[dict[str, Any]] | None = None,
) -> None:
    """The seeds of a SAC method (`configs`, by seed) trained as one `GroupTrainer`, each in its child run of
    `group_run`: new runs, or the runs `resume` names by seed, continued from `states` (one per seed, in the order
    of `configs`; None: from the start)."""
    cfg = next(iter(configs.values()))
    env = environment.make_env(cfg, device=on)
    _pretrain_gems_together(cfg, list(configs), group_run, str(on))
    members: dict[int, _Member] = {}
    try:
        for seed, seed_cfg in configs.items():
            members[seed] = _Member.open(seed_cfg, group_run, env, str(on), (resume or {}).get(seed))
            result.runs[seed] = members[seed].session.mlrun.run_id
            group_run.set_tags({f"run.{seed}": f"runs:/{result.runs[seed]}"})

        def diverged(seed: int, message: str) -> None:
            result.failed[seed] = message
            group_run.set_tags({"failed_seeds": describe(sorted(result.failed))})  # at once: a resume keeps them
            members[seed].close(SlateRLError(message))

        hooks = [m.session.hooks() for m in members.values()]
        trainer = GroupTrainer([m.session.agent for m in members.values()], env, cfg.protocol(), hooks, diverged)
        if states is not None:
            trainer.load_seed_states(states)
            log.info("%s: resumed the seeds %s at episode %d", STAGE, describe(list(configs)), trainer.episode)
        with Progress(cfg.episodes, f"{STAGE} {cfg.method}/{cfg.env} x{len(configs)} seeds", "episodes") as bar:
            bar.done = trainer.episode
            for hook in hooks:
                hook.on_progress = lambda episode, total: bar.advance(episode - bar.done)
            trainer.fit()
        for seed in trainer.seeds:
            members[seed].session.finish(trainer.records[seed], trainer.test(seed))
            members[seed].close()
    except BaseException as exc:
        for member in members.values():
            member.close(exc)
        raise


def _pretrain_gems_together(cfg: TrainOnlineConfig, seeds: list[int], group_run: StageRun, device: str) -> None:
    """The GeMS of each seed of a group that acts through GeMS and is given none: the seeds without one are
    pretrained together, stacked, under `group_run` (each seed's run then finds its GeMS by lineage)."""
    if Need.GEMS not in get_method(cfg.method).needs or cfg.gems:
        return
    dataset_run, _ = generate_dataset.resolve_dataset(cfg, group_run)
    pretrain_gems.find_or_pretrain_seeds(gems_config(cfg), seeds, dataset_run, group_run, device)


def _last_child(group_run: StageRun, seed: int) -> str:
    """The run id of the latest child run of `group_run` for `seed` ('' when none was created)."""
    runs = group_run.client.search_runs(
        [group_run.client.get_run(group_run.run_id).info.experiment_id],
        f"tags.mlflow.parentRunId = '{group_run.run_id}' and tags.seed = '{seed}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else ""


class _Member:
    """One seed's child run of a group, entered and left by the group (its end: FINISHED, or FAILED with the
    error that ended it)."""

    def __init__(self, manager: contextlib.AbstractContextManager[StageRun], session: _Session) -> None:
        self.manager, self.session, self.open = manager, session, True

    @classmethod
    def open(
        cls, cfg: TrainOnlineConfig, group_run: StageRun, env: envs.TopicRec, device: str, run_id: str | None = None
    ) -> _Member:
        """A new child run of `group_run`, or the existing run `run_id` continued."""
        manager = _seed_run(cfg, device, None if run_id else group_run, None, run_id)
        mlrun = manager.__enter__()
        try:
            return cls(manager, _Session.open(cfg, mlrun, env, device, fresh=run_id is None))
        except BaseException as exc:
            manager.__exit__(type(exc), exc, exc.__traceback__)
            raise

    def close(self, error: BaseException | None = None) -> None:
        """End the run: FINISHED, or with `error` FAILED (KILLED for Ctrl-C); a second call does nothing."""
        if not self.open:
            return
        self.open = False
        if error is None:
            self.manager.__exit__(None, None, None)
        else:
            self.manager.__exit__(type(error), error, error.__traceback__)


# Fields that do not change a run's outcome (the table's path neither: the spec holds its fingerprint).
NOT_IDENTITY_FIELDS = ("register", "allow_env_mismatch", "item_embeddings", "env_params")
# The fields of slate-rl 0.1.0's TrainOnlineConfig, whose values (every one, default or not) made its lineage keys.
LEGACY_FIELDS = (
    "env",
    "preset",
    "method",
    "seed",
    "episodes",
    "warmup_episodes",
    "val_every",
    "val_episodes",
    "test_episodes",
    "parallel_episodes",
    "overlap_collection",
    "save_every",
    "item_embeddings",
    "dataset",
    "gems",
    "mf",
    "latent_dim",
    "lambda_kl",
    "lambda_click",
    "agent",
)


def identity(cfg: TrainOnlineConfig) -> dict[str, Any]:
    """What determines a train_online run's outcome (its lineage key; `pipeline` skips runs that have one): the
    environment spec and the fields that differ from their defaults."""
    return {**cfg.changed_fields(exclude=NOT_IDENTITY_FIELDS), **environment.spec_of(cfg).as_params()}


def legacy_identity(cfg: TrainOnlineConfig) -> dict[str, Any]:
    """The identity slate-rl 0.1.0 hashed (every field of its config), to find the runs it wrote."""
    return {k: v for k, v in cfg.as_params().items() if k.split(".")[0] in LEGACY_FIELDS}


def lookup_keys(cfg: TrainOnlineConfig) -> tuple[str, ...]:
    """The lineage key of this configuration's run, then the key slate-rl 0.1.0 gave it (when it could: not with
    simulator overrides or any later field away from its default)."""
    current = lineage_key(STAGE, identity(cfg))
    if not legacy_applies(cfg.changed_fields(exclude=("register",)), LEGACY_FIELDS):
        return (current,)
    return current, lineage_key(STAGE, legacy_identity(cfg))


def result_line(metrics: dict[str, float], test_episodes: int) -> str:
    """The end-of-run summary: the test return with its standard error, next to the returns of Random and the
    short-term oracle on the same environment and test users (when the run measured them)."""
    line = (
        f"test return {metrics['test_return']:.2f} ± {metrics['test_return_stderr']:.2f} over {test_episodes} "
        "test users"
    )
    if set(CONTEXT_METRICS.values()) <= set(metrics):
        line += (
            f" (Random {metrics['test_return_random']:.2f}, short-term oracle {metrics['test_return_oracle']:.2f} "
            "on the same environment and test users)"
        )
    return line


def resumable(run_id: str) -> TrainOnlineConfig:
    """The configuration of a train_online run that can be resumed (it exists and did not finish)."""
    return _saved_config(get_unfinished_run(run_id, STAGE))


def _saved_config(run: Run) -> TrainOnlineConfig:
    try:
        saved = json.loads((artifact_dir(run, CONFIG_FILE)).read_text())
    except SlateRLError as exc:
        raise SlateRLError(
            f"run {run.info.run_id} has no {CONFIG_FILE}: it stopped before its configuration was saved; start a "
            "new run"
        ) from exc
    config = saved["config"]
    return TrainOnlineConfig.resolve(config.pop("env"), config.pop("preset"), **config)


def is_group(run_id: str) -> bool:
    """Whether `run_id` is the parent run of several seeds (`run_seeds`); False when there is no such run."""
    try:
        return MlflowClient().get_run(run_id).data.tags.get("stage") == GROUP_STAGE
    except MlflowException:
        return False


def resume_group(group_id: str, seeds: list[int] | None = None, device: str = "cpu") -> SeedsResult:
    """Continue the seed group of parent run `group_id` (killed, failed or stopped) in its runs: its unfinished
    seeds as one `GroupTrainer`, each from its run's last checkpoint; finished seeds stay finished, and the seeds
    the group recorded as failed (diverged) stay FAILED. The seeds go on from one episode: their checkpoints'
    when they are of one; the start when a seed has none yet (an exact replay); otherwise refused, naming where
    each seed is and how to resume it alone. `seeds`, when given, must be the seeds the group recorded."""
    group = get_unfinished_run(group_id, GROUP_STAGE)
    params, tags = group.data.params, group.data.tags
    recorded = [int(seed) for seed in params["seeds_resolved"].split(",")]
    if seeds is not None and sorted(seeds) != sorted(recorded):
        raise SlateRLError(
            f"run {group_id} is the seed group of seeds {describe(recorded)}; it resumes with those seeds only "
            f"(got --seeds {describe(seeds)}): drop --seeds, or start a new group with --seeds {describe(seeds)}"
        )
    if params["method"] not in GROUPED_METHODS:
        raise SlateRLError(
            f"run {group_id} trained {params['method']} seed after seed; resume each unfinished seed's run alone "
            f"(slate-rl train-online --resume <run id>; its runs: {', '.join(_children(group).values()) or 'none'})"
        )
    children = _children(group)
    missing = [seed for seed in recorded if seed not in children]
    if missing:
        raise SlateRLError(
            f"seed(s) {describe(missing)} of group {group_id} have no run (it stopped while creating its runs); "
            f"start the group anew: slate-rl train-online --seeds {describe(recorded)} ..."
        )
    client = MlflowClient()
    runs = {seed: client.get_run(run_id) for seed, run_id in children.items()}
    failed = {int(seed) for seed in tags.get("failed_seeds", "").split(",") if seed}
    result = SeedsResult({seed: children[seed] for seed in recorded}, {}, group_id, _saved_config(runs[recorded[0]]))
    for seed in sorted(failed):
        result.failed[seed] = f"failed before the group was resumed (run {children[seed]})"
        log.warning("%s: seed %d failed in the group before (run %s); it stays FAILED", STAGE, seed, children[seed])
    todo = [seed for seed in recorded if seed not in failed and runs[seed].info.status != "FINISHED"]
    configs = {seed: _saved_config(runs[seed]) for seed in todo}
    on = resolve_device(device)
    states = {seed: _checkpoint(runs[seed], on) for seed in todo}
    episodes = {seed: 0 if state is None else int(state["episode"]) for seed, state in states.items()}
    if len(set(episodes.values())) > 1 and min(episodes.values()) > 0:
        where = "; ".join(f"seed {seed} at episode {episodes[seed]} (run {children[seed]})" for seed in todo)
        alone = "; ".join(f"slate-rl train-online --resume {children[seed]}" for seed in todo)
        raise SlateRLError(
            f"the seeds of group {group_id} stopped at different checkpoints ({where}); a group goes on from one "
            f"episode and each run keeps only its last checkpoint: resume each seed alone ({alone})"
        )
    if todo:
        check_group_memory(configs[todo[0]], len(todo), on)
    with _group_run(result.config, recorded, str(on), None, None, run_id=group_id) as group_run:
        if todo:
            start = None if min(episodes.values()) == 0 else [states[seed] for seed in todo]
            if start is None and max(episodes.values()) > 0:
                log.info("%s: seed(s) without a checkpoint yet: the group starts again from episode 0", STAGE)
            _train_group(configs, group_run, on, result, {seed: children[seed] for seed in todo}, start)
        if result.failed:
            group_run.set_tags({"failed_seeds": describe(sorted(result.failed))})
    return result


def _children(group: Run) -> dict[int, str]:
    """The run id of each seed of a group's parent run (tags run.<seed>)."""
    runs = {key.removeprefix("run."): value for key, value in group.data.tags.items() if key.startswith("run.")}
    return {int(seed): value.removeprefix("runs:/") for seed, value in runs.items() if seed.isdigit()}


def _checkpoint(run: Run, device: torch.device) -> dict[str, Any] | None:
    """A run's last periodic checkpoint (the state its `Trainer` saved), None before its first."""
    try:
        path = artifact_dir(run, f"{RESUME_PATH}/{RESUME_FILE}")
    except SlateRLError:
        return None
    return torch_load(path, "resume state", map_location=device)


def group_memory(cfg: TrainOnlineConfig, seeds: int) -> int:
    """Bytes a group of `seeds` seeds of `cfg` holds, roughly: each seed's full replay buffer (its slates, clicks
    and latent actions) and a quarter more for the agents, their optimiser states and the batches."""
    params = envs.env_params(cfg.env, **cfg.env_params)
    capacity = int({**agent_defaults(cfg.method), **(cfg.agent or {})}["capacity"])
    action_dim = cfg.latent_dim if Need.GEMS in get_method(cfg.method).needs else params.embedding_dim
    id_bytes = 2 if params.num_items <= torch.iinfo(torch.int16).max else 8
    per_trajectory = (params.episode_length + 1) * params.slate_size * (id_bytes + 1)
    per_trajectory += params.episode_length * action_dim * 4
    return int(1.25 * seeds * capacity * per_trajectory)


def available_memory(device: torch.device) -> int | None:
    """Free bytes where a run on `device` keeps its buffers: the GPU's, or the machine's available memory (None
    when unknown)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        meminfo = Path("/proc/meminfo").read_text()
    except OSError:
        meminfo = ""
    for line in meminfo.splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_group_memory(cfg: TrainOnlineConfig, seeds: int, device: torch.device) -> None:
    """Refuse a group whose buffers would not fit in the memory free on `device` (before any run is created)."""
    need, free = group_memory(cfg, seeds), available_memory(device)
    if free is None or need <= free:
        return
    per_seed = group_memory(cfg, 1)
    capacity = int({**agent_defaults(cfg.method), **(cfg.agent or {})}["capacity"])
    raise SlateRLError(
        f"a group of {seeds} seeds of {cfg.method} on {cfg.env} needs about {_size(need)} ({_size(per_seed)} per "
        f"seed: a replay buffer of {capacity} trajectories), but {device} has {_size(free)} free; train at most "
        f"{free // per_seed} seeds per group (several --seeds runs; the pipeline: --group-seeds false), or "
        "lower --set capacity=..."
    )


def _size(size: float) -> str:
    return f"{size / 2**30:.1f} GiB" if size >= 2**30 else f"{size / 2**20:.0f} MiB"


def resolve_upstream(cfg: TrainOnlineConfig, mlrun: StageRun, device: str = "cpu") -> Upstream:
    """The dataset, GeMS and MF runs the method needs: given explicitly, else found (or produced, on `device`) by
    lineage; each checked to come from this run's simulator (unless `allow_env_mismatch`, which tags the run)."""
    needs = get_method(cfg.method).needs
    upstream = Upstream(
        **{need.value: parse_run_uri(getattr(cfg, need.value))[0] for need in needs if getattr(cfg, need.value)}
    )
    if not all(getattr(upstream, need.value) for need in needs):
        upstream.dataset, _ = generate_dataset.resolve_dataset(cfg, mlrun)  # GeMS and MF learn from logged data
        if Need.GEMS in needs and not upstream.gems:
            upstream.gems = pretrain_gems.find_or_pretrain(gems_config(cfg), upstream.dataset, mlrun, device)
        if Need.MF in needs and not upstream.mf:
            upstream.mf = train_mf.find_or_train(mf_config(cfg), upstream.dataset, mlrun, device)
    if upstream.mf:
        train_mf.check_setting(upstream.mf, cfg.mf_reference_validation)
    spec = environment.spec_of(cfg)
    for what, run_id in (("gems", upstream.gems), ("mf", upstream.mf)):
        if run_id:
            environment.check_upstream(spec, run_id, what, cfg.allow_env_mismatch, mlrun)
    return upstream


def _environment_fields(cfg: TrainOnlineConfig) -> dict[str, Any]:
    """The fields an upstream GeMS / MF configuration shares with `cfg` (its simulator; None: the default)."""
    return {
        "env_params": cfg.env_params or None,
        "item_embeddings": cfg.item_embeddings or None,
        "allow_env_mismatch": cfg.allow_env_mismatch or None,
    }


def mf_config(cfg: TrainOnlineConfig) -> TrainMFConfig:
    """The MF training the run of `cfg` takes its item table from when none is given."""
    return TrainMFConfig.resolve(
        cfg.env, cfg.preset, reference_validation=cfg.mf_reference_validation, **_environment_fields(cfg)
    )


def gems_config(cfg: TrainOnlineConfig) -> PretrainGemsConfig:
    """The GeMS pretraining the run of `cfg` acts through when none is given: its seed and GeMS setting."""
    return PretrainGemsConfig.resolve(
        cfg.env,
        cfg.preset,
        seed=cfg.seed,
        latent_dim=cfg.latent_dim,
        lambda_kl=cfg.lambda_kl,
        lambda_click=cfg.lambda_click,
        **_environment_fields(cfg),
    )


def load_gems(cfg: TrainOnlineConfig, gems_run: str):
    """The GeMS decoder of `gems_run`, checked to have the requested setting (logged as this run's params)."""
    payload = pretrain_gems.load_payload(gems_run)
    for name in ("latent_dim", "lambda_kl", "lambda_click"):
        if float(payload["hparams"][name]) != float(getattr(cfg, name)):
            raise SlateRLError(
                f"GeMS run {gems_run} was trained with {name} = {payload['hparams'][name]}, but "
                f"{name} = {getattr(cfg, name)} was requested; pass {name}={payload['hparams'][name]} "
                "or another GeMS run"
            )
    return GeMSDecoder.from_payload(payload["decoder"])


def _log_json(mlrun: StageRun, payload: dict[str, Any], name: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        mlrun.log_artifact(atomic.write_json(Path(tmp) / name, payload))


class _Session:
    """The run's side of the loop: metrics, checkpoints, the resume state, and the end of the run."""

    def __init__(
        self, cfg: TrainOnlineConfig, mlrun: StageRun, env: envs.TopicRec, agent: Any, mf_table: torch.Tensor | None
    ) -> None:
        self.cfg, self.mlrun, self.env, self.agent, self.mf_table = cfg, mlrun, env, agent, mf_table
        self._progress: Progress | None = None

    @classmethod
    def open(cls, cfg: TrainOnlineConfig, mlrun: StageRun, env: envs.TopicRec, device: str, fresh: bool) -> _Session:
        """A run's start: its params, spec and lineage (`fresh`: a new run, also its configuration file), the
        upstream runs its method needs (found or produced on `device`) and its agent, built for `env`."""
        if fresh:
            mlrun.log_params(cfg.as_params())
            environment.log_spec(mlrun, environment.spec_of(cfg))
            mlrun.set_tags({LINEAGE_TAG: lineage_key(STAGE, identity(cfg))})
        upstream = resolve_upstream(cfg, mlrun, device)
        mlrun.set_tags({f"upstream.{k}": f"runs:/{v}" for k, v in dataclasses.asdict(upstream).items() if v})
        mf_table = train_mf.load_item_table(upstream.mf) if upstream.mf else None
        gems_decoder = load_gems(cfg, upstream.gems) if upstream.gems else None
        agent = build_agent(
            cfg.method, env, cfg.seed, gems_decoder=gems_decoder, mf_table=mf_table, overrides=cfg.agent or None
        )
        if fresh:
            _log_json(mlrun, {"config": dataclasses.asdict(cfg), "upstream": dataclasses.asdict(upstream)}, CONFIG_FILE)
        return cls(cfg, mlrun, env, agent, mf_table)

    def hooks(self) -> Hooks:
        return Hooks(
            on_metrics=self.on_metrics,
            on_validation=self.on_validation,
            on_checkpoint=self.on_checkpoint,
            on_progress=self.on_progress,
        )

    def on_metrics(self, episode: int, values: dict[str, float]) -> None:
        self.mlrun.log_metrics(values, step=episode)  # a resumed run skips the points it already holds

    def on_validation(self, episode: int, returns: torch.Tensor) -> None:
        mean, std = float(returns.mean()), float(returns.std())
        self.mlrun.log_metrics({"val_return": mean, "val_return_std": std}, step=episode)
        self.mlrun.flush()
        log.info("%s: validation after %d episodes: return %.2f (sd %.1f)", STAGE, episode, mean, std)

    def on_checkpoint(self, kind: str, episode: int, state: dict[str, Any]) -> None:
        if kind != "periodic":
            return  # the best weights stay in the trainer (and its resume state); logged at the end
        self.log_policy_file(
            policy_payload(
                self.agent,
                self.env,
                seed=self.cfg.seed,
                overrides=self.cfg.agent,
                episode=episode,
                mf_table=self.mf_table,
            ),
            f"episode_{episode:06d}",
        )
        with tempfile.TemporaryDirectory() as tmp:
            self.mlrun.replace_artifact(atomic.torch_save(state, Path(tmp) / RESUME_FILE), RESUME_PATH)
        log.info("%s: checkpoint after %d episodes (resumable)", STAGE, episode)

    def log_policy_file(self, payload: dict[str, Any], name: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            self.mlrun.log_artifact(atomic.torch_save(payload, Path(tmp) / models.POLICY_FILE), f"checkpoints/{name}")

    def on_progress(self, episode: int, total: int) -> None:
        if self._progress is not None:
            self._progress.advance(episode - self._progress.done)

    def progress(self, trainer: Trainer) -> Progress:
        self._progress = Progress(self.cfg.episodes, f"{STAGE} {self.cfg.method}/{self.cfg.env}", unit="episodes")
        self._progress.done = trainer.episode
        return self._progress

    def resume(self, trainer: Trainer) -> None:
        state = _checkpoint(self.mlrun.client.get_run(self.mlrun.run_id), self.env.device)
        if state is None:
            raise SlateRLError(
                f"run {self.mlrun.run_id} has no checkpoint to resume from (none was saved before "
                f"it stopped; checkpoints come every save_every={self.cfg.save_every} episodes)"
            )
        trainer.load_state_dict(state)
        log.info("%s: resumed run %s at episode %d", STAGE, self.mlrun.run_id, trainer.episode)

    def finish(self, trainer: Trainer | SeedRecord, test_returns: torch.Tensor) -> None:
        cfg, mlrun = self.cfg, self.mlrun
        mean, std = float(test_returns.mean()), float(test_returns.std())
        stderr = std / len(test_returns) ** 0.5
        results = {"test_return": mean, "test_return_std": std, "test_return_stderr": stderr, **self.context_returns()}
        mlrun.log_metrics(results)
        if trainer.best_episode is not None:
            mlrun.log_metrics({"best_val_return": trainer.best_return, "best_episode": trainer.best_episode})
        with tempfile.TemporaryDirectory() as tmp:
            returns_file = Path(tmp) / "test_returns.csv"
            atomic.write_text(
                returns_file,
                "episode,return\n" + "".join(f"{i},{value:g}\n" for i, value in enumerate(test_returns.tolist())),
            )
            mlrun.log_artifact(returns_file, "test")
            if trainer.validations:
                mlrun.log_artifact(
                    plot_run_curve(
                        trainer.validations,
                        Path(tmp) / "learning_curve.png",
                        f"{cfg.method} on {cfg.env}, seed {cfg.seed}",
                    )
                )
        episode = trainer.best_episode or trainer.episode
        payload = policy_payload(
            self.agent,
            self.env,
            seed=cfg.seed,
            overrides=cfg.agent,
            episode=episode,
            mf_table=self.mf_table,
            info={"run_id": mlrun.run_id, "test_return": mean},
        )
        self.log_policy_file(payload, "best")
        log.info("%s: %s", STAGE, result_line(results, cfg.test_episodes))
        if cfg.register:
            path = models.log_policy(mlrun, payload, "best")
            version = models.register(
                cfg.env,
                mlrun.run_id,
                path,
                {
                    "method": cfg.method,
                    "seed": cfg.seed,
                    "episode": episode,
                    "checkpoint": "best",
                    "val_return": trainer.best_return if trainer.best_episode is not None else "",
                    "test_return": mean,
                    "run_id": mlrun.run_id,
                    "preset": cfg.preset,
                    "env": cfg.env,
                    **EnvSpec.of(self.env).as_params(),
                },
            )
            mlrun.set_tags({"registered_version": version.version})

    def context_returns(self) -> dict[str, float]:
        """Mean test returns of Random and the short-term oracle (seeded like this run) on the same re-seeded test
        users, by metric name; none when the method is one of them."""
        if self.cfg.method in CONTEXT_METRICS:
            return {}
        return {
            metric: float(
                evaluate_policy(self.env, build_agent(method, self.env, self.cfg.seed), self.cfg.test_episodes).mean()
            )
            for method, metric in CONTEXT_METRICS.items()
        }
