"""Replay of whole trajectories on preallocated tensors (a ring buffer sampled without replacement).

A trajectory of horizon H stores its H + 1 observations obs_0 (the reset slate and its clicks) .. obs_H, so that
both pairings of B1 can be built: step t's action a_t produced obs_{t+1}, and h_t encodes obs_0..obs_t. Rewards
are not stored: r_t = number of clicks in obs_{t+1}. Optional per-step tensors: the agent's continuous actions
(H x A) and privileged simulator data (H x D, SlateQ's user states after each step).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from slate_rl.errors import SlateRLError


@dataclass
class Trajectories:
    """n whole episodes: slates / clicks (n, H + 1, R), actions (n, H, A) or None, privileged (n, H, D) or None."""

    slates: torch.Tensor
    clicks: torch.Tensor
    actions: torch.Tensor | None = None
    privileged: torch.Tensor | None = None

    @property
    def rewards(self) -> torch.Tensor:
        """r_t = clicks on obs_{t+1}: (n, H) float."""
        return self.clicks[:, 1:].sum(-1, dtype=torch.float32)

    def bootstrap_mask(self, terminal_end: bool) -> torch.Tensor:
        """(n, H) float: 1 where a TD target bootstraps from the next belief state. The end of an episode is a
        truncation (the time limit: every step bootstraps, the last from the belief after obs_H) or, with
        `terminal_end` (the reference), terminal (the last step does not)."""
        mask = torch.ones(self.clicks.shape[0], self.clicks.shape[1] - 1, device=self.clicks.device)
        if terminal_end:
            mask[:, -1] = 0.0
        return mask

    @property
    def returns(self) -> torch.Tensor:
        """Undiscounted return (total clicks) of each episode, (n,)."""
        return self.rewards.sum(1)

    def select(self, index: torch.Tensor) -> Trajectories:
        return Trajectories(
            self.slates[index].long(),
            self.clicks[index].float(),
            None if self.actions is None else self.actions[index],
            None if self.privileged is None else self.privileged[index],
        )


class TrajectoryBuffer:
    """Ring buffer of up to `capacity` trajectories; `sample` draws B distinct ones uniformly.

    Args:
        capacity: number of trajectories kept (oldest overwritten first).
        horizon, slate_size, num_items: episode length H, slots R, catalogue size (picks int16 ids when possible).
        action_dim: size of the stored continuous action (0: none).
        privileged_dim: size of the stored privileged per-step vector (0: none).
        device: where the trajectories are kept (the run's device); `sample` draws its indices on the CPU
            generator it is given and moves them there.
    """

    def __init__(
        self,
        capacity: int,
        horizon: int,
        slate_size: int,
        num_items: int,
        action_dim: int = 0,
        privileged_dim: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        if capacity < 1:
            raise SlateRLError(f"buffer capacity must be >= 1 (got {capacity})")
        id_type = torch.int16 if num_items <= torch.iinfo(torch.int16).max else torch.int64
        self.capacity, self.device = int(capacity), torch.device(device)
        self.slates = torch.empty(capacity, horizon + 1, slate_size, dtype=id_type, device=device)
        self.clicks = torch.empty(capacity, horizon + 1, slate_size, dtype=torch.uint8, device=device)
        self.actions = torch.empty(capacity, horizon, action_dim, device=device) if action_dim else None
        self.privileged = torch.empty(capacity, horizon, privileged_dim, device=device) if privileged_dim else None
        self.size = 0
        self.position = 0

    @classmethod
    def for_agent(cls, agent: Any, env: Any, capacity: int) -> TrajectoryBuffer:
        """A buffer of `capacity` trajectories of `env`'s shapes holding what `agent` stores, on the agent's device."""
        return cls(
            capacity,
            env.episode_length,
            env.slate_size,
            env.num_items,
            agent.stored_action_dim,
            agent.privileged_dim,
            agent.device,
        )

    def __len__(self) -> int:
        return self.size

    def add(self, episodes: Trajectories) -> torch.Tensor:
        """Store n episodes; returns the slots they occupy (n,)."""
        n = episodes.slates.shape[0]
        slots = (self.position + torch.arange(n, device=self.device)) % self.capacity
        self.slates[slots] = episodes.slates.to(self.slates.dtype)
        self.clicks[slots] = episodes.clicks.to(torch.uint8)
        if self.actions is not None:
            if episodes.actions is None:
                raise SlateRLError("the buffer stores actions, but these trajectories carry none")
            self.actions[slots] = episodes.actions
        if self.privileged is not None:
            if episodes.privileged is None:
                raise SlateRLError("the buffer stores privileged data, but these trajectories carry none")
            self.privileged[slots] = episodes.privileged
        self.position = (self.position + n) % self.capacity
        self.size = min(self.size + n, self.capacity)
        return slots

    def get(self, slots: torch.Tensor) -> Trajectories:
        """The stored trajectories at `slots`, ids as int64 and clicks as float."""
        return Trajectories(self.slates, self.clicks, self.actions, self.privileged).select(slots)

    def latest(self, n: int) -> torch.Tensor:
        """The slots of the `n` most recently stored trajectories, oldest first."""
        if not 1 <= n <= self.size:
            raise SlateRLError(f"the buffer holds {self.size} trajectories; cannot take the latest {n}")
        return (self.position - n + torch.arange(n)) % self.capacity

    def sample(self, batch_size: int, generator: torch.Generator) -> Trajectories | None:
        """`batch_size` distinct stored trajectories, uniformly; None while fewer are stored."""
        if self.size < batch_size:
            return None
        order = torch.randperm(self.size, generator=generator, device=generator.device)
        return self.get(order[:batch_size].to(self.device))

    def state_dict(self) -> dict[str, Any]:
        """The stored part (only the filled slots are copied) and the ring position."""
        state: dict[str, Any] = {"size": self.size, "position": self.position}
        for key in ("slates", "clicks", "actions", "privileged"):
            value = getattr(self, key)
            state[key] = None if value is None else value[: self.size].clone()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        size = int(state["size"])
        if size > self.capacity:
            raise SlateRLError(f"buffer state holds {size} trajectories, more than the capacity {self.capacity}")
        for key in ("slates", "clicks", "actions", "privileged"):
            value, target = state[key], getattr(self, key)
            if (value is None) != (target is None):
                raise SlateRLError(f"buffer state field {key!r} does not match this agent's buffer layout")
            if target is not None:
                target[:size] = value
        self.size, self.position = size, int(state["position"])
