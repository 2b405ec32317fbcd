"""Behaviour cloning: the actor regresses the dataset's actions from the belief state.

    loss = mean_t || pi(h_t) - a_t ||^2        (a_t: the normalised action label, h_t: belief over o_0..o_t)

A deterministic actor with a squared error is the maximum-likelihood fit of a fixed-variance Gaussian policy (the
BC term of TD3+BC); the actor stream is the only belief stream.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from slate_rl.agents.base import Diagnostics
from slate_rl.offline.common import OfflineAgent, OfflineBatch, OfflineConfig, builder, step


@dataclass(frozen=True)
class BCConfig(OfflineConfig):
    """Behaviour cloning has only the shared hyper-parameters."""


def bc_loss(policy: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over transitions of the squared distance between the policy's and the dataset's actions."""
    return (policy - labels).pow(2).sum(-1).mean()


class BCAgent(OfflineAgent):
    def update(self, batch: OfflineBatch) -> Diagnostics:  # type: ignore[override]
        states = self.encode(batch, ("actor",), last=False)["actor"]
        loss = bc_loss(self.policy(states), batch.actions)
        norm = step(self.actor_optimizer, loss, self.config.grad_clip)
        self.updates += 1
        return {"bc_loss": loss.detach(), "actor_grad_norm": norm}


build = builder(BCAgent, "bc")
