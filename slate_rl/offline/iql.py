"""Implicit Q-learning (Kostrikov et al., 2022): values learned by expectile regression on the dataset's actions
only (no action outside the data is ever evaluated), the policy extracted by advantage-weighted regression.

    value:  u_t = min_k Q'_k(h_t, a_t) - V(h_t);  loss = mean_t |tau - 1(u_t < 0)| u_t^2
    critic: y_t = r_t + gamma (1 - d_t) V(h_{t+1});  loss = sum_k mean_t (Q_k(h_t, a_t) - y_t)^2
    actor:  w_t = min(exp(beta (min_k Q'_k(h_t, a_t) - V(h_t))), max_weight);  loss = mean_t w_t || pi(h_t) - a_t ||^2

The value and the critic share the critic belief stream (trained by both losses); the actor has its own. The
weighted squared error is the weighted log-likelihood of a fixed-variance Gaussian policy. Target copy: the
critic heads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from slate_rl.agents.base import Diagnostics
from slate_rl.agents.nets import MLP, adam
from slate_rl.errors import SlateRLError
from slate_rl.offline.common import (
    OfflineAgent,
    OfflineBatch,
    OfflineConfig,
    TwinCritic,
    builder,
    polyak,
    q_statistics,
    step,
    target_copy,
    td_target,
)

NEAR_ZERO = 0.01  # |advantage| below this many clicks counts as "near zero" in the diagnostics


@dataclass(frozen=True)
class IQLConfig(OfflineConfig):
    """expectile: tau of the value's expectile regression (0.5 = mean; higher = closer to the best data action).
    beta: inverse temperature of the advantage weights. max_weight: cap of the weights."""

    expectile: float = 0.7
    beta: float = 3.0
    max_weight: float = 100.0

    def validate(self) -> None:
        super().validate()
        if not 0.0 < float(self.expectile) < 1.0:
            raise SlateRLError(f"expectile must lie in (0, 1) (got {self.expectile})")
        if float(self.beta) < 0 or not float(self.max_weight) > 0:
            raise SlateRLError("beta must be >= 0 and max_weight > 0")


def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """mean |tau - 1(u < 0)| u^2 of u = target - prediction."""
    weight = torch.where(diff < 0, 1.0 - expectile, expectile)
    return (weight * diff.pow(2)).mean()


def awr_weights(advantages: torch.Tensor, beta: float, max_weight: float) -> torch.Tensor:
    """min(exp(beta A), max_weight)."""
    return torch.exp(beta * advantages).clamp(max=max_weight)


class IQLAgent(OfflineAgent):
    streams = ("actor", "critic")
    config: IQLConfig

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        cfg = self.config
        self.critic = TwinCritic(cfg.belief.hidden_dim, self.action_dim, cfg.hidden, self.generator, self.device)
        self.critic_target = target_copy(self.critic)
        self.value = MLP(cfg.belief.hidden_dim, cfg.hidden, 1, self.generator, self.device)
        self.critic_optimizer = adam(
            [*self.critic.parameters(), *self.value.parameters(), *self.stream_parameters("critic")], cfg.lr
        )

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {**super().optimizers(), "critic_optimizer": self.critic_optimizer}

    def q_values(self, critic_states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self.critic(critic_states, actions).min(-1).values

    def state_values(self, critic_states: torch.Tensor) -> torch.Tensor:
        return self.value(critic_states.flatten(0, -2)).view(critic_states.shape[:-1])

    def update(self, batch: OfflineBatch) -> Diagnostics:  # type: ignore[override]
        cfg = self.config
        critic_all = self.encode(batch, ("critic",))["critic"]
        critic_states = critic_all[:, :-1]
        with torch.no_grad():
            q_target = self.critic_target(critic_states, batch.actions).min(-1).values
            target = td_target(batch.rewards, batch.not_done, self.state_values(critic_all[:, 1:]), cfg.gamma)
        values = self.state_values(critic_states)
        value_loss = expectile_loss(q_target - values, cfg.expectile)
        q = self.critic(critic_states, batch.actions)
        q_loss = (q - target.unsqueeze(-1)).pow(2).mean(dim=(0, 1)).sum()
        critic_norm = step(self.critic_optimizer, value_loss + q_loss, cfg.grad_clip)
        advantages = (q_target - values).detach()
        weights = awr_weights(advantages, cfg.beta, cfg.max_weight)
        actor_states = self.encode(batch, ("actor",), last=False)["actor"]
        squared = (self.policy(actor_states) - batch.actions).pow(2).sum(-1)
        actor_loss = (weights * squared).mean()
        actor_norm = step(self.actor_optimizer, actor_loss, cfg.grad_clip)
        polyak(self.critic_target, self.critic, cfg.tau)
        self.updates += 1
        return {
            "value_loss": value_loss.detach(),
            "q_loss": q_loss.detach(),
            "actor_loss": actor_loss.detach(),
            "advantage_mean": advantages.mean(),
            "advantage_std": advantages.std(),
            "advantage_near_zero": (advantages.abs() < NEAR_ZERO * cfg.reward_scale).float().mean(),
            "awr_weight_std": weights.std(),
            "critic_grad_norm": critic_norm,
            "actor_grad_norm": actor_norm,
            **q_statistics(q.detach(), target, cfg.return_bound(self.slate_size)),
        }


build = builder(IQLAgent, "iql")
