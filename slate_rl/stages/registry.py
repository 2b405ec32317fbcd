"""`slate-rl registry`: choosing collection policies. Versions of the per-environment registered model come from
train_online runs (the best policy automatically, any checkpoint on request) or the built-in random policy;
the aliases `expert`, `medium`, `random` say which version `collect` uses."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from mlflow.tracking import MlflowClient

from slate_rl.agents.export import agent_from_payload, check_payload, policy_payload
from slate_rl.agents.methods import build_agent
from slate_rl.envs.embeddings import fingerprint
from slate_rl.envs.spec import EnvSpec
from slate_rl.envs.topicrec import TopicRec
from slate_rl.errors import SlateRLError
from slate_rl.safe_load import torch_load
from slate_rl.stage_configs import GenerateDatasetConfig
from slate_rl.stages.generate_dataset import make_env
from slate_rl.tracking import models
from slate_rl.tracking.lineage import artifact_dir, get_finished_run, parse_run_uri
from slate_rl.tracking.results import metric_curve
from slate_rl.tracking.runs import StageRun, stage_run

BUILTIN_STAGE = "builtin_policy"
log = logging.getLogger("slate_rl")


@dataclass
class VersionRow:
    """One line of `registry list`."""

    version: str
    method: str
    seed: str
    episode: str
    val_return: str
    test_return: str
    aliases: str
    run_id: str


def list_versions(env: str) -> list[VersionRow]:
    by_version: dict[str, list[str]] = {}
    for alias, version in models.aliases(env).items():
        by_version.setdefault(version, []).append(alias)
    rows = []
    for v in models.versions(env):
        tags = v.tags
        rows.append(
            VersionRow(
                str(v.version),
                tags.get("method", "?"),
                tags.get("seed", ""),
                tags.get("episode", ""),
                _short(tags.get("val_return", "")),
                _short(tags.get("test_return", "")),
                ",".join(sorted(by_version.get(str(v.version), []))),
                v.run_id or "",
            )
        )
    return rows


def _short(value: str) -> str:
    try:
        return f"{float(value):.2f}"
    except ValueError:
        return value


def register_checkpoint(run_ref: str, checkpoint: str = "best") -> str:
    """Make checkpoint `checkpoint` ('best' or e.g. 'episode_050000') of a finished train_online run a new
    version of its environment's registered model; returns the version."""
    run_id, _ = parse_run_uri(run_ref)
    run = get_finished_run(run_id, "train_online")
    client = MlflowClient()
    try:
        folder = artifact_dir(run, f"checkpoints/{checkpoint}")
    except SlateRLError as exc:
        available = [f.path.split("/")[-1] for f in client.list_artifacts(run_id, "checkpoints")]
        raise SlateRLError(
            f"run {run_id} has no checkpoint {checkpoint!r}; it has: {', '.join(available) or 'none'}"
        ) from exc
    payload = check_payload(torch_load(folder / models.POLICY_FILE, "policy file"))
    episode = int(payload["episode"])
    curve = dict(metric_curve(run_id, "val_return"))
    tags = {
        "method": payload["method"],
        "seed": payload["seed"],
        "episode": episode,
        "checkpoint": checkpoint,
        "val_return": curve.get(episode, ""),
        "run_id": run_id,
        "env": payload["env"],
        "preset": run.data.tags.get("preset", ""),
        **EnvSpec.from_params_of(
            payload["env"], payload["env_params"], fingerprint(payload["item_embeddings"])
        ).as_params(),
    }
    if checkpoint == "best":
        tags["test_return"] = run.data.metrics.get("test_return", "")
    path = models.log_policy(StageRun(client, run_id), payload, checkpoint)
    return str(models.register(payload["env"], run_id, path, tags).version)


def register_random(env: str, seed: int, preset: str = "paper", experiment_name: str | None = None) -> str:
    """Register the built-in uniform-random policy (R distinct items per step) for `env`; returns the version."""
    simulator = make_env(GenerateDatasetConfig.resolve(env, preset))
    agent = build_agent("random", simulator, seed)
    with stage_run(
        BUILTIN_STAGE,
        run_name=f"random/{env}/seed{seed}",
        experiment_name=experiment_name,
        tags={"env": env, "method": "random", "seed": seed, "preset": preset},
    ) as mlrun:
        payload = policy_payload(agent, simulator, seed=seed)
        path = models.log_policy(mlrun, payload, "random")
        version = models.register(
            env,
            mlrun.run_id,
            path,
            {
                "method": "random",
                "seed": seed,
                "episode": 0,
                "checkpoint": "builtin",
                "run_id": mlrun.run_id,
                "env": env,
                "preset": preset,
                **EnvSpec.of(simulator).as_params(),
            },
        )
        return str(version.version)


def load_policy(env: str, reference: str, simulator: TopicRec | None = None):
    """(agent, simulator, version) for a version number or alias of `env`'s registered model; the agent acts in
    `simulator` when one is given, else in the simulator it was trained on."""
    version = models.get_version(env, reference)
    payload = check_payload(models.load_version_payload(version))
    if payload["env"] != env:
        raise SlateRLError(
            f"version {version.version} of {version.name} was trained on {payload['env']!r}, not {env!r}"
        )
    agent, simulator = agent_from_payload(payload, simulator)
    return agent, simulator, version
