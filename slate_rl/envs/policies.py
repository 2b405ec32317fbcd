"""Policies that need no learning: uniform random slates, the epsilon-greedy oracle (the logging policy), the
short-term oracle. All are batched over users and draw from their own generator, never the simulator's.

A policy is any object with `start(num_users)` (called after each reset) and `act(obs, info) -> slates`
(N x R item ids; -1 asks the simulator's oracle for that slot).
"""

from __future__ import annotations

from typing import Protocol

import torch

from slate_rl.errors import SlateRLError


class Policy(Protocol):
    def start(self, num_users: int) -> None:
        """Begin a batch of `num_users` episodes (the reset observation comes with the first `act`)."""

    def act(self, obs: dict[str, torch.Tensor], info: dict[str, torch.Tensor]) -> torch.Tensor:
        """Slates (N x R) for the latest observation."""


def distinct_random_items(
    num_users: int, num_items: int, slate_size: int, generator: torch.Generator, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """For each user, `slate_size` distinct items drawn uniformly, in uniformly random order (N x R).

    Floyd's algorithm vectorised over users (R draws instead of a permutation of the catalogue), then a shuffle.
    """
    chosen = torch.empty(num_users, slate_size, dtype=torch.long, device=device)
    for slot, upper in enumerate(range(num_items - slate_size, num_items)):
        draw = (torch.rand(num_users, generator=generator, device=device) * (upper + 1)).long().clamp(max=upper)
        taken = (chosen[:, :slot] == draw.unsqueeze(1)).any(dim=1)
        chosen[:, slot] = torch.where(taken, torch.full_like(draw, upper), draw)
    order = torch.rand(num_users, slate_size, generator=generator, device=device).argsort(dim=1)
    return chosen.gather(1, order)


class _SeededPolicy:
    def __init__(self, num_items: int, slate_size: int, seed: int, device: torch.device | str = "cpu") -> None:
        self.num_items, self.slate_size, self.device = num_items, slate_size, torch.device(device)
        self.generator = torch.Generator(device=self.device).manual_seed(int(seed))

    def start(self, num_users: int) -> None:
        pass


class RandomPolicy(_SeededPolicy):
    """Ten distinct items uniformly at random for each user and step (the paper's Random baseline)."""

    def act(self, obs: dict[str, torch.Tensor], info: dict[str, torch.Tensor]) -> torch.Tensor:
        return distinct_random_items(
            obs["slate"].shape[0], self.num_items, self.slate_size, self.generator, self.device
        )


class EpsilonGreedyOracle(_SeededPolicy):
    """Each slot independently: a random item with probability epsilon (the R random items of a step are
    distinct), else -1 so that the simulator puts its r-th best item there. epsilon = 0.5 is the logging policy."""

    def __init__(
        self, num_items: int, slate_size: int, epsilon: float, seed: int, device: torch.device | str = "cpu"
    ) -> None:
        if not 0.0 <= float(epsilon) <= 1.0:
            raise SlateRLError(f"epsilon must lie in [0, 1] (got {epsilon})")
        super().__init__(num_items, slate_size, seed, device)
        self.epsilon = float(epsilon)

    def act(self, obs: dict[str, torch.Tensor], info: dict[str, torch.Tensor]) -> torch.Tensor:
        n = obs["slate"].shape[0]
        random_slot = torch.rand(n, self.slate_size, generator=self.generator, device=self.device) < self.epsilon
        items = distinct_random_items(n, self.num_items, self.slate_size, self.generator, self.device)
        return torch.where(random_slot, items, torch.full_like(items, -1))


class ShortTermOracle:
    """All slots -1: the simulator's myopic oracle (top-R items by current score). Privileged information."""

    def __init__(self, slate_size: int, device: torch.device | str = "cpu") -> None:
        self.slate_size, self.device = slate_size, torch.device(device)

    def start(self, num_users: int) -> None:
        pass

    def act(self, obs: dict[str, torch.Tensor], info: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.full((obs["slate"].shape[0], self.slate_size), -1, dtype=torch.long, device=self.device)


def baseline_policy(
    kind: str,
    num_items: int,
    slate_size: int,
    seed: int,
    epsilon: float | None = None,
    device: torch.device | str = "cpu",
) -> Policy:
    """'random', 'short_term_oracle' or 'epsilon_greedy' (with `epsilon`)."""
    if kind == "random":
        return RandomPolicy(num_items, slate_size, seed, device)
    if kind == "short_term_oracle":
        return ShortTermOracle(slate_size, device)
    if kind == "epsilon_greedy":
        return EpsilonGreedyOracle(num_items, slate_size, 0.5 if epsilon is None else epsilon, seed, device)
    raise SlateRLError(f"unknown baseline policy {kind!r}; choose random, short_term_oracle or epsilon_greedy")
