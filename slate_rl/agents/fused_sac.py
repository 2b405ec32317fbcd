"""The fused SAC update (`fused_update=true`): the update of `slate_rl.agents.sac` with hand-derived gradients.

Same results as the plain update up to float rounding (tested over 200 updates in float64), same random draws in the
same order, CPU only. What makes it faster:
* the actor and critic encoders are encoded once, in one stacked GRU pass with a hand-written backward
  (`BeliefEncoders.encode_fused`); the gradients of the critic and actor losses at the belief states are sent back
  through the GRU together at the end. Encoder parameters are stepped after the actor loss, as in the plain update;
* the heads (policy, twin critics, tanh-Gaussian sampling) are differentiated by hand (`slate_rl.agents.fused_nets`):
  autograd would record ~60 nodes and form products no loss needs;
* the policy is evaluated once on the belief states h_0 .. h_H of every trajectory and both noise draws are
  squashed in one pass: the actor's draws at the rows of h_0 .. h_{H-1}, the target's (pi(.|h_{t+1})) at those of
  h_1 .. h_H, zero noise elsewhere (those values are not read, and the rows of h_H get no actor gradient);
* hand-computed gradients are handed to the optimisers directly (the twin critics are packed into one set of
  tensors; Adam is per-parameter, so this changes nothing).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from slate_rl.agents.base import Diagnostics
from slate_rl.agents.buffer import Trajectories
from slate_rl.agents.fused_nets import mlp_backward, mlp_forward, twin_q_min_action_grad, twin_q_regression, with_ones
from slate_rl.agents.sac import LOG_SQRT_2PI, draw_normal

if TYPE_CHECKING:
    from slate_rl.agents.sac import SACBase, Temperature


@dataclass
class SquashedSample:
    """Tanh-Gaussian draws (any leading dimensions) and what `squashed_sample_backward` needs."""

    actions: torch.Tensor
    log_prob: torch.Tensor
    squashed: torch.Tensor
    std: torch.Tensor
    noise: torch.Tensor


def fused_sac_update(agent: SACBase, batch: Trajectories) -> Diagnostics:
    """One SAC update of `agent` (critic step, actor step, temperature step, Polyak averaging), fused."""
    cfg, hidden, dim = agent.config, agent.config.belief.hidden_dim, agent.action_dim
    num, steps = batch.slates.shape[0], batch.slates.shape[1] - 1
    rows = num * steps
    # actor and critic belief states of obs_0 .. obs_H, (2, B, H + 1, S); transition t reads h_t, its target h_{t+1}
    encoded = agent.beliefs.encode_fused(batch.slates, batch.clicks)
    all_actor, all_critic = encoded.detach().flatten(1, 2).unbind(0)
    actor, critic = _transitions(all_actor, num), _transitions(all_critic, num)
    alpha = agent.temperature.alpha.clone()
    policy = [p.detach() for p in agent.policy.parameters()]
    policy_in, policy_hidden, policy_out = mlp_forward(policy, all_actor)
    mu, raw_log_std = policy_out[:, :dim], policy_out[:, dim:]
    log_std = raw_log_std.clamp(-20.0, 2.0)
    # the plain update's draws: the actor's at the rows of h_0 .. h_{H-1}, the target's at those of h_1 .. h_H
    draws = draw_normal(agent.generator, actor, 2, num, steps, dim)
    noise = draws.new_zeros(2, num, steps + 1, dim)
    noise[0, :, :-1], noise[1, :, 1:] = draws[0], draws[1]
    sample = squashed_sample(agent, mu, log_std, noise.flatten(1, 2))

    # critic target
    not_done = batch.bootstrap_mask(cfg.reference_terminal_end)
    next_actions, next_log_prob = _next(sample.actions[1], num), _next(sample.log_prob[1], num)
    next_value = agent.target_values(_next(all_critic, num), next_actions, _next(all_actor, num))
    target = batch.rewards.view(rows) + cfg.gamma * not_done.view(rows) * (next_value - alpha * next_log_prob)

    q_params = [p.detach() for p in agent.q.params()]
    q, q_grads, d_critic = twin_q_regression(q_params, with_ones(critic, agent.critic_actions(batch)), target, hidden)
    q_loss = 0.5 * (q - target.unsqueeze(1)).pow(2).mean(0).sum()
    _step(agent.q_optimizer, agent.q.params(), q_grads)

    # actor loss with the stepped critics (q_params are views of the stepped parameters)
    log_prob = _transitions(sample.log_prob[0], num)
    q_min, d_actions = twin_q_min_action_grad(q_params, with_ones(critic, _transitions(sample.actions[0], num)), hidden)
    pi_loss = (alpha * log_prob - q_min).mean()
    d_actions.div_(-rows)
    d_mu, d_log_std = squashed_sample_backward(agent, sample, _padded(d_actions, num), float(alpha) / rows)
    d_log_std.masked_fill_(log_std != raw_log_std, 0.0)  # the clamp's backward (inclusive bounds)
    d_policy_out = torch.cat([d_mu, d_log_std], 1)
    d_policy_out.view(num, steps + 1, -1)[:, -1] = 0.0  # the rows of h_H are no transition of the actor loss
    policy_grads, d_actor = mlp_backward(policy, policy_in, policy_hidden, d_policy_out)
    alpha_loss = torch.zeros((), dtype=actor.dtype)
    if cfg.auto_entropy:
        alpha_loss, agent.temperature.log_alpha.grad = temperature_loss_and_grad(agent.temperature, log_prob)
    encoded.backward(torch.stack([d_actor, _padded(d_critic, num)]).view_as(encoded))
    _step(agent.optimizer, list(agent.policy.parameters()), policy_grads)
    if cfg.auto_entropy:
        agent.temperature.refresh()
    with torch.no_grad():
        torch._foreach_lerp_(agent.target_params(), q_params, cfg.tau)
        return {
            "q_loss": q_loss,
            "pi_loss": pi_loss,
            "alpha_loss": alpha_loss,
            "alpha": alpha,
            "q_mean": q[:, 0].mean(),
            "log_prob": log_prob.mean(),
        }


def _transitions(x: torch.Tensor, num: int) -> torch.Tensor:
    """Rows of the B trajectories' observations (B * (H + 1), ...) -> the rows of h_0 .. h_{H-1} (B * H, ...)."""
    return x.view(num, -1, *x.shape[1:])[:, :-1].flatten(0, 1)


def _next(x: torch.Tensor, num: int) -> torch.Tensor:
    """Rows of the B trajectories' observations (B * (H + 1), ...) -> the rows of h_1 .. h_H (B * H, ...)."""
    return x.view(num, -1, *x.shape[1:])[:, 1:].flatten(0, 1)


def _padded(x: torch.Tensor, num: int) -> torch.Tensor:
    """Rows of the B trajectories' transitions (B * H, ...) -> rows of their observations (B * (H + 1), ...), zero
    at h_H."""
    by_step = x.view(num, -1, *x.shape[1:])
    return torch.cat([by_step, by_step.new_zeros(num, 1, *x.shape[1:])], 1).flatten(0, 1)


def squashed_sample(agent: SACBase, mu: torch.Tensor, log_std: torch.Tensor, noise: torch.Tensor) -> SquashedSample:
    """`SACBase.sample` in a few in-place kernels, keeping what the backward needs; noise may carry leading
    dimensions (several draws per row)."""
    std = log_std.exp()
    squashed = torch.addcmul(mu, std, noise).tanh_()
    # log pi = -sum_j [log(1 - tanh^2 + 1e-6) + noise^2 / 2] - sum_j log sigma - A log sqrt(2 pi): the terms of
    # every draw in three kernels, the draw-independent ones once per row
    per_draw = torch.addcmul(squashed.new_full((), 1e-6), squashed, squashed, value=-1.0).log1p_()
    log_prob = -per_draw.addcmul_(noise, noise, value=0.5).sum(-1) - (log_std.sum(-1) + mu.shape[-1] * LOG_SQRT_2PI)
    if not agent.config.reference_temperature:
        log_prob = log_prob - agent.action_scale.log().sum()
    actions = torch.addcmul(agent.action_center, agent.action_scale, squashed)
    return SquashedSample(actions, log_prob, squashed, std, noise)


def squashed_sample_backward(
    agent: SACBase, sample: SquashedSample, d_actions: torch.Tensor, d_log_prob: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients at (mu, log sigma) of sum(d_actions * a) + d_log_prob * sum(log pi(a)) for the first draw of
    `sample` (the actor's)."""
    squashed, std, noise = sample.squashed[0], sample.std, sample.noise[0]
    squared = squashed.square()
    # d log pi / d tanh = 2 tanh / (1 + 1e-6 - tanh^2) (from -log1p(1e-6 - tanh^2)); d tanh / d raw = 1 - tanh^2
    d_squashed = agent.action_scale * d_actions + (2.0 * d_log_prob) * squashed / (1.0 + (1e-6 - squared))
    d_raw = d_squashed.mul_(1.0 - squared)
    return d_raw, d_raw * noise * std - d_log_prob  # raw = mu + sigma noise; log pi has -log sigma


@torch.no_grad()
def temperature_loss_and_grad(temperature: Temperature, log_prob: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`Temperature.loss` and its gradient at log alpha, by hand: the loss is -weight * mean(log pi + target
    entropy), with weight exp(log alpha) (reference) or log alpha."""
    centred = (log_prob + temperature.target_entropy).mean()
    if temperature.reference:
        loss = -temperature.log_alpha.exp() * centred
        return loss, loss.clone()
    return -temperature.log_alpha * centred, -centred


def _step(optimizer: torch.optim.Optimizer, params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
    """Set hand-computed gradients (contiguous: fused Adam reads them as flat memory) and step."""
    for param, grad in zip(params, grads, strict=True):
        param.grad = grad
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
