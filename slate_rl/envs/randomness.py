"""The simulator's own random numbers: one torch.Generator, drawn in fixed-shape blocks per reset and per step.

Every draw the dynamics need is made here and handed to the simulator as plain tensors, so that a per-user
reference simulator fed the same tensors must produce exactly the same episodes (see tests), and so that the
stream advances by the same amount whatever the policy does (common random numbers across methods and seeds).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

DEFAULT_SIM_SEED = 24321357327


@dataclass
class ResetDraws:
    """Random inputs of one reset of N users."""

    normal: torch.Tensor  # (N, K, S) standard normal: user topic blocks
    topic_weights: torch.Tensor  # (N, K) uniform: topic weights (cubed, normalised)
    click_uniforms: torch.Tensor  # (N, R) uniform: clicks on the initial slate
    fallback_topic: torch.Tensor  # (N,) uniform topic: short-term topic when the initial slate gets no click

    def select(self, index: torch.Tensor | slice) -> ResetDraws:
        """The draws of a subset of users."""
        return ResetDraws(
            self.normal[index], self.topic_weights[index], self.click_uniforms[index], self.fallback_topic[index]
        )


class UserStream:
    """A seeded generator whose draws land on the simulator's device; `reseed()` restarts the same user sequence.

    The numbers are always drawn on the CPU and then moved, so a simulator meets the same users and clicks on every
    device (a CUDA generator would give other numbers for the same seed).
    """

    def __init__(self, seed: int, device: torch.device | str = "cpu") -> None:
        self.seed = int(seed)
        self.device = torch.device(device)
        self.generator = torch.Generator(device="cpu")
        self.reseed()

    def reseed(self) -> None:
        self.generator.manual_seed(self.seed)

    def reset_draws(self, num_users: int, num_topics: int, topic_size: int, slate_size: int) -> ResetDraws:
        gen, dev = self.generator, self.device
        return ResetDraws(
            normal=torch.randn(num_users, num_topics, topic_size, generator=gen, device="cpu").to(dev),
            topic_weights=torch.rand(num_users, num_topics, generator=gen, device="cpu").to(dev),
            click_uniforms=torch.rand(num_users, slate_size, generator=gen, device="cpu").to(dev),
            fallback_topic=torch.randint(num_topics, (num_users,), generator=gen, device="cpu").to(dev),
        )

    def step_draws(self, num_users: int, slate_size: int) -> torch.Tensor:
        """Uniforms (N, R) deciding the clicks of one step."""
        return torch.rand(num_users, slate_size, generator=self.generator, device="cpu").to(self.device)

    def get_state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state.cpu())  # a checkpoint may have been loaded onto another device
