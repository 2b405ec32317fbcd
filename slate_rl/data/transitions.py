"""The D4RL-style flat view of `OfflineEpisodes`: one row per transition (N = E * T), episodes in order.

Row n = (episode e, step t), with e = episode_ids[n], t = timesteps[n]:

    slates, clicks             int16 / uint8 (N, R)  o_t (row t = 0 of an episode holds the reset observation)
    next_slates, next_clicks   int16 / uint8 (N, R)  o_{t+1}: the next step of the same episode (its slate is the
                                                     slate action a_t; never o_t itself, never another episode)
    rewards                    float32 (N,)          r_t = next_clicks.sum(): clicks on the slate chosen after o_t
    terminals                  bool (N,)             all False: nothing terminates in TopicRec
    timeouts                   bool (N,)             True at t = T - 1: the fixed horizon truncates the episode
    episode_ids                int32 (N,)            0..E-1
    timesteps                  int16 (N,)            0..T-1
    sources                    int16 (N,)            source code of the episode, into `source_names`
    actions                    float32 (N, A)        optional policy action a_t (e.g. the GeMS latent)

Oracle arrays stay per episode, (E, T+1, ...) as in `OfflineEpisodes`: index them with [episode_ids, timesteps] for
o_t and [episode_ids, timesteps + 1] for o_{t+1}.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from slate_rl.data.offline import ORACLE_FIELDS, OfflineEpisodes
from slate_rl.errors import SlateRLError

TRANSITION_KEYS = (
    "slates",
    "clicks",
    "next_slates",
    "next_clicks",
    "rewards",
    "terminals",
    "timeouts",
    "episode_ids",
    "timesteps",
    "sources",
)


@dataclass(eq=False)
class OfflineTransitions:
    """Flat transition arrays (`data[key]`, see the module docs), the source names, metadata and per-episode oracle."""

    data: dict[str, np.ndarray]
    source_names: Sequence[str]
    metadata: dict[str, Any]
    oracle: dict[str, np.ndarray] | None = None

    def __getitem__(self, key: str) -> np.ndarray:
        return self.data[key]

    def __len__(self) -> int:
        return int(self.data["rewards"].shape[0])


def to_transitions(episodes: OfflineEpisodes) -> OfflineTransitions:
    """Flatten `episodes` into one row per transition."""
    e, horizon, size = episodes.num_episodes, episodes.horizon, episodes.slate_size
    n = e * horizon
    timesteps = np.tile(np.arange(horizon, dtype=np.int16), e)
    data = {
        "slates": episodes.slates[:, :-1].reshape(n, size),
        "clicks": episodes.clicks[:, :-1].reshape(n, size),
        "next_slates": episodes.slates[:, 1:].reshape(n, size),
        "next_clicks": episodes.clicks[:, 1:].reshape(n, size),
        "rewards": episodes.rewards.reshape(n),
        "terminals": np.zeros(n, dtype=bool),
        "timeouts": timesteps == horizon - 1,
        "episode_ids": np.repeat(np.arange(e, dtype=np.int32), horizon),
        "timesteps": timesteps,
        "sources": np.repeat(episodes.sources, horizon),
    }
    if episodes.actions is not None:
        data["actions"] = episodes.actions.reshape(n, -1)
    oracle = {name: getattr(episodes, name) for name in ORACLE_FIELDS if getattr(episodes, name) is not None}
    return OfflineTransitions(data, tuple(episodes.source_names), dict(episodes.metadata), oracle or None)


def to_episodes(transitions: OfflineTransitions) -> OfflineEpisodes:
    """Rebuild the episodes from complete, ordered transition rows; SlateRLError if the rows are not such episodes."""
    data = transitions.data
    missing = [key for key in TRANSITION_KEYS if key not in data]
    if missing:
        raise SlateRLError(f"transition arrays are missing {', '.join(missing)}")
    timesteps = data["timesteps"]
    n = timesteps.shape[0]
    horizon = int(timesteps.max()) + 1 if n else 0
    if n == 0 or n % horizon:
        raise SlateRLError(f"{n} transition rows cannot be complete episodes of {horizon} steps")
    e = n // horizon
    if not (
        np.array_equal(timesteps, np.tile(np.arange(horizon), e))
        and np.array_equal(data["episode_ids"], np.repeat(np.arange(e), horizon))
    ):
        raise SlateRLError(
            "transition rows must be whole episodes in order (episode_ids 0, 0, ..., timesteps "
            "0..T-1 within each); these are shuffled, filtered or truncated"
        )
    if data["terminals"].any() or not np.array_equal(data["timeouts"], timesteps == horizon - 1):
        raise SlateRLError("terminals must be all False and timeouts True exactly at the last step of each episode")
    size = data["slates"].shape[1]
    slates = data["slates"].reshape(e, horizon, size)
    clicks = data["clicks"].reshape(e, horizon, size)
    next_slates = data["next_slates"].reshape(e, horizon, size)
    next_clicks = data["next_clicks"].reshape(e, horizon, size)
    if not (np.array_equal(next_slates[:, :-1], slates[:, 1:]) and np.array_equal(next_clicks[:, :-1], clicks[:, 1:])):
        raise SlateRLError(
            "next_slates / next_clicks of step t must equal slates / clicks of step t + 1 of the same "
            "episode; these arrays are misaligned"
        )
    sources = data["sources"].reshape(e, horizon)
    if not (sources == sources[:, :1]).all():
        raise SlateRLError("the source code changes within an episode")
    actions = data.get("actions")
    return OfflineEpisodes(
        slates=np.concatenate([slates, next_slates[:, -1:]], axis=1),
        clicks=np.concatenate([clicks, next_clicks[:, -1:]], axis=1),
        rewards=data["rewards"].reshape(e, horizon),
        sources=np.ascontiguousarray(sources[:, 0]),
        source_names=transitions.source_names,
        metadata=transitions.metadata,
        actions=None if actions is None else actions.reshape(e, horizon, -1),
        **(transitions.oracle or {}),
    )
