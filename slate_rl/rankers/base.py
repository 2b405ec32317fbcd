"""The decoder interface the RL agents act through: continuous actions inside a box -> slates of item ids."""

from __future__ import annotations

import torch
from torch import nn


class SlateDecoder(nn.Module):
    """Maps actions (B, action_dim) to slates (B, R) of item ids.

    The action box is centre +- scale per dimension (`action_center`, `action_scale`, buffers saved with the
    decoder so that no later stage recomputes or guesses them).
    """

    action_center: torch.Tensor
    action_scale: torch.Tensor

    def __init__(self, action_center: torch.Tensor, action_scale: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("action_center", action_center.detach().clone().float())
        self.register_buffer("action_scale", action_scale.detach().clone().float())

    @property
    def action_dim(self) -> int:
        return int(self.action_center.numel())

    def decode(self, actions: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def squash(self, raw: torch.Tensor) -> torch.Tensor:
        """centre + scale * tanh(raw): an unbounded vector mapped into the action box."""
        return self.action_center + self.action_scale * torch.tanh(raw)

    def random_actions(self, num: int, generator: torch.Generator) -> torch.Tensor:
        """Warm-up actions as in the reference: uniform over the central half of the box (centre +- scale / 2),
        drawn on the generator's device and moved to the decoder's."""
        uniform = torch.rand(num, self.action_dim, generator=generator, device=generator.device)
        uniform = uniform.to(self.action_center.device)
        return self.action_center + self.action_scale * (uniform - 0.5)
