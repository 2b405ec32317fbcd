"""Soft actor-critic over GRU beliefs: SAC+TopK (ideal / MF), SAC+GeMS, and the shared core of SAC+WkNN.

One update on B whole trajectories, written with autograd in the reference's order: critic step, actor step,
temperature step, Polyak averaging of the two target critics (targets cover only the Q heads; both critics share the
critic encoder; the next states come from the online encoders, detached: Q15). The last transition of an episode
bootstraps from the belief after the final observation (a time-limit truncation) unless `reference_terminal_end`.
`fused_update=true` runs the same update with hand-derived gradients on fused CPU kernels instead
(`slate_rl.agents.fused_sac`; same random draws, same results up to float rounding, tested). `precision=bf16` runs
the forward passes of the plain update under bfloat16 autocast (`slate_rl.precision`); acting stays fp32.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from slate_rl.agents.base import EXPLORE, BeliefAgent, Diagnostics
from slate_rl.agents.belief import BeliefEncoders
from slate_rl.agents.buffer import Trajectories
from slate_rl.agents.config import SACConfig
from slate_rl.agents.nets import MLP, TwinQ, adam, twin_q
from slate_rl.errors import SlateRLError
from slate_rl.precision import autocast
from slate_rl.rankers.base import SlateDecoder

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


class Temperature(nn.Module):
    """SAC's entropy temperature alpha with automatic tuning (target entropy -dim(a)); see SACConfig for Q9."""

    def __init__(
        self, initial: float, target_entropy: float, reference: bool, device: torch.device | str = "cpu"
    ) -> None:
        super().__init__()
        self.reference, self.target_entropy = reference, float(target_entropy)
        self.log_alpha = nn.Parameter(torch.tensor(0.0 if reference else math.log(initial), device=device))
        self.alpha: torch.Tensor
        self.register_buffer("alpha", torch.tensor(float(initial), device=device))

    def loss(self, log_prob: torch.Tensor) -> torch.Tensor:
        """-weight * mean(log pi + target entropy) for log-probabilities of fresh policy actions (no gradient to the
        policy); weight exp(log alpha) (reference) or log alpha."""
        return temperature_loss(self.log_alpha, log_prob, self.target_entropy, self.reference)

    @torch.no_grad()
    def refresh(self) -> None:
        """alpha <- exp(log alpha), after the temperature step."""
        self.alpha.copy_(self.log_alpha.exp())


def temperature_loss(
    log_alpha: torch.Tensor, log_prob: torch.Tensor, target_entropy: float, reference: bool
) -> torch.Tensor:
    """`Temperature.loss` for log alpha of any leading shape (...) and log-probabilities (..., n): (...)."""
    weight = log_alpha.exp() if reference else log_alpha
    return -(weight.unsqueeze(-1) * (log_prob.detach() + target_entropy)).mean(-1)


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
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__(num_items, slate_size, seed, device)
        self.config = config
        gen, belief, device = self.generator, config.belief, self.device
        self.action_dim = int(action_dim)
        self.register_buffer("action_center", action_center.detach().to(device, torch.float32, copy=True))
        self.register_buffer("action_scale", action_scale.detach().to(device, torch.float32, copy=True))
        self.beliefs = BeliefEncoders(
            ("actor", "critic"), num_items, slate_size, gen, belief.item_dim, belief.hidden_dim, device
        )
        self.policy = MLP(belief.hidden_dim, config.hidden, 2 * self.action_dim, gen, device)
        self.q = TwinQ(belief.hidden_dim, critic_action_dim, config.hidden, gen, device)
        for name, value in zip(("weight1", "bias1", "weight2", "bias2"), self.q.params(), strict=True):
            self.register_buffer(f"q_target_{name}", value.detach().clone())
        self.temperature = Temperature(config.alpha, -self.action_dim, config.reference_temperature, device)
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

    def sample(self, states: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterised tanh-Gaussian actions a = c + s tanh(mu + sigma noise) at actor states (n, H), and
        log pi(a): the Gaussian log-density minus log(1 - tanh^2 + 1e-6) per dimension (minus the log s Jacobian of
        the action box too, without reference_temperature: Q9)."""
        mu, log_std = self.policy_head(states)
        jacobian = not self.config.reference_temperature
        return tanh_gaussian(mu, log_std, noise, self.action_center, self.action_scale, jacobian)

    def policy_action(self, states: torch.Tensor, mode: str) -> torch.Tensor:
        """Sampled (explore) or deterministic c + s tanh(mu) action for actor states (n, H)."""
        if mode == EXPLORE:
            return self.sample(states, draw_normal(self.act_generator, states, states.shape[0], self.action_dim))[0]
        mu, _ = self.policy_head(states)
        return self.action_center + self.action_scale * torch.tanh(mu)

    # ---------------------------------------------------------------- learning
    def critic_actions(self, batch: Trajectories) -> torch.Tensor:
        """What the critics see as the action of each stored transition, (B * H, critic action dim)."""
        raise NotImplementedError

    def target_values(
        self, critic_states: torch.Tensor, actions: torch.Tensor, actor_states: torch.Tensor
    ) -> torch.Tensor:
        """min(Q1_target, Q2_target) at critic states (n, H) for policy actions (n, A) drawn at the actor states
        (n, H), row by row: (n,)."""
        raise NotImplementedError

    def update(self, batch: Trajectories) -> Diagnostics:
        cfg = self.config
        if cfg.fused_update:
            from slate_rl.agents.fused_sac import fused_sac_update  # the opt-in fused CPU kernels

            return fused_sac_update(self, batch)
        rewards = batch.rewards.reshape(-1)
        not_done = batch.bootstrap_mask(cfg.reference_terminal_end)
        alpha = self.temperature.alpha.clone()
        with autocast(cfg.precision, self.device):  # the forward passes; a no-op in fp32
            # belief states h_0 .. h_H of obs_0 .. obs_H: transition t (B * H rows) has the state h_t and the next
            # state h_{t+1}, detached (for the last transition the belief after the episode's final observation)
            actor, next_actor = transition_states(self.beliefs.encode(batch.slates, batch.clicks, ("actor",))[0])
            critic, next_critic = transition_states(self.beliefs.encode(batch.slates, batch.clicks, ("critic",))[0])
            # noise[0]: the actor's draw at h_t, noise[1]: the target's draw at h_{t+1}
            noise = draw_normal(self.generator, actor, 2, actor.shape[0], self.action_dim)

            # critic: L_Q = 1/2 sum_k mean_t (Q_k(h^C_t, a_t) - y_t)^2, a_t the stored action, with the target
            # y_t = r_t + gamma (1 - d_t) [min_k Qtarget_k(h^C_{t+1}, a') - alpha log pi(a' | h^A_{t+1})],
            # a' ~ pi(. | h^A_{t+1}), d_t = 1 only at an episode's last step with reference_terminal_end
            with torch.no_grad():
                next_actions, next_log_prob = self.sample(next_actor, noise[1])
                soft_value = self.target_values(next_critic, next_actions, next_actor) - alpha * next_log_prob
                target = rewards + cfg.gamma * not_done.reshape(-1) * soft_value
            q = self.q(critic, self.critic_actions(batch))
            q_loss = 0.5 * (q - target.unsqueeze(1)).pow(2).mean(0).sum()
        q_loss.backward()
        self.q_optimizer.step()  # the Q heads; the critic encoder's gradient waits for the step below
        self.q_optimizer.zero_grad(set_to_none=True)

        with autocast(cfg.precision, self.device):
            # actor: L_pi = mean_t [alpha log pi(a~ | h^A_t) - min_k Q_k(sg h^C_t, a~)], a~ ~ pi(.|h^A_t), stepped
            # critics
            actions, log_prob = self.sample(actor, noise[0])
            frozen_q = [p.detach() for p in self.q.params()]  # the actor loss trains the actor only
            q_new = twin_q(frozen_q, critic.detach(), actions).min(1).values
            pi_loss = (alpha * log_prob - q_new).mean()
            # temperature: L_alpha on the same log-probabilities, detached
            alpha_loss = self.temperature.loss(log_prob) if cfg.auto_entropy else torch.zeros_like(pi_loss)
        (pi_loss + alpha_loss).backward()
        # one step of the policy and actor encoder (pi_lr), the critic encoder (q_lr: its gradient is the critic
        # loss's; no loss reads it after the critic step) and log alpha
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if cfg.auto_entropy:
            self.temperature.refresh()
        with torch.no_grad():
            torch._foreach_lerp_(self.target_params(), [p.detach() for p in self.q.params()], cfg.tau)
        return {
            "q_loss": q_loss.detach(),
            "pi_loss": pi_loss.detach(),
            "alpha_loss": alpha_loss.detach(),
            "alpha": alpha,
            "q_mean": q[:, 0].detach().mean(),
            "log_prob": log_prob.detach().mean(),
        }

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


def draw_normal(generator: torch.Generator, like: torch.Tensor, *shape: int) -> torch.Tensor:
    """Standard normal draws of `shape` from `generator` (on its device), in the dtype and on the device of `like`."""
    return torch.randn(*shape, generator=generator, device=generator.device, dtype=like.dtype).to(like.device)


def transition_states(states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Belief states (B, H + 1, S) of obs_0 .. obs_H -> the transitions' states h_t and their next states h_{t+1}
    (detached), both (B * H, S)."""
    return states[:, :-1].flatten(0, 1), states[:, 1:].detach().flatten(0, 1)


def tanh_gaussian(
    mu: torch.Tensor,
    log_std: torch.Tensor,
    noise: torch.Tensor,
    center: torch.Tensor,
    scale: torch.Tensor,
    jacobian: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Actions c + s tanh(mu + sigma noise) and their log pi (summed over the last dimension; `jacobian` subtracts
    the log s of the action box), for any leading dimensions that center and scale (..., A) broadcast to."""
    squashed = torch.tanh(mu + log_std.exp() * noise)
    log_gaussian = -0.5 * noise.pow(2) - log_std - LOG_SQRT_2PI
    log_prob = (log_gaussian - torch.log(1 - squashed.pow(2) + 1e-6)).sum(-1)
    if jacobian:
        log_prob = log_prob - scale.log().sum(-1)
    return center + scale * squashed, log_prob


class SACAgent(SACBase):
    """SAC acting through a slate decoder (TopK or GeMS): the action is a point of the decoder's box, stored in
    the buffer, and decoded into a slate.

    Args:
        decoder: the ranker (its item table / VAE and bounds are frozen and saved with the agent).
        method: the method id ('sac_topk_ideal', 'sac_topk_mf', 'sac_gems').
        num_items: catalogue size N.
        device: where the agent (and its copy of the decoder) lives.
    """

    def __init__(
        self,
        decoder: SlateDecoder,
        num_items: int,
        slate_size: int,
        config: SACConfig,
        seed: int,
        method: str,
        device: torch.device | str = "cpu",
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
            device,
        )
        self.method = method
        for parameter in decoder.parameters():
            parameter.requires_grad_(False)
        self.decoder = decoder.to(self.device).eval()

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

    def target_values(
        self, critic_states: torch.Tensor, actions: torch.Tensor, actor_states: torch.Tensor
    ) -> torch.Tensor:
        return twin_q(self.target_params(), critic_states, actions).min(1).values
