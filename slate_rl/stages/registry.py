"""`slate-rl registry`: choosing collection policies. Versions of the per-environment registered model come from
train_online runs (the best policy automatically, any checkpoint on request) or the built-in random policy;
the aliases `expert`, `medium`, `random` say which version `collect` uses, set by hand or by rule (`select`)."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

import torch
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
PERIODIC = re.compile(r"episode_(\d+)")  # the name of a periodic checkpoint of a train_online run
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


def register_random(
    env: str,
    seed: int,
    preset: str = "paper",
    experiment_name: str | None = None,
    simulator: TopicRec | None = None,
) -> str:
    """Register the built-in uniform-random policy (R distinct items per step) for `env`, playing `simulator`
    (default: the preset's); returns the version."""
    simulator = simulator or make_env(GenerateDatasetConfig.resolve(env, preset))
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


def load_policy(env: str, reference: str, simulator: TopicRec | None = None, device: str | torch.device = "cpu"):
    """(agent, simulator, version) for a version number or alias of `env`'s registered model; the agent acts in
    `simulator` when one is given (on its device), else in the simulator it was trained on, built on `device`."""
    version = models.get_version(env, reference)
    payload = check_payload(models.load_version_payload(version))
    if payload["env"] != env:
        raise SlateRLError(
            f"version {version.version} of {version.name} was trained on {payload['env']!r}, not {env!r}"
        )
    agent, simulator = agent_from_payload(payload, simulator, device)
    return agent, simulator, version


@dataclass
class Selection:
    """What `select_policies` chose from a train_online run, and why: the validation returns involved."""

    env: str
    run_id: str
    fraction: float
    best_episode: int
    best_val_return: float
    candidates: list[tuple[int, float]]  # (episode, validation return) of each periodic checkpoint that has one
    medium_episode: int
    expert_version: str
    medium_version: str
    random_version: str | None  # None: the alias `random` was already set and stays as it is
    random_reason: str = ""  # why the alias `random` was (re)pointed
    untrained: list[int] = field(default_factory=list)  # checkpoint episodes before the first update, left out

    @property
    def target(self) -> float:
        return self.fraction * self.best_val_return

    def describe(self) -> str:
        """The choice as lines of text: the rule, the candidates, the versions and aliases."""
        medium = dict(self.candidates)[self.medium_episode]
        lines = [
            f"run {self.run_id} on {self.env}: best validation return {self.best_val_return:.2f} "
            f"(episode {self.best_episode})",
            f"  expert: the best checkpoint -> version {self.expert_version}",
            f"  medium: the periodic checkpoint whose validation return is closest to {self.fraction:g} x "
            f"{self.best_val_return:.2f} = {self.target:.2f}: episode {self.medium_episode} ({medium:.2f}) "
            f"-> version {self.medium_version}",
            "    candidates (episode: validation return): "
            + ", ".join(f"{episode}: {value:.2f}" for episode, value in self.candidates),
        ]
        if self.untrained:
            lines.append(
                "    left out, taken before the first update (the initial network): "
                + ", ".join(map(str, self.untrained))
            )
        lines.append(
            f"  random: the built-in uniform-random policy -> version {self.random_version} ({self.random_reason})"
            if self.random_version is not None
            else "  random: alias already set on this simulator, left as it is"
        )
        return "\n".join(lines)


def check_fraction(medium: float) -> None:
    """Refuse a medium fraction outside (0, 1)."""
    if not 0.0 < medium < 1.0:
        raise SlateRLError(
            f"the medium fraction must lie strictly between 0 and 1 (a share of the best validation return, "
            f"e.g. 0.5), got {medium}"
        )


def select_policies(run_ref: str, medium: float) -> Selection:
    """Choose collection policies from a finished train_online run by rule, and point the aliases at them:
    `expert` = its best checkpoint, `medium` = the periodic checkpoint whose validation return is closest to
    `medium` x the best validation return (the earliest on a tie; checkpoints taken before the first update are left
    out), `random` = the built-in random policy on the
    run's simulator, unless the alias already points at one on that simulator. A version registered before (by the
    run itself or an earlier selection) is reused."""
    check_fraction(medium)
    run_id, _ = parse_run_uri(run_ref)
    run = get_finished_run(run_id, "train_online")
    env, metrics = run.data.tags["env"], run.data.metrics
    if "best_val_return" not in metrics or "best_episode" not in metrics:
        raise SlateRLError(f"run {run_id} ({run.data.tags.get('method')}) never validated: it has no best checkpoint")
    best, best_episode = float(metrics["best_val_return"]), int(metrics["best_episode"])
    if best <= 0:
        raise SlateRLError(f"run {run_id}: its best validation return is {best:g}; a share of it chooses nothing")
    episodes = sorted(
        int(match[1])
        for f in MlflowClient().list_artifacts(run_id, "checkpoints")
        if (match := PERIODIC.fullmatch(f.path.rsplit("/", 1)[-1]))
    )
    if not episodes:
        raise SlateRLError(
            f"run {run_id} has no periodic checkpoints (checkpoints/episode_*) to choose a medium policy from; "
            "train with --save-every below --episodes (a multiple of --val-every)"
        )
    curve = dict(metric_curve(run_id, "val_return"))
    untrained = _before_first_update(run_id, episodes)
    candidates = [(episode, curve[episode]) for episode in episodes if episode in curve and episode not in untrained]
    if not candidates:
        raise SlateRLError(
            f"none of the periodic checkpoints of run {run_id} (episodes {', '.join(map(str, episodes))}) has a "
            "validation return after the first update: train with --save-every a multiple of --val-every, beyond "
            "the warm-up"
        )
    target = medium * best
    chosen = min(candidates, key=lambda item: (abs(item[1] - target), item[0]))[0]
    expert_version = _registered(env, run_id, "best") or register_checkpoint(run_id, "best")
    checkpoint = f"episode_{chosen:06d}"
    medium_version = _registered(env, run_id, checkpoint) or register_checkpoint(run_id, checkpoint)
    models.set_alias(env, expert_version, "expert")
    models.set_alias(env, medium_version, "medium")
    _, simulator, _ = load_policy(env, expert_version)
    random_version, reason = _random_on(env, simulator, run.data.tags.get("preset", "paper"))
    return Selection(
        env,
        run_id,
        medium,
        best_episode,
        best,
        candidates,
        chosen,
        expert_version,
        medium_version,
        random_version,
        reason,
        untrained,
    )


def _before_first_update(run_id: str, episodes: list[int]) -> list[int]:
    """The checkpoint episodes taken before the run's first update (during a warm-up without updates): their
    policy is the initial network, not a partly trained one. From the updates counted at each validation
    (`time/updates`); none for a run that did not log them."""
    counts = metric_curve(run_id, "time/updates")
    return [episode for episode in episodes if counts and sum(n for step, n in counts if step <= episode) == 0]


def _random_on(env: str, simulator: TopicRec, preset: str) -> tuple[str | None, str]:
    """Point the alias `random` at a built-in random policy playing `simulator` (one registered before if any):
    (the version, why), or (None, '') when the alias already points at one on that simulator."""
    spec = EnvSpec.of(simulator)
    current = models.aliases(env).get("random")
    if current is None:
        reason = "the alias was unset"
    else:
        differences = spec.differences(EnvSpec.of(load_policy(env, current)[1]))
        if not differences:
            return None, ""
        what, mine, theirs = differences[0]
        reason = f"version {current}, which the alias held, plays another simulator: {what} {theirs} vs {mine} here"
    same = [
        str(v.version)
        for v in models.versions(env)
        if v.tags.get("checkpoint") == "builtin"
        and v.tags.get("method") == "random"
        and (logged := EnvSpec.from_params(v.tags)) is not None
        and not spec.differences(logged)
    ]
    version = same[-1] if same else register_random(env, seed=0, preset=preset, simulator=simulator)
    models.set_alias(env, version, "random")
    return version, reason


def _registered(env: str, run_id: str, checkpoint: str) -> str | None:
    """The newest version of `env`'s model registered from checkpoint `checkpoint` of run `run_id`, or None."""
    found = [
        v for v in models.versions(env) if v.tags.get("checkpoint") == checkpoint and v.tags.get("run_id") == run_id
    ]
    return str(found[-1].version) if found else None
