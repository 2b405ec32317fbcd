"""Soft actor-critic over GRU beliefs: SAC+TopK (ideal / MF), SAC+GeMS, and the shared core of SAC+WkNN.

One update on B whole trajectories, in the reference's order: critic step, actor step, temperature step, Polyak
averaging of the two target critics (targets cover only the Q heads; both critics share the critic encoder; the
next states come from the online encoders, detached: Q15). Implementation notes (same results as the plain
computation up to float rounding, tested):
* the actor and critic encoders are encoded once, in one stacked GRU pass; the gradients of the critic and actor
  losses at the belief states are sent back through the GRU together at the end. Encoder parameters are stepped
  after the actor loss, which is exact: the actor loss uses the critic states computed before the critic step, and
  no encoder weight is read again within the update;
* the heads (policy, twin critics, tanh-Gaussian sampling) are differentiated by hand (`slate_rl.agents.nets`):
  autograd would record ~60 nodes and form products no loss needs;
* the policy is evaluated once on all belief states and both noise draws are squashed in one pass: pi(.|h_{t+1})
  for the critic target is the same network on the same rows, so the target's draw for row i is made at row i + 1
  (its noise shifted one row down) and its values are read one row up, like the target critics' values, which are
  computed at the rows' own critic states. The last row of each trajectory gets another row's values, which the
  done mask multiplies by 0 (as before; they are finite);
* the twin critics are packed into one set of tensors; Adam is per-parameter, so grouping the optimisers changes
  nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from slate_rl.agents.base import EXPLORE, BeliefAgent, Diagnostics
from slate_rl.agents.belief import BeliefEncoders
from slate_rl.agents.buffer import Trajectories
from slate_rl.agents.config import SACConfig
from slate_rl.agents.nets import (
    MLP,
    TwinQ,
    adam,
    mlp_backward,
    mlp_forward,
    twin_q_min,
    twin_q_min_action_grad,
    twin_q_regression,
    with_ones,
)
from slate_rl.errors import SlateRLError
from slate_rl.rankers.base import SlateDecoder

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


class Temperature(nn.Module):
    """SAC's entropy temperature alpha with automatic tuning (target entropy -dim(a)); see SACConfig for Q9."""

    def __init__(self, initial: float, target_entropy: float, reference: bool) -> None:
        super().__init__()
        self.reference, self.target_entropy = reference, float(target_entropy)
        self.log_alpha = nn.Parameter(torch.tensor(0.0 if reference else math.log(initial)))
        self.alpha: torch.Tensor
        self.register_buffer("alpha", torch.tensor(float(initial)))

    @torch.no_grad()
    def loss_and_grad(self, log_prob: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Temperature loss for log-probabilities of fresh policy actions (no gradient to the policy) and its
        gradient at log alpha, by hand: the loss is -weight * mean(log pi + target entropy), with weight
        exp(log alpha) (reference) or log alpha."""
        centred = (log_prob + self.target_entropy).mean()
        if self.reference:
            loss = -self.log_alpha.exp() * centred
            return loss, loss.clone()
        return -self.log_alpha * centred, -centred

    @torch.no_grad()
    def refresh(self) -> None:
        """alpha <- exp(log alpha), after the temperature step."""
        self.alpha.copy_(self.log_alpha.exp())


class SACBase(BeliefAgent):
    """Actor and critic GRU encoders, a tanh-Gaussian policy inside the action box, twin critics with targets.

    Subclasses provide the action box, `critic_actions` (what the critics see for the stored transitions) and
    `target_values` (min of the target critics at the next states for sampled next actions).
    """

    acting_encoders: tuple[str, ...] = ("actor",)
    # buffers registered in __init__: the action box and the target critic (copies of `q`'s parameters)
    action_center: torch.Tensor
    action_scale: torch.Tensor
    q_target_weight1: torch.Tensor
    q_target_bias1: torch.Tensor
    q_target_weight2: torch.Tensor
    q_target_bias2: torch.Tensor

    def __init__(
        self,
        num_items: int,
        slate_size: int,
        action_dim: int,
        critic_action_dim: int,
        action_center: torch.Tensor,
        action_scale: torch.Tensor,
        config: SACConfig,
        seed: int,
    ) -> None:
        super().__init__(num_items, slate_size, seed)
        self.config = config
        gen, belief = self.generator, config.belief
        self.action_dim = int(action_dim)
        self.register_buffer("action_center", action_center.detach().float().clone())
        self.register_buffer("action_scale", action_scale.detach().float().clone())
        self.beliefs = BeliefEncoders(
            ("actor", "critic"), num_items, slate_size, gen, belief.item_dim, belief.hidden_dim
        )
        self.policy = MLP(belief.hidden_dim, config.hidden, 2 * self.action_dim, gen)
        self.q = TwinQ(belief.hidden_dim, critic_action_dim, config.hidden, gen)
        for name, value in zip(("weight1", "bias1", "weight2", "bias2"), self.q.params(), strict=True):
            self.register_buffer(f"q_target_{name}", value.detach().clone())
        self.temperature = Temperature(config.alpha, -self.action_dim, config.reference_temperature)
        self.q_optimizer = adam(self.q.parameters(), config.q_lr)
        groups = [
            {"params": [*self.policy.parameters(), *self.beliefs.encoders["actor"].parameters()], "lr": config.pi_lr},
            {"params": list(self.beliefs.encoders["critic"].parameters()), "lr": config.q_lr},
        ]
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

    def squashed_sample(self, mu: torch.Tensor, log_std: torch.Tensor, noise: torch.Tensor) -> SquashedSample:
        """a = c + s tanh(mu + sigma noise) and log pi(a) (tanh correction with 1e-6; the log s Jacobian only
        without reference_temperature, Q9). noise may carry leading dimensions (several draws per row)."""
        std = log_std.exp()
        squashed = torch.addcmul(mu, std, noise).tanh_()
        # log pi = -sum_j [log(1 - tanh^2 + 1e-6) + noise^2 / 2] - sum_j log sigma - A log sqrt(2 pi): the terms of
        # every draw in three kernels, the draw-independent ones once per row
        per_draw = torch.addcmul(squashed.new_full((), 1e-6), squashed, squashed, value=-1.0).log1p_()
        log_prob = -per_draw.addcmul_(noise, noise, value=0.5).sum(-1) - (log_std.sum(-1) + mu.shape[-1] * LOG_SQRT_2PI)
        if not self.config.reference_temperature:
            log_prob = log_prob - self.action_scale.log().sum()
        return SquashedSample(
            torch.addcmul(self.action_center, self.action_scale, squashed), log_prob, squashed, std, noise
        )

    def policy_action(self, states: torch.Tensor, mode: str) -> torch.Tensor:
        """Sampled (explore) or deterministic c + s tanh(mu) action for actor states (n, H)."""
        mu, log_std = self.policy_head(states)
        if mode == EXPLORE:
            return self.squashed_sample(mu, log_std, torch.randn(mu.shape, generator=self.act_generator)).actions
        return self.action_center + self.action_scale * torch.tanh(mu)

    # ---------------------------------------------------------------- learning
    def critic_actions(self, batch: Trajectories) -> torch.Tensor:
        """What the critics see as the action of each stored transition, (B * H, critic action dim)."""
        raise NotImplementedError

    def target_values(self, critic_states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """min(Q1_target, Q2_target) at critic states (n, H) for policy actions (n, A), row by row: (n,)."""
        raise NotImplementedError

    def update(self, batch: Trajectories) -> Diagnostics:
        cfg, hidden, dim = self.config, self.config.belief.hidden_dim, self.action_dim
        num, steps = batch.slates.shape[0], batch.slates.shape[1] - 1
        rows = num * steps
        encoded = self.beliefs.encode(batch.slates[:, :-1], batch.clicks[:, :-1])  # (2, B, H, D): actor, critic
        actor, critic = encoded.detach().reshape(2, rows, hidden).unbind(0)
        alpha = self.temperature.alpha.clone()
        policy = [p.detach() for p in self.policy.parameters()]
        policy_in, policy_hidden, policy_out = mlp_forward(policy, actor)
        mu, raw_log_std = policy_out[:, :dim], policy_out[:, dim:]
        log_std = raw_log_std.clamp(-20.0, 2.0)
        noise = torch.randn(2, rows, dim, generator=self.generator)
        noise[1] = noise[1].roll(1, 0)  # the target's draw for row i is made at row i + 1
        sample = self.squashed_sample(mu, log_std, noise)

        # critic target; row i + 1 is the next state of row i (last rows masked by done)
        not_done = torch.ones(num, steps)
        not_done[:, -1] = 0.0
        next_value = _next_rows(self.target_values(critic, sample.actions[1]))
        soft_value = next_value - alpha * _next_rows(sample.log_prob[1])
        target = batch.rewards.view(rows) + cfg.gamma * not_done.view(rows) * soft_value

        q_params = [p.detach() for p in self.q.params()]
        q, q_grads, d_critic = twin_q_regression(
            q_params, with_ones(critic, self.critic_actions(batch)), target, hidden
        )
        q_loss = 0.5 * (q - target.unsqueeze(1)).pow(2).mean(0).sum()
        _step(self.q_optimizer, self.q.params(), q_grads)

        # actor loss with the stepped critics (q_params are views of the stepped parameters)
        log_prob = sample.log_prob[0]
        q_min, d_actions = twin_q_min_action_grad(q_params, with_ones(critic, sample.actions[0]), hidden)
        pi_loss = (alpha * log_prob - q_min).mean()
        d_actions.div_(-rows)
        d_mu, d_log_std = self.squashed_sample_backward(sample, d_actions, float(alpha) / rows)
        d_log_std.masked_fill_(log_std != raw_log_std, 0.0)  # the clamp's backward (inclusive bounds)
        policy_grads, d_actor = mlp_backward(policy, policy_in, policy_hidden, torch.cat([d_mu, d_log_std], 1))
        alpha_loss = torch.zeros(())
        if cfg.auto_entropy:
            alpha_loss, self.temperature.log_alpha.grad = self.temperature.loss_and_grad(log_prob)
        encoded.backward(torch.stack([d_actor, d_critic]).view(2, num, steps, hidden))
        _step(self.optimizer, list(self.policy.parameters()), policy_grads)
        if cfg.auto_entropy:
            self.temperature.refresh()
        with torch.no_grad():
            torch._foreach_lerp_(self.target_params(), q_params, cfg.tau)
            return {
                "q_loss": q_loss,
                "pi_loss": pi_loss,
                "alpha_loss": alpha_loss,
                "alpha": alpha,
                "q_mean": q[:, 0].mean(),
                "log_prob": log_prob.mean(),
            }

    def squashed_sample_backward(
        self, sample: SquashedSample, d_actions: torch.Tensor, d_log_prob: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradients at (mu, log sigma) of sum(d_actions * a) + d_log_prob * sum(log pi(a)) for the first draw of
        `sample` (the actor's)."""
        squashed, std, noise = sample.squashed[0], sample.std, sample.noise[0]
        squared = squashed.square()
        # d log pi / d tanh = 2 tanh / (1 + 1e-6 - tanh^2) (from -log1p(1e-6 - tanh^2)); d tanh / d raw = 1 - tanh^2
        d_squashed = self.action_scale * d_actions + (2.0 * d_log_prob) * squashed / (1.0 + (1e-6 - squared))
        d_raw = d_squashed.mul_(1.0 - squared)
        return d_raw, d_raw * noise * std - d_log_prob  # raw = mu + sigma noise; log pi has -log sigma

    def training_state_dict(self) -> dict[str, Any]:
        return {
            **super().training_state_dict(),
            "q_optimizer": self.q_optimizer.state_dict(),
            "optimizer": self.optimizer.state_dict(),
        }

    def load_training_state_dict(self, state: dict[str, Any]) -> None:
        super().load_training_state_dict(state)
        self.q_optimizer.load_state_dict(state["q_optimizer"])
        self.optimizer.load_state_dict(state["optimizer"])


@dataclass
class SquashedSample:
    """Tanh-Gaussian draws (any leading dimensions) and what `SACBase.squashed_sample_backward` needs."""

    actions: torch.Tensor
    log_prob: torch.Tensor
    squashed: torch.Tensor
    std: torch.Tensor
    noise: torch.Tensor


def _next_rows(x: torch.Tensor) -> torch.Tensor:
    """Row i + 1 of x at row i (the last row repeated; it is always a masked terminal transition)."""
    return torch.cat([x[1:], x[-1:]])


def _step(optimizer: torch.optim.Optimizer, params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
    """Set hand-computed gradients (contiguous: fused Adam reads them as flat memory) and step."""
    for param, grad in zip(params, grads, strict=True):
        param.grad = grad
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


class SACAgent(SACBase):
    """SAC acting through a slate decoder (TopK or GeMS): the action is a point of the decoder's box, stored in
    the buffer, and decoded into a slate.

    Args:
        decoder: the ranker (its item table / VAE and bounds are frozen and saved with the agent).
        method: the method id ('sac_topk_ideal', 'sac_topk_mf', 'sac_gems').
        num_items: catalogue size N.
    """

    def __init__(
        self, decoder: SlateDecoder, num_items: int, slate_size: int, config: SACConfig, seed: int, method: str
    ) -> None:
        super().__init__(
            num_items,
            slate_size,
            decoder.action_dim,
            decoder.action_dim,
            decoder.action_center,
            decoder.action_scale,
            config,
            seed,
        )
        self.method = method
        for parameter in decoder.parameters():
            parameter.requires_grad_(False)
        self.decoder = decoder.eval()

    @property
    def stored_action_dim(self) -> int:
        return self.action_dim

    def random_action(self, num_users: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Warm-up action (Q10): uniform over the central half of the box."""
        actions = self.decoder.random_actions(num_users, self.act_generator)
        return self.decoder.decode(actions), actions

    def choose(
        self, states: torch.Tensor, mode: str, episode: int, **privileged: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        actions = self.policy_action(states[0], mode)
        return self.decoder.decode(actions), actions

    def critic_actions(self, batch: Trajectories) -> torch.Tensor:
        if batch.actions is None:
            raise SlateRLError("SAC learns from trajectories that carry the latent actions it played")
        return batch.actions.reshape(-1, self.action_dim)

    def target_values(self, critic_states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return twin_q_min(self.target_params(), with_ones(critic_states, actions))
