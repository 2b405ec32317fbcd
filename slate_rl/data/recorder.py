"""`EpisodeRecorder`: fills preallocated `OfflineEpisodes` arrays while batches of users are played.

    recorder = EpisodeRecorder.for_env(env, num_episodes=10_000, source="expert", action_dim=32, oracle=True)
    for block in blocks:                       # any number of blocks, each of n users played together
        obs, info = env.reset(n)
        recorder.reset(obs, info)              # the reset observation o_0 of the block's n episodes
        for t in range(env.episode_length):
            latent = agent(...); obs, _, _, info = env.step(ranker(latent))
            recorder.step(obs, info, actions=latent)   # o_{t+1} and the action a_t that produced it
    episodes = recorder.finish(source_info={"model_version": 3, "alias": "expert", "run_id": run_id})

With the built-in policies, `slate_rl.envs.evaluate.play(env, policy, n, recorder.on_step)` records a block.
Tensors (any device) and numpy arrays are both accepted. Rewards are the clicks of each new observation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from slate_rl.data.offline import OfflineEpisodes
from slate_rl.errors import SlateRLError

if TYPE_CHECKING:
    from slate_rl.envs.topicrec import TopicRec


def _numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # torch tensor, on any device
        value = value.detach().cpu().numpy()
    return np.asarray(value)


class EpisodeRecorder:
    """Collects `num_episodes` episodes of `episode_length` steps from one source, block after block.

    Args:
        source: the source label of every recorded episode (e.g. 'expert').
        action_dim: record a float action of this size per step (`step(..., actions=...)` becomes mandatory).
        oracle: record info['user_state'] and info['bored'] with every observation.
        relevances: record every item's relevance with every observation (`relevances=` becomes mandatory); large:
            num_episodes x (episode_length + 1) x num_items float16 (10,000 episodes x 1,000 items: 2 GB).
        metadata: the dataset's metadata (see `slate_rl.data.offline`).
    """

    def __init__(
        self,
        num_episodes: int,
        episode_length: int,
        slate_size: int,
        source: str,
        *,
        action_dim: int | None = None,
        oracle: bool = False,
        relevances: bool = False,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        if int(num_episodes) < 1 or int(episode_length) < 1:
            raise SlateRLError(f"need num_episodes >= 1 and episode_length >= 1 (got {num_episodes}, {episode_length})")
        self.num_episodes, self.horizon, self.source = int(num_episodes), int(episode_length), str(source)
        shape = (self.num_episodes, self.horizon + 1, int(slate_size))
        self.slates = np.zeros(shape, dtype=np.int16)
        self.clicks = np.zeros(shape, dtype=np.uint8)
        self.actions = (
            None
            if action_dim is None
            else np.zeros((self.num_episodes, self.horizon, int(action_dim)), dtype=np.float32)
        )
        self.oracle, self.relevances = bool(oracle), bool(relevances)
        self.oracle_arrays: dict[str, np.ndarray] = {}
        self.metadata = dict(metadata or {})
        self.filled = 0  # episodes of finished blocks
        self.rows = slice(0, 0)  # the current block
        self.t = self.horizon  # steps recorded in the current block

    @classmethod
    def for_env(cls, env: TopicRec, num_episodes: int, source: str, **kwargs: Any) -> EpisodeRecorder:
        """A recorder sized for `env`, its metadata holding the environment's name, parameters and sim seed."""
        metadata = {
            "env": env.name,
            "env_params": env.params.as_dict(),
            "sim_seed": int(env.stream.seed),
            **kwargs.pop("metadata", {}),
        }
        return cls(num_episodes, env.episode_length, env.slate_size, source, metadata=metadata, **kwargs)

    # ------------------------------------------------------------------ recording
    def reset(self, obs: dict[str, Any], info: dict[str, Any] | None = None, relevances: Any = None) -> slice:
        """Start a block with its reset observations (n users); returns the block's episode rows."""
        if self.t != self.horizon:
            raise SlateRLError(f"the current block has {self.t} of {self.horizon} steps; finish it before a reset")
        n = _numpy(obs["slate"]).shape[0]
        if self.filled + n > self.num_episodes:
            raise SlateRLError(
                f"a block of {n} users would exceed the {self.num_episodes} episodes this recorder "
                f"holds ({self.filled} recorded)"
            )
        self.rows, self.t = slice(self.filled, self.filled + n), 0
        self._observe(0, obs, info, relevances)
        return self.rows

    def step(
        self, obs: dict[str, Any], info: dict[str, Any] | None = None, actions: Any = None, relevances: Any = None
    ) -> None:
        """Record observation o_{t+1} of the block and, when recording actions, a_t (which produced its slate)."""
        if self.rows.stop == self.rows.start or self.t >= self.horizon:
            raise SlateRLError(
                f"step() needs a block started with reset() that has fewer than {self.horizon} recorded steps"
            )
        if (actions is None) != (self.actions is None):
            raise SlateRLError("pass actions= at every step if and only if the recorder was built with action_dim")
        if self.actions is not None:
            self.actions[self.rows, self.t] = _numpy(actions)
        self.t += 1
        self._observe(self.t, obs, info, relevances)
        if self.t == self.horizon:
            self.filled = self.rows.stop

    def on_step(self, t: int, obs: dict[str, Any], reward: Any, info: dict[str, Any]) -> None:
        """Callback for `slate_rl.envs.evaluate.play` (t = 0 is the reset observation)."""
        if t == 0:
            self.reset(obs, info)
        else:
            self.step(obs, info)

    def _observe(self, t: int, obs: dict[str, Any], info: dict[str, Any] | None, relevances: Any) -> None:
        self.slates[self.rows, t] = _numpy(obs["slate"])
        self.clicks[self.rows, t] = _numpy(obs["clicks"])
        if self.oracle:
            if info is None or "user_state" not in info or "bored" not in info:
                raise SlateRLError(
                    "oracle=True needs the simulator's info (with 'user_state' and 'bored') at reset() and every step()"
                )
            self._store("user_states", t, info["user_state"], np.float32)
            self._store("bored", t, info["bored"], np.bool_)
        if (relevances is None) == self.relevances:
            raise SlateRLError(
                "pass relevances= (e.g. env.item_relevances()) at reset() and every step() if and only "
                "if the recorder was built with relevances=True"
            )
        if self.relevances:
            self._store("item_relevances", t, relevances, np.float16)

    def _store(self, name: str, t: int, value: Any, dtype: type) -> None:
        value = _numpy(value)
        if name not in self.oracle_arrays:
            self.oracle_arrays[name] = np.zeros((self.num_episodes, self.horizon + 1, value.shape[-1]), dtype=dtype)
        self.oracle_arrays[name][self.rows, t] = value

    # ------------------------------------------------------------------ result
    def finish(
        self, source_info: dict[str, Any] | None = None, metadata: dict[str, Any] | None = None
    ) -> OfflineEpisodes:
        """The recorded episodes; `source_info` describes the source (model version, alias, run, epsilon, seed...)."""
        if self.filled != self.num_episodes or self.t != self.horizon:
            raise SlateRLError(
                f"only {self.filled} of {self.num_episodes} episodes are complete; record them all before finish()"
            )
        meta = {**self.metadata, **(metadata or {})}
        meta["sources"] = {self.source: dict(source_info or {})}
        rewards = self.clicks[:, 1:].sum(axis=2, dtype=np.float32)
        return OfflineEpisodes(
            self.slates,
            self.clicks,
            rewards,
            np.zeros(self.num_episodes, dtype=np.int16),
            (self.source,),
            meta,
            actions=self.actions,
            **self.oracle_arrays,
        )
