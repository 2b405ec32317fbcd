"""Soft actor-critic over GRU beliefs (agents_protocol.md §3.1): SAC+TopK (ideal / MF), SAC+GeMS, and the shared
core of SAC+WkNN.

One update on B whole trajectories, in the reference's order: critic step, actor step, temperature step, Polyak
averaging of the two target critics (targets cover only the Q heads; both critics share the critic encoder; the
next states come from the online encoders, detached: Q15). Implementation notes (same results as the plain
computation, tested):
* the actor and critic encoders are encoded once, in one stacked GRU pass; their outputs are cut from the graph
  and the gradients of the critic and actor losses are sent back through the GRU together at the end. Encoder
  parameters are stepped after the actor loss, which is exact: the actor loss uses the critic states computed
  before the critic step, and no encoder weight is read again within the update;
* the policy is evaluated once on all belief states: pi(.|h_{t+1}) for the critic target is the same network on
  the same (shifted) inputs, with its own noise draw;
* the twin critics are packed into one set of tensors; Adam is per-parameter, so grouping the optimisers changes
  nothing.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import nn

from slate_rl.agents.base import EXPLORE, BeliefAgent
from slate_rl.agents.belief import BeliefEncoders
from slate_rl.agents.buffer import Trajectories
from slate_rl.agents.config import SACConfig
from slate_rl.agents.nets import MLP, TwinQ, adam, twin_q
from slate_rl.rankers.base import SlateDecoder

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


class Temperature(nn.Module):
    """SAC's entropy temperature alpha with automatic tuning (target entropy -dim(a)); see SACConfig for Q9."""

    def __init__(self, initial: float, target_entropy: float, reference: bool) -> None:
        super().__init__()
        self.reference, self.target_entropy = reference, float(target_entropy)
        self.log_alpha = nn.Parameter(torch.tensor(0.0 if reference else math.log(initial)))
        self.register_buffer("alpha", torch.tensor(float(initial)))

    def loss(self, log_prob: torch.Tensor) -> torch.Tensor:
        """Temperature loss for detached log-probabilities of fresh policy actions."""
        weight = self.log_alpha.exp() if self.reference else self.log_alpha
        return -(weight * (log_prob + self.target_entropy)).mean()

    @torch.no_grad()
    def refresh(self) -> None:
        """alpha <- exp(log alpha), after the temperature step."""
        self.alpha.copy_(self.log_alpha.exp())


class SACBase(BeliefAgent):
    """Actor and critic GRU encoders, a tanh-Gaussian policy inside the action box, twin critics with targets.

    Subclasses provide the action box, `critic_actions` (what the critics see for the stored transitions) and
    `target_values` (min of the target critics at the next states for sampled next actions).
    """

    acting_encoders = ("actor",)
    metric_names = ("q_loss", "pi_loss", "alpha_loss", "alpha", "q_mean", "log_prob")

    def __init__(self, num_items: int, slate_size: int, action_dim: int, critic_action_dim: int,
                 action_center: torch.Tensor, action_scale: torch.Tensor, config: SACConfig, seed: int) -> None:
        super().__init__(num_items, slate_size, seed)
        self.config = config
        gen, belief = self.generator, config.belief
        self.action_dim = int(action_dim)
        self.register_buffer("action_center", action_center.detach().float().clone())
        self.register_buffer("action_scale", action_scale.detach().float().clone())
        self.beliefs = BeliefEncoders(("actor", "critic"), num_items, slate_size, gen, belief.item_dim,
                                      belief.hidden_dim)
        self.policy = MLP(belief.hidden_dim, config.hidden, 2 * self.action_dim, gen)
        self.q = TwinQ(belief.hidden_dim, critic_action_dim, config.hidden, gen)
        for name, value in zip(("weight1", "bias1", "weight2", "bias2"), self.q.params()):
            self.register_buffer(f"q_target_{name}", value.detach().clone())
        self.temperature = Temperature(config.alpha, -self.action_dim, config.reference_temperature)
        self.q_optimizer = adam(self.q.parameters(), config.q_lr)
        groups = [{"params": [*self.policy.parameters(), *self.beliefs.encoders["actor"].parameters()],
                   "lr": config.pi_lr},
                  {"params": list(self.beliefs.encoders["critic"].parameters()), "lr": config.q_lr}]
        if config.auto_entropy:
            groups.append({"params": [self.temperature.log_alpha], "lr": config.alpha_lr})
        self.optimizer = adam(groups, config.pi_lr)

    # ---------------------------------------------------------------- what the loop stores
    @property
    def batch_size(self) -> int:
        return self.config.batch_size

    @property
    def buffer_capacity(self) -> int:
        return self.config.capacity

    def target_params(self) -> list[torch.Tensor]:
        return [self.q_target_weight1, self.q_target_bias1, self.q_target_weight2, self.q_target_bias2]

    # ---------------------------------------------------------------- policy
    def policy_head(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, log sigma) with log sigma clipped to [-20, 2]."""
        out = self.policy(states)
        return out[:, : self.action_dim], out[:, self.action_dim :].clamp(-20.0, 2.0)

    def squashed_sample(self, mu: torch.Tensor, log_std: torch.Tensor,
                        noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """a = c + s tanh(mu + sigma noise) and log pi(a) (tanh correction with 1e-6; the log s Jacobian only
        without reference_temperature, Q9)."""
        raw = mu + log_std.exp() * noise
        squashed = torch.tanh(raw)
        log_prob = (-0.5 * noise.pow(2) - log_std - LOG_SQRT_2PI - torch.log1p(1e-6 - squashed.pow(2))).sum(-1)
        if not self.config.reference_temperature:
            log_prob = log_prob - self.action_scale.log().sum()
        return self.action_center + self.action_scale * squashed, log_prob

    def policy_action(self, states: torch.Tensor, mode: str) -> torch.Tensor:
        """Sampled (explore) or deterministic c + s tanh(mu) action for actor states (n, H)."""
        mu, log_std = self.policy_head(states)
        if mode == EXPLORE:
            return self.squashed_sample(mu, log_std, torch.randn(mu.shape, generator=self.act_generator))[0]
        return self.action_center + self.action_scale * torch.tanh(mu)

    # ---------------------------------------------------------------- learning
    def critic_actions(self, batch: Trajectories) -> torch.Tensor:
        """What the critics see as the action of each stored transition, (B * H, critic action dim)."""
        raise NotImplementedError

    def target_values(self, next_critic: torch.Tensor, next_actions: torch.Tensor) -> torch.Tensor:
        """min(Q1_target, Q2_target) at next critic states for next policy actions, (B * H,)."""
        raise NotImplementedError

    def update(self, batch: Trajectories) -> torch.Tensor:
        cfg, hidden = self.config, self.config.belief.hidden_dim
        num, steps = batch.slates.shape[0], batch.slates.shape[1] - 1
        rows = num * steps
        encoded = self.beliefs.encode(batch.slates[:, :-1], batch.clicks[:, :-1])  # (2, B, H, D): actor, critic
        states = encoded.detach().contiguous().requires_grad_()
        actor, critic = states[0].view(rows, hidden), states[1].view(rows, hidden)
        not_done = torch.ones(num, steps)
        not_done[:, -1] = 0.0
        alpha = self.temperature.alpha.clone()
        mu, log_std = self.policy_head(actor)
        noise = torch.randn(2, rows, self.action_dim, generator=self.generator)

        with torch.no_grad():  # critic target; row i + 1 is the next state of row i (last rows masked by done)
            next_mu, next_log_std = _next_rows(mu.detach()), _next_rows(log_std.detach())
            next_actions, next_log_prob = self.squashed_sample(next_mu, next_log_std, noise[1])
            next_value = self.target_values(_next_rows(critic.detach()), next_actions)
            target = batch.rewards.view(rows) + cfg.gamma * not_done.view(rows) * (next_value - alpha * next_log_prob)

        q = twin_q(self.q.params(), hidden, critic, self.critic_actions(batch))
        q_loss = 0.5 * (q - target.unsqueeze(1)).pow(2).mean(0).sum()
        q_loss.backward()
        self.q_optimizer.step()
        self.q_optimizer.zero_grad(set_to_none=True)

        actions, log_prob = self.squashed_sample(mu, log_std, noise[0])
        frozen_q = [p.detach() for p in self.q.params()]
        pi_loss = (alpha * log_prob - twin_q(frozen_q, hidden, critic.detach(), actions).min(1).values).mean()
        loss = pi_loss
        alpha_loss = torch.zeros(())
        if cfg.auto_entropy:
            alpha_loss = self.temperature.loss(log_prob.detach())
            loss = loss + alpha_loss
        loss.backward()
        encoded.backward(states.grad)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if cfg.auto_entropy:
            self.temperature.refresh()
        with torch.no_grad():
            torch._foreach_lerp_(self.target_params(), [p.detach() for p in self.q.params()], cfg.tau)
            return torch.stack([q_loss.detach(), pi_loss.detach(), alpha_loss.detach(), alpha,
                                q[:, 0].detach().mean(), log_prob.detach().mean()])

    def training_state_dict(self) -> dict[str, Any]:
        return {**super().training_state_dict(), "q_optimizer": self.q_optimizer.state_dict(),
                "optimizer": self.optimizer.state_dict()}

    def load_training_state_dict(self, state: dict[str, Any]) -> None:
        super().load_training_state_dict(state)
        self.q_optimizer.load_state_dict(state["q_optimizer"])
        self.optimizer.load_state_dict(state["optimizer"])


def _next_rows(x: torch.Tensor) -> torch.Tensor:
    """Row i + 1 of x at row i (the last row repeated; it is always a masked terminal transition)."""
    return torch.cat([x[1:], x[-1:]])


class SACAgent(SACBase):
    """SAC acting through a slate decoder (TopK or GeMS): the action is a point of the decoder's box, stored in
    the buffer, and decoded into a slate.

    Args:
        decoder: the ranker (its item table / VAE and bounds are frozen and saved with the agent).
        method: the method id ('sac_topk_ideal', 'sac_topk_mf', 'sac_gems').
        num_items: catalogue size N.
    """

    def __init__(self, decoder: SlateDecoder, num_items: int, slate_size: int, config: SACConfig, seed: int,
                 method: str) -> None:
        super().__init__(num_items, slate_size, decoder.action_dim, decoder.action_dim, decoder.action_center,
                         decoder.action_scale, config, seed)
        self.method = method
        for parameter in decoder.parameters():
            parameter.requires_grad_(False)
        self.decoder = decoder.eval()

    @property
    def stored_action_dim(self) -> int:
        return self.action_dim

    def random_action(self, num_users: int) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Warm-up action (Q10): uniform over the central half of the box."""
        actions = self.decoder.random_actions(num_users, self.act_generator)
        return self.decoder.decode(actions), actions

    def choose(self, states: torch.Tensor, mode: str, episode: int,
               **privileged: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        actions = self.policy_action(states[0], mode)
        return self.decoder.decode(actions), actions

    def critic_actions(self, batch: Trajectories) -> torch.Tensor:
        return batch.actions.reshape(-1, self.action_dim)

    def target_values(self, next_critic: torch.Tensor, next_actions: torch.Tensor) -> torch.Tensor:
        return twin_q(self.target_params(), self.config.belief.hidden_dim, next_critic, next_actions).min(1).values
