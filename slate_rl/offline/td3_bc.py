"""TD3+BC (Fujimoto & Gu, 2021): TD3 whose actor loss adds behaviour cloning, with the RL term normalised by the
size of Q so that alpha sets the balance whatever the reward scale.

    critic:  y_t = r_t + gamma (1 - d_t) min_k Q'_k(h_{t+1}, clip(pi'(h_{t+1}) + clip(eps, -c, c), -1, 1)),
             eps ~ N(0, sigma^2);  loss = sum_k mean_t (Q_k(h_t, a_t) - y_t)^2
    actor (every `policy_freq` updates):
             lambda = alpha / mean_t |Q_1(h_t, pi(h_t))| (no gradient);
             loss = -lambda mean_t Q_1(h_t, pi(h_t)) + mean_t || pi(h_t) - a_t ||^2

The critic and the actor have their own belief streams; the actor loss sees the critic's states without gradient.
Target copies: actor and critic heads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from slate_rl.agents.base import Diagnostics, draw
from slate_rl.agents.nets import adam
from slate_rl.errors import SlateRLError
from slate_rl.offline.bc import bc_loss
from slate_rl.offline.common import (
    OfflineAgent,
    OfflineBatch,
    OfflineConfig,
    TwinCritic,
    builder,
    frozen,
    polyak,
    q_statistics,
    step,
    target_copy,
    td_target,
)


@dataclass(frozen=True)
class TD3BCConfig(OfflineConfig):
    """alpha: weight of the RL term against the BC term (2.5 in the paper). policy_noise, noise_clip: target policy
    smoothing (std and clip, in normalised action units). policy_freq: critic updates per actor update."""

    alpha: float = 2.5
    policy_noise: float = 0.2
    noise_clip: float = 0.5
    policy_freq: int = 2

    def validate(self) -> None:
        super().validate()
        if float(self.alpha) < 0 or float(self.policy_noise) < 0 or float(self.noise_clip) < 0:
            raise SlateRLError("alpha, policy_noise and noise_clip must be >= 0")
        if int(self.policy_freq) < 1:
            raise SlateRLError(f"policy_freq must be >= 1 (got {self.policy_freq})")


def td3_actor_terms(
    q_policy: torch.Tensor, policy: torch.Tensor, labels: torch.Tensor, alpha: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(RL term, BC term) of the TD3+BC actor loss for Q_1 of the policy's actions."""
    weight = alpha / q_policy.abs().mean().detach().clamp_min(1e-6)
    return -weight * q_policy.mean(), bc_loss(policy, labels)


class TD3BCAgent(OfflineAgent):
    streams = ("actor", "critic")
    config: TD3BCConfig

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        cfg = self.config
        self.critic = TwinCritic(cfg.belief.hidden_dim, self.action_dim, cfg.hidden, self.generator, self.device)
        self.critic_target = target_copy(self.critic)
        self.actor_target = target_copy(self.actor)
        self.critic_optimizer = adam([*self.critic.parameters(), *self.stream_parameters("critic")], cfg.lr)
        self.last_actor = {
            name: torch.zeros((), device=self.device) for name in ("rl_term", "bc_term", "actor_grad_norm")
        }

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {**super().optimizers(), "critic_optimizer": self.critic_optimizer}

    def training_state_dict(self) -> dict[str, Any]:
        return {**super().training_state_dict(), "last_actor": dict(self.last_actor)}

    def load_training_state_dict(self, state: dict[str, Any]) -> None:
        super().load_training_state_dict(state)
        self.last_actor = dict(state["last_actor"])

    def q_values(self, critic_states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self.critic(critic_states, actions).min(-1).values

    def update(self, batch: OfflineBatch) -> Diagnostics:  # type: ignore[override]
        cfg = self.config
        critic_all = self.encode(batch, ("critic",))["critic"]
        critic_states = critic_all[:, :-1]
        # one encoding of the actor stream, with gradient when the actor learns at this update: the critic step
        # leaves the actor stream as it was
        learns = (self.updates + 1) % cfg.policy_freq == 0
        with torch.set_grad_enabled(learns):
            actor_all = self.encode(batch, ("actor",))["actor"]
        with torch.no_grad():
            next_actor, next_critic = actor_all[:, 1:], critic_all[:, 1:]
            noise = (
                draw(torch.randn, batch.actions.shape, generator=self.generator, device=self.device) * cfg.policy_noise
            )
            next_actions = (
                torch.tanh(self.actor_target(next_actor.flatten(0, 1))).view_as(noise)
                + noise.clamp(-cfg.noise_clip, cfg.noise_clip)
            ).clamp(-1.0, 1.0)
            next_q = self.critic_target(next_critic, next_actions).min(-1).values
            target = td_target(batch.rewards, batch.not_done, next_q, cfg.gamma)
        q = self.critic(critic_states, batch.actions)
        critic_loss = (q - target.unsqueeze(-1)).pow(2).mean(dim=(0, 1)).sum()
        critic_norm = step(self.critic_optimizer, critic_loss, cfg.grad_clip)
        self.updates += 1
        if learns:
            policy = self.policy(actor_all[:, :-1])
            with frozen(self.critic):
                q_policy = self.critic(critic_states.detach(), policy)[..., 0]
            rl_term, bc_term = td3_actor_terms(q_policy, policy, batch.actions, cfg.alpha)
            actor_norm = step(self.actor_optimizer, rl_term + bc_term, cfg.grad_clip)
            polyak(self.actor_target, self.actor, cfg.tau)
            polyak(self.critic_target, self.critic, cfg.tau)
            self.last_actor = {"rl_term": rl_term.detach(), "bc_term": bc_term.detach(), "actor_grad_norm": actor_norm}
        return {
            "critic_loss": critic_loss.detach(),
            **self.last_actor,
            "critic_grad_norm": critic_norm,
            **q_statistics(q.detach(), target, cfg.return_bound(self.slate_size)),
        }


build = builder(TD3BCAgent, "td3_bc")
