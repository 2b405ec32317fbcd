"""Conservative Q-learning (Kumar et al., 2020) with a deterministic actor: the TD loss plus a penalty that pushes Q
down on actions away from the data and up on the dataset's own actions.

    critic: y_t = r_t + gamma (1 - d_t) min_k Q'_k(h_{t+1}, pi(h_{t+1}))
            penalty_k = log mean_j exp Q_k(h_t, b_j) - mean_t Q_k(h_t, a_t),
              b_j: `n_actions` uniform actions of [-1, 1]^A and the policy's action pi(h_t)
            loss = sum_k mean_t (Q_k(h_t, a_t) - y_t)^2 + alpha sum_k mean_t penalty_k
    actor:  loss = -mean_t min_k Q_k(h_t, pi(h_t))

The log-mean-exp is a soft maximum of Q over the sampled actions (CQL(H)'s log-sum-exp up to a constant). The
critic and the actor have their own belief streams. Target copy: the critic heads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from slate_rl.agents.base import Diagnostics, draw
from slate_rl.agents.nets import adam
from slate_rl.errors import SlateRLError
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
class CQLConfig(OfflineConfig):
    """alpha: weight of the conservative penalty. n_actions: uniform random actions per state in the penalty."""

    alpha: float = 1.0
    n_actions: int = 10

    def validate(self) -> None:
        super().validate()
        if float(self.alpha) < 0 or int(self.n_actions) < 1:
            raise SlateRLError("alpha must be >= 0 and n_actions >= 1")


def conservative_penalty(q_sampled: torch.Tensor, q_data: torch.Tensor) -> torch.Tensor:
    """Per critic (..., 2): mean over states of log mean_j exp Q(s, b_j) - Q(s, a_data); q_sampled (J, ..., 2),
    q_data (..., 2). Returns (2,)."""
    soft_max = torch.logsumexp(q_sampled, dim=0) - math.log(q_sampled.shape[0])
    return (soft_max - q_data).flatten(0, -2).mean(0)


class CQLAgent(OfflineAgent):
    streams = ("actor", "critic")
    config: CQLConfig

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        cfg = self.config
        self.critic = TwinCritic(cfg.belief.hidden_dim, self.action_dim, cfg.hidden, self.generator, self.device)
        self.critic_target = target_copy(self.critic)
        self.critic_optimizer = adam([*self.critic.parameters(), *self.stream_parameters("critic")], cfg.lr)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {**super().optimizers(), "critic_optimizer": self.critic_optimizer}

    def q_values(self, critic_states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self.critic(critic_states, actions).min(-1).values

    def update(self, batch: OfflineBatch) -> Diagnostics:  # type: ignore[override]
        cfg = self.config
        # one encoding of each stream: the critic step leaves the actor stream as it was, so the actor loss can
        # reuse the states its targets were computed from
        critic_all = self.encode(batch, ("critic",))["critic"]
        actor_all = self.encode(batch, ("actor",))["actor"]
        critic_states = critic_all[:, :-1]
        with torch.no_grad():
            next_actions = self.policy(actor_all[:, 1:])
            next_q = self.critic_target(critic_all[:, 1:], next_actions).min(-1).values
            target = td_target(batch.rewards, batch.not_done, next_q, cfg.gamma)
            policy_now = self.policy(actor_all[:, :-1])
            shape = (cfg.n_actions, *batch.actions.shape)
            uniform = draw(torch.rand, shape, generator=self.generator, device=self.device) * 2 - 1
            sampled = torch.cat([uniform, policy_now.unsqueeze(0)])
        q = self.critic(critic_states, batch.actions)
        td_loss = (q - target.unsqueeze(-1)).pow(2).mean(dim=(0, 1)).sum()
        q_sampled = self.critic(critic_states, sampled)
        penalty = conservative_penalty(q_sampled, q).sum()
        critic_norm = step(self.critic_optimizer, td_loss + cfg.alpha * penalty, cfg.grad_clip)
        with frozen(self.critic):
            q_policy = self.critic(critic_states.detach(), self.policy(actor_all[:, :-1])).min(-1).values
        actor_loss = -q_policy.mean()
        actor_norm = step(self.actor_optimizer, actor_loss, cfg.grad_clip)
        polyak(self.critic_target, self.critic, cfg.tau)
        self.updates += 1
        return {
            "td_loss": td_loss.detach(),
            "conservative_term": (cfg.alpha * penalty).detach(),
            "actor_loss": actor_loss.detach(),
            "critic_grad_norm": critic_norm,
            "actor_grad_norm": actor_norm,
            **q_statistics(q.detach(), target, cfg.return_bound(self.slate_size)),
        }


build = builder(CQLAgent, "cql")
