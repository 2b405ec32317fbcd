"""The two non-learning methods (test only): Random (R distinct uniform items) and the Short-term oracle (all -1:
the simulator fills every slot with its current top item, privileged information)."""

from __future__ import annotations

import torch

from slate_rl.agents.base import Agent, Observation, check_history
from slate_rl.envs.policies import distinct_random_items


class RandomAgent(Agent):
    """R distinct items drawn uniformly for every user and step, from the agent's acting generator."""

    method = "random"
    learns = False

    def act(self, obs: Observation, mode: str, episode: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self._random_slates(obs["slate"].shape[0]), None

    def recommend(self, slates: torch.Tensor, clicks: torch.Tensor, **privileged: torch.Tensor) -> torch.Tensor:
        """Random slates (not deterministic: the method is random by definition)."""
        check_history(slates, clicks)
        return self._random_slates(slates.shape[0])

    def _random_slates(self, num_users: int) -> torch.Tensor:
        """Drawn on the CPU (the acting generator's device), moved to the agent's device."""
        items = distinct_random_items(num_users, self.num_items, self.slate_size, self.act_generator, "cpu")
        return items.to(self.device)


class ShortTermOracleAgent(Agent):
    """All slots -1: the simulator puts its R best items for the current (bored-masked) user there."""

    method = "short_term_oracle"
    learns = False

    def act(self, obs: Observation, mode: str, episode: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
        return torch.full((obs["slate"].shape[0], self.slate_size), -1, dtype=torch.long, device=self.device), None

    def recommend(self, slates: torch.Tensor, clicks: torch.Tensor, **privileged: torch.Tensor) -> torch.Tensor:
        """All -1 (the simulator resolves them)."""
        check_history(slates, clicks)
        return torch.full((slates.shape[0], self.slate_size), -1, dtype=torch.long, device=self.device)
