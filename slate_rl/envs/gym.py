"""Gymnasium adapter: a one-user `gymnasium.Env` and a vector env over N users, registered as `SlateRL/<name>-v0`.

Observations are `Dict(slate: MultiDiscrete([num_items] * R), clicks: MultiBinary(R))`, actions
`MultiDiscrete([num_items] * R)` (item ids; the simulator's -1 oracle placeholder is not part of the gym API).
The fixed 100-step horizon ends an episode by truncation (terminated is always False).
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from slate_rl import config

ID_PREFIX = "SlateRL"


def _spaces(num_items: int, slate_size: int) -> tuple[spaces.Dict, spaces.MultiDiscrete]:
    observation = spaces.Dict(
        {"slate": spaces.MultiDiscrete([num_items] * slate_size), "clicks": spaces.MultiBinary(slate_size)}
    )
    return observation, spaces.MultiDiscrete([num_items] * slate_size)


def _numpy_obs(obs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {"slate": obs["slate"].cpu().numpy().astype(np.int64), "clicks": obs["clicks"].cpu().numpy().astype(np.int8)}


def _numpy_info(info: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {key: value.cpu().numpy().copy() for key, value in info.items()}


def _make_sim(name: str, make_kwargs: dict[str, Any]):
    from slate_rl.envs import make

    return make(name, **make_kwargs)


class SlateRLEnv(gymnasium.Env):
    """One simulated user at a time. `reset(seed=s)` re-seeds the simulator's user stream with s."""

    # gymnasium declares `metadata` as a plain (instance) attribute, so it cannot be a ClassVar here
    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012

    def __init__(self, name: str = "focused_topdown", **make_kwargs: Any) -> None:
        self.sim = _make_sim(name, make_kwargs)
        self.observation_space, self.action_space = _spaces(self.sim.num_items, self.sim.slate_size)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self.sim.stream.seed = int(seed)
            self.sim.reset_random_state()
        obs, info = self.sim.reset(1)
        return _unbatch(_numpy_obs(obs)), _unbatch(_numpy_info(info))

    def step(self, action):
        slate = torch.as_tensor(np.asarray(action, dtype=np.int64)).reshape(1, -1)
        obs, reward, done, info = self.sim.step(slate)
        return (_unbatch(_numpy_obs(obs)), float(reward[0]), False, bool(done[0]), _unbatch(_numpy_info(info)))


def _unbatch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {key: value[0] for key, value in batch.items()}


class SlateRLVectorEnv(VectorEnv):
    """`num_envs` users stepped together by the batched simulator (next-step autoreset)."""

    # as in SlateRLEnv: gymnasium's own declaration of `metadata` is not a ClassVar
    metadata: dict[str, Any] = {"render_modes": [], "autoreset_mode": AutoresetMode.NEXT_STEP}  # noqa: RUF012

    def __init__(self, name: str = "focused_topdown", num_envs: int = 1, **make_kwargs: Any) -> None:
        self.sim = _make_sim(name, make_kwargs)
        self.num_envs = int(num_envs)
        self.single_observation_space, self.single_action_space = _spaces(self.sim.num_items, self.sim.slate_size)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._needs_reset = True

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self.sim.stream.seed = int(seed)
            self.sim.reset_random_state()
        obs, info = self.sim.reset(self.num_envs)
        self._needs_reset = False
        return _numpy_obs(obs), _numpy_info(info)

    def step(self, actions):
        if self._needs_reset:  # the previous step ended every episode: this step only resets
            obs, info = self.reset()
            zeros = np.zeros(self.num_envs, dtype=bool)
            return obs, np.zeros(self.num_envs, dtype=np.float64), zeros, zeros.copy(), info
        slates = torch.as_tensor(np.asarray(actions, dtype=np.int64)).reshape(self.num_envs, -1)
        obs, reward, done, info = self.sim.step(slates)
        truncated = done.cpu().numpy()
        self._needs_reset = bool(truncated.all())
        return (
            _numpy_obs(obs),
            reward.cpu().numpy().astype(np.float64),
            np.zeros(self.num_envs, dtype=bool),
            truncated,
            _numpy_info(info),
        )


def register_envs() -> None:
    """Register `SlateRL/<name>-v0` for every named environment (idempotent)."""
    for name in config.env_names():
        env_id = f"{ID_PREFIX}/{name}-v0"
        if env_id not in gymnasium.registry:
            gymnasium.register(
                env_id,
                entry_point="slate_rl.envs.gym:SlateRLEnv",
                vector_entry_point="slate_rl.envs.gym:SlateRLVectorEnv",
                kwargs={"name": name},
            )
