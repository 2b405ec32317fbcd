"""Stage `collect`: offline datasets from registered policies chosen by alias (expert / medium / random), or a mix
of several, with per-episode source labels; Minari and D4RL-style npz formats and a quality report.

A collect run's lineage key holds its configuration, its simulator and the registered versions it played (an alias
stands for the version it pointed at), so that the pipeline finds the dataset of a configuration again."""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from slate_rl.agents.base import GREEDY, Agent
from slate_rl.data.d4rl_npz import write_npz
from slate_rl.data.minari_io import write_minari
from slate_rl.data.mixing import mix
from slate_rl.data.offline import OfflineEpisodes
from slate_rl.data.quality_report import write_quality_report
from slate_rl.data.recorder import EpisodeRecorder
from slate_rl.devices import DEVICE_TAG, resolve_device
from slate_rl.envs.evaluate import evaluate
from slate_rl.envs.policies import RandomPolicy
from slate_rl.envs.randomness import UserStream
from slate_rl.envs.spec import EnvSpec
from slate_rl.envs.topicrec import TopicRec
from slate_rl.errors import SlateRLError
from slate_rl.progress import Progress
from slate_rl.stage_configs import CollectConfig, CollectPart
from slate_rl.stages import environment
from slate_rl.stages.registry import load_policy
from slate_rl.tracking import models
from slate_rl.tracking.lineage import LINEAGE_TAG, lineage_key
from slate_rl.tracking.runs import StageRun, stage_run

STAGE = "collect"
ARTIFACT = "dataset"
NOT_IDENTITY_FIELDS = ("allow_env_mismatch", "item_embeddings", "env_params")  # the spec covers the simulator
log = logging.getLogger("slate_rl")


@dataclasses.dataclass
class Source:
    """A resolved part: the policy to play, its simulator, and where it comes from."""

    part: CollectPart
    name: str
    agent: Agent
    env: TopicRec
    version: Any


def run(
    cfg: CollectConfig, parent: StageRun | None = None, experiment_name: str | None = None, device: str = "cpu"
) -> str:
    """Collect the dataset inside an MLflow run (a child of `parent` when given); returns the run id. The policies
    and their simulators run on `device` ('cpu', 'cuda' or 'cuda:K'; tag `device`)."""
    label = cfg.name or ("policy" if cfg.policy else cfg.source())
    on = resolve_device(device)
    with stage_run(
        STAGE,
        run_name=f"{STAGE}/{cfg.env}/{label}",
        parent=parent,
        experiment_name=experiment_name,
        tags={"env": cfg.env, "preset": cfg.preset, "seed": cfg.seed, "quality": label, DEVICE_TAG: str(on)},
    ) as mlrun:
        mlrun.log_params(cfg.as_params())
        environment.log_spec(mlrun, environment.spec_of(cfg))
        sources = resolve_sources(cfg, mlrun, on)
        mlrun.set_tags({f"source.{s.name}": f"models:/{s.version.name}/{s.version.version}" for s in sources})
        mlrun.set_tags({LINEAGE_TAG: key(cfg, [str(s.version.version) for s in sources])})
        started = time.perf_counter()
        parts = [(collect_source(s, cfg, index), s.part.episodes) for index, s in enumerate(sources)]
        seconds = time.perf_counter() - started
        action_shapes = {None if e.actions is None else e.actions.shape[2:] for e, _ in parts}
        if len(action_shapes) > 1:  # e.g. a GeMS expert mixed with the random policy: no common action space
            log.info("%s: the sources act in different spaces; the mix keeps slates and clicks, not actions", STAGE)
            parts = [(dataclasses.replace(e, actions=None), n) for e, n in parts]
        episodes = parts[0][0] if len(parts) == 1 else mix(parts, seed=cfg.seed)
        episodes.metadata["reference_scores"] = reference_scores(cfg, sources[0].env)
        episodes.metadata["env_spec"] = EnvSpec.of(sources[0].env).as_dict()
        episodes.metadata["collection"] = {"seed": cfg.seed, "noise_scale": cfg.noise_scale, "name": label}
        mlrun.log_metrics({"collect_seconds": seconds, "episodes_per_second": episodes.num_episodes / seconds})
        write_outputs(episodes, cfg, label, mlrun, sources[0].env)
        log.info(
            "%s: %d episodes in %.1f s (%.0f episodes/s), mean return %.2f",
            STAGE,
            episodes.num_episodes,
            seconds,
            episodes.num_episodes / seconds,
            float(episodes.rewards.sum(axis=1).mean()),
        )
        return mlrun.run_id


def key(cfg: CollectConfig, versions: list[str]) -> str:
    """The lineage key of a dataset: its configuration's fields that differ from their defaults, its simulator, and
    the registered version each part plays (`versions`, in the order of `cfg.parts()`)."""
    return lineage_key(
        STAGE,
        {
            **cfg.changed_fields(exclude=NOT_IDENTITY_FIELDS),
            **environment.spec_of(cfg).as_params(),
            "versions": ",".join(versions),
        },
    )


def resolve_sources(cfg: CollectConfig, mlrun: StageRun, device: torch.device | None = None) -> list[Source]:
    """Each part's registered version, checked to exist, to belong to `cfg.env` and to have been trained on the
    simulator the config describes (else, with `allow_env_mismatch`, played on that simulator and tagged); the
    policies and simulators on `device` (default: the CPU)."""
    device = device or torch.device("cpu")
    sources, names = [], set()
    requested = environment.spec_of(cfg)
    for part in cfg.parts():
        env, reference = cfg.env, part.policy
        if reference.startswith("models:/"):
            env, reference = models.parse_model_uri(reference)
            if env != cfg.env:
                raise SlateRLError(f"{part.policy} is a policy of {env!r}, but env = {cfg.env!r}")
        agent, simulator, version = load_policy(env, reference, device=device)
        if part.epsilon_noise > 0 and not hasattr(agent, "decoder"):
            raise SlateRLError(
                f"epsilon_noise needs a policy acting in a latent space (SAC+GeMS / SAC+TopK); "
                f"version {version.version} is {agent.method}"
            )
        base = reference if not reference.isdigit() else f"v{reference}"
        name = base + ("_noisy" if part.epsilon_noise > 0 else "")
        name = next(f"{name}_{i}" for i in range(2, 100) if f"{name}_{i}" not in names) if name in names else name
        names.add(name)
        own = EnvSpec.of(simulator)
        if requested.differences(own):
            environment.check_same(
                requested,
                own,
                f"policy version {version.version} of {version.name}",
                f"source.{name}",
                cfg.allow_env_mismatch,
                mlrun,
            )
            agent, simulator, _ = load_policy(env, str(version.version), environment.make_env(cfg, device=device))
        sources.append(Source(part, name, agent, simulator, version))
    return sources


def collect_source(source: Source, cfg: CollectConfig, index: int) -> OfflineEpisodes:
    """Play the source's policy (deterministic actions, optional latent noise) for its episodes, in blocks."""
    env, agent, part = source.env, source.agent, source.part
    env.stream = UserStream(int(cfg.seed) + 7919 * index, env.device)  # fresh users, distinct per part
    noise = torch.Generator(device="cpu").manual_seed(int(cfg.seed) + 104729 * index)
    action_dim = agent.stored_action_dim or None
    recorder = EpisodeRecorder.for_env(
        env, part.episodes, source.name, action_dim=action_dim, oracle=cfg.oracle, relevances=cfg.relevances
    )
    with (
        Progress(part.episodes * env.episode_length, f"{STAGE} {source.name}", unit="user-steps") as progress,
        torch.no_grad(),
    ):
        for start in range(0, part.episodes, int(cfg.batch_size)):
            users = min(int(cfg.batch_size), part.episodes - start)
            obs, info = env.reset(users)
            recorder.reset(obs, info, relevances=_relevances(env, cfg))
            agent.start(users)
            for _ in range(env.episode_length):
                slates, action = agent.act(obs, GREEDY)
                if part.epsilon_noise > 0:
                    slates, action = _add_noise(agent, slates, action, part.epsilon_noise, cfg.noise_scale, noise)
                obs, _, _, info = env.step(slates)
                recorder.step(obs, info, actions=action if action_dim else None, relevances=_relevances(env, cfg))
                progress.advance(users)
    version = source.version
    return recorder.finish(
        source_info={
            "model": version.name,
            "model_version": str(version.version),
            "alias": part.policy,
            "run_id": version.run_id,
            "method": version.tags.get("method", ""),
            "epsilon_noise": part.epsilon_noise,
            "noise_scale": cfg.noise_scale if part.epsilon_noise > 0 else 0.0,
            "seed": int(cfg.seed) + 7919 * index,
        }
    )


def _relevances(env: TopicRec, cfg: CollectConfig) -> torch.Tensor | None:
    return env.item_relevances().half() if cfg.relevances else None


def _add_noise(
    agent: Agent,
    slates: torch.Tensor,
    action: torch.Tensor,
    probability: float,
    scale: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """With `probability` per user and step, Gaussian noise (std = scale x half-range) on the latent action,
    clamped to the action box, and the slate decoded again. The draws are made on the CPU (the generator's)."""
    decoder = agent.decoder
    noisy = (torch.rand(action.shape[0], generator=generator, device="cpu") < probability).nonzero().flatten()
    if noisy.numel() == 0:
        return slates, action
    action, slates, noisy = action.clone(), slates.clone(), noisy.to(action.device)
    step = torch.randn(noisy.numel(), action.shape[1], generator=generator, device="cpu").to(action.device)
    moved = action[noisy] + scale * decoder.action_scale * step
    action[noisy] = torch.maximum(
        torch.minimum(moved, decoder.action_center + decoder.action_scale), decoder.action_center - decoder.action_scale
    )
    slates[noisy] = decoder.decode(action[noisy])
    return slates, action


def reference_scores(cfg: CollectConfig, env: TopicRec) -> dict[str, float]:
    """Mean returns for score normalisation on this environment: the random policy (played here, on the test
    users), and the registered expert's test return when an expert alias is set."""
    simulator = TopicRec(env.params, env.item_embeddings, name=env.name)
    random = evaluate(
        simulator, RandomPolicy(env.num_items, env.slate_size, seed=cfg.seed), cfg.reference_episodes, reseed=True
    )
    scores = {"random": random.mean}
    if "expert" in models.aliases(cfg.env):
        expert = models.get_version(cfg.env, "expert").tags.get("test_return")
        if expert:
            scores["expert"] = float(expert)
    return scores


def write_outputs(episodes: OfflineEpisodes, cfg: CollectConfig, label: str, mlrun: StageRun, env: TopicRec) -> None:
    """Dataset files (artifact `dataset/npz`, `dataset/minari`) and the quality report (artifact `quality`)."""
    with tempfile.TemporaryDirectory(prefix="slate-rl-collect-") as tmp:
        root = Path(tmp)
        if cfg.format in ("npz", "both"):
            write_npz(episodes, root / "npz" / f"{label}.npz")
            mlrun.log_artifacts(root / "npz", f"{ARTIFACT}/npz")
        if cfg.format in ("minari", "both"):
            write_minari(
                episodes,
                root / "minari",
                label,
                description=f"slate-rl {STAGE} of {cfg.env} ({label}); sources: " + ", ".join(episodes.source_names),
            )
            mlrun.log_artifacts(root / "minari", f"{ARTIFACT}/minari")
        metrics = write_quality_report(
            episodes, root / "quality", item_topics=env.item_topics.cpu().numpy(), title=f"{cfg.env} / {label}"
        )
        mlrun.log_artifacts(root / "quality", "quality")
    mlrun.log_metrics(metrics)
