"""Helpers for the offline-dataset tests (this module holds no tests): episodes from the real simulator and
hand-made tiny datasets."""

from __future__ import annotations

from typing import Any

import numpy as np

from slate_rl import envs
from slate_rl.data import EpisodeRecorder, OfflineEpisodes
from slate_rl.envs.evaluate import play
from slate_rl.envs.policies import EpsilonGreedyOracle, RandomPolicy

HORIZON = 6


def small_env(env: str = "focused_topdown", **overrides: Any) -> envs.TopicRec:
    """A preset environment with a short horizon (the tests do not need 100 steps)."""
    return envs.make(env, sim_seed=7, episode_length=HORIZON, **overrides)


def collect(
    env: envs.TopicRec,
    source: str,
    n: int,
    *,
    seed: int = 0,
    epsilon: float | None = None,
    action_dim: int | None = None,
    oracle: bool = False,
    relevances: bool = False,
    blocks: int = 1,
) -> OfflineEpisodes:
    """n episodes of random slates (epsilon None) or of the ε-greedy oracle, played in `blocks` blocks of users.

    With action_dim, the recorded "policy action" of step t is a deterministic function of the slate it produced
    (its item ids / 1000 in the first slots), so that tests can check the alignment of actions and slates.
    """
    policy = (
        RandomPolicy(env.num_items, env.slate_size, seed)
        if epsilon is None
        else EpsilonGreedyOracle(env.num_items, env.slate_size, epsilon, seed)
    )
    recorder = EpisodeRecorder.for_env(env, n, source, action_dim=action_dim, oracle=oracle, relevances=relevances)
    sizes = [len(block) for block in np.array_split(np.arange(n), blocks)]
    for size in sizes:
        if action_dim is None and not relevances:
            play(env, policy, size, recorder.on_step)
            continue
        obs, info = env.reset(size)
        recorder.reset(obs, info, relevances=env.item_relevances() if relevances else None)
        policy.start(size)
        for _ in range(env.episode_length):
            obs, _, _, info = env.step(policy.act(obs, info))
            actions = None
            if action_dim is not None:
                actions = np.zeros((size, action_dim), dtype=np.float32)
                width = min(action_dim, env.slate_size)
                actions[:, :width] = obs["slate"].numpy()[:, :width] / 1000.0
            recorder.step(obs, info, actions=actions, relevances=env.item_relevances() if relevances else None)
    return recorder.finish({"policy": "random" if epsilon is None else f"epsilon_greedy_{epsilon}", "seed": seed})


def tiny_episodes(
    slates: list,
    clicks: list,
    sources: list | None = None,
    source_names: tuple = ("expert",),
    metadata: dict | None = None,
) -> OfflineEpisodes:
    """Hand-made episodes: slates and clicks as nested lists (E, T+1, R); rewards derived from the clicks."""
    slate_array = np.array(slates, dtype=np.int16)
    click_array = np.array(clicks, dtype=np.uint8)
    codes = np.zeros(len(slates), dtype=np.int16) if sources is None else np.array(sources, dtype=np.int16)
    return OfflineEpisodes(
        slate_array,
        click_array,
        click_array[:, 1:].sum(axis=2, dtype=np.float32),
        codes,
        source_names,
        metadata if metadata is not None else {"env_params": {"num_items": 10}},
    )
