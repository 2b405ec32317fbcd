"""Stage `generate_dataset`: logged sessions of the ε-greedy oracle, the data GeMS and MF are trained on."""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slate_rl import envs
from slate_rl.data.logged import LoggedSessions, LoggedSessionsWriter, load_logged_sessions
from slate_rl.envs.policies import EpsilonGreedyOracle
from slate_rl.envs.spec import EnvSpec
from slate_rl.errors import SlateRLError
from slate_rl.progress import Progress
from slate_rl.stage_configs import GenerateDatasetConfig
from slate_rl.stages import environment
from slate_rl.tracking.lineage import (
    LINEAGE_TAG,
    artifact_dir,
    find_or_run,
    get_finished_run,
    legacy_applies,
    lineage_key,
    parse_run_uri,
)
from slate_rl.tracking.runs import StageRun, stage_run

STAGE = "generate_dataset"
ARTIFACT = "dataset"
# The fields of slate-rl 0.1.0's GenerateDatasetConfig (env_params was called env_overrides).
LEGACY_FIELDS = (
    "env",
    "preset",
    "n_sessions",
    "epsilon",
    "seed",
    "sim_seed",
    "item_embeddings",
    "chunk_size",
    "env_params",
)
log = logging.getLogger("slate_rl")


def make_env(config: GenerateDatasetConfig) -> envs.TopicRec:
    """The simulator a dataset configuration describes."""
    return environment.make_env(config, sim_seed=config.sim_seed)


def identity(config: GenerateDatasetConfig, spec: EnvSpec) -> dict[str, Any]:
    """What determines the dataset (the lineage key is its hash): the environment spec and the fields that differ
    from their defaults (the preset's name and the table's path do not count, only the values they give)."""
    return {**config.changed_fields(exclude=("preset", "item_embeddings", "env_params")), **spec.as_params()}


def legacy_identity(config: GenerateDatasetConfig, env: envs.TopicRec) -> dict[str, Any]:
    """The identity slate-rl 0.1.0 hashed (every simulator parameter and field), to find the datasets it wrote."""
    return {
        "env": config.env,
        **{f"sim.{k}": v for k, v in env.params.as_dict().items()},
        "embeddings": envs.fingerprint(env.item_embeddings),
        "n_sessions": config.n_sessions,
        "epsilon": float(config.epsilon),
        "seed": config.seed,
        "sim_seed": config.sim_seed,
        "chunk_size": config.chunk_size,
    }


def lookup_keys(config: GenerateDatasetConfig) -> tuple[str, ...]:
    """The lineage key of this configuration's dataset, then the key slate-rl 0.1.0 gave it (when it could)."""
    env = make_env(config)
    current = lineage_key(STAGE, identity(config, EnvSpec.of(env)))
    if not legacy_applies(config.changed_fields(), LEGACY_FIELDS):
        return (current,)
    return current, lineage_key(STAGE, legacy_identity(config, env))


def run(config: GenerateDatasetConfig, parent: StageRun | None = None, experiment_name: str | None = None) -> str:
    """Generate the dataset inside an MLflow run; returns the run id."""
    with stage_run(
        STAGE,
        run_name=f"{STAGE}/{config.env}/seed{config.seed}",
        parent=parent,
        experiment_name=experiment_name,
        tags={"env": config.env, "preset": config.preset},
    ) as mlrun:
        env = make_env(config)
        spec = EnvSpec.of(env)
        key = lineage_key(STAGE, identity(config, spec))
        mlrun.set_tags({"seed": config.seed, LINEAGE_TAG: key, "embeddings": spec.item_table})
        mlrun.log_params({**config.as_params(), **{f"sim.{k}": v for k, v in env.params.as_dict().items()}})
        environment.log_spec(mlrun, spec)
        with tempfile.TemporaryDirectory(prefix="slate-rl-dataset-") as tmp:
            folder = Path(tmp) / ARTIFACT
            stats = write_dataset(env, config, folder)
            mlrun.log_metrics(stats)
            mlrun.log_artifacts(folder, ARTIFACT)
        return mlrun.run_id


def write_dataset(env: envs.TopicRec, config: GenerateDatasetConfig, folder: Path) -> dict[str, float]:
    """Play the ε-greedy oracle for `n_sessions` sessions in chunks of users and write them to `folder`."""
    n, horizon, size = int(config.n_sessions), env.episode_length, env.slate_size
    policy = EpsilonGreedyOracle(env.num_items, size, float(config.epsilon), int(config.seed))
    meta = {
        "env": config.env,
        "env_params": env.params.as_dict(),
        "embeddings": envs.fingerprint(env.item_embeddings),
        "env_spec": EnvSpec.of(env).as_dict(),
        "n_sessions": n,
        "episode_length": horizon,
        "slate_size": size,
        "num_items": env.num_items,
        "policy": "epsilon_greedy_oracle",
        "epsilon": float(config.epsilon),
        "seed": int(config.seed),
        "sim_seed": int(config.sim_seed),
        "chunk_size": int(config.chunk_size),
    }
    writer = LoggedSessionsWriter(folder, n, horizon, size, env.initial_slate.cpu().numpy(), meta)
    returns = torch.zeros(n)
    click_histogram = torch.zeros(size + 1, dtype=torch.long)
    bored_steps = 0
    started = time.perf_counter()
    try:
        with Progress(n * horizon, f"{STAGE} {config.env}", unit="user-steps") as progress, torch.no_grad():
            for start in range(0, n, int(config.chunk_size)):
                m = min(int(config.chunk_size), n - start)
                slates = np.empty((m, horizon, size), dtype=np.int16)
                clicks = np.empty((m, horizon, size), dtype=np.uint8)
                obs, info = env.reset(m)
                reset_clicks = obs["clicks"].numpy().astype(np.uint8)
                policy.start(m)
                for t in range(horizon):
                    obs, reward, _, info = env.step(policy.act(obs, info))
                    slates[:, t] = obs["slate"].numpy()
                    clicks[:, t] = obs["clicks"].numpy()
                    returns[start : start + m] += reward
                    click_histogram += torch.bincount(obs["clicks"].sum(dim=1), minlength=size + 1)
                    bored_steps += int(info["bored"].any(dim=1).sum())
                    progress.advance(m)
                writer.write_chunk(start, slates, clicks, reset_clicks)
        seconds = time.perf_counter() - started
        steps = n * horizon
        stats = {
            "mean_return": float(returns.mean()),
            "std_return": float(returns.std()) if n > 1 else 0.0,
            "clicks_per_step": float(returns.sum()) / steps,
            "bored_step_share": bored_steps / steps,
            "zero_click_step_share": float(click_histogram[0]) / steps,
            "generation_seconds": seconds,
            "user_steps_per_second": steps / seconds,
        }
        writer.finish(stats)
    except BaseException:
        writer.abort()
        raise
    stats["dataset_megabytes"] = sum(f.stat().st_size for f in folder.iterdir()) / 1e6
    log.info(
        "%s: %d sessions, mean return %.2f, %.1f%% steps with a bored topic, %.0f user-steps/s",
        STAGE,
        n,
        stats["mean_return"],
        100 * stats["bored_step_share"],
        stats["user_steps_per_second"],
    )
    return stats


def load_from_run(run_ref: str) -> LoggedSessions:
    """The logged sessions of a FINISHED generate_dataset run, or those of a collect run's offline dataset (GeMS
    pretrained on it acts for offline agents), from 'runs:/<id>[/dataset]' or a run id."""
    run_id, _ = parse_run_uri(run_ref)
    run = get_finished_run(run_id)
    if run.data.tags.get("stage") == "collect":
        from slate_rl.data.loading import load_offline

        return LoggedSessions.from_episodes(load_offline(run_id))
    if run.data.tags.get("stage") != STAGE:
        raise SlateRLError(
            f"run {run_id} is a {run.data.tags.get('stage', 'non-slate-rl')!r} run, not a {STAGE!r} or 'collect' run"
        )
    return load_logged_sessions(artifact_dir(run, ARTIFACT))


def find_or_generate(config: GenerateDatasetConfig, parent: StageRun | None) -> str:
    """Run id of a FINISHED dataset run with this configuration; generates one as a child run if there is none."""
    return find_or_run(STAGE, lookup_keys(config), lambda: run(config, parent=parent))


def resolve_dataset(cfg: Any, parent: StageRun) -> tuple[str, LoggedSessions]:
    """The logged dataset a downstream stage (config `cfg`, run `parent`) trains on: `cfg.dataset` (a finished
    dataset run, checked to come from the simulator of `cfg`'s environment spec), or the preset's dataset for that
    simulator, found by lineage or generated first as a child run."""
    if cfg.dataset:
        run_id, _ = parse_run_uri(cfg.dataset)
        data = load_from_run(run_id)
        environment.check_upstream(environment.spec_of(cfg), run_id, "dataset", cfg.allow_env_mismatch, parent)
        return run_id, data
    config = GenerateDatasetConfig.resolve(
        cfg.env, cfg.preset, item_embeddings=cfg.item_embeddings or None, env_params=cfg.env_params or None
    )
    run_id = find_or_generate(config, parent)
    return run_id, load_from_run(run_id)
