"""Helpers of the agents' tests: a SAC update written independently of the agents' code (autograd, nn.GRU,
separate critics, torch.distributions) used as the reference for theirs, and small environments / protocols."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from slate_rl import envs
from slate_rl.protocol import Protocol
from slate_rl.rankers.base import SlateDecoder


@pytest.fixture(autouse=True)
def single_thread():
    """One intra-op thread while an agents' test runs (tiny kernels; two threads only add contention)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_env(name: str = "focused_topdown", **overrides) -> envs.TopicRec:
    """A preset environment with shorter episodes (overrides pass through)."""
    return envs.make(name, **{"episode_length": 20, **overrides})


def small_protocol(**overrides) -> Protocol:
    values = dict(
        episodes=60,
        warmup_episodes=20,
        val_every=20,
        val_episodes=16,
        test_episodes=24,
        parallel_episodes=5,
        save_every=20,
    )
    values.update(overrides)
    return Protocol(**values)


class PlainGRU(nn.Module):
    """One encoder as the reference builds it: nn.Embedding + nn.GRU, copying a GRUBelief's weights."""

    def __init__(self, belief) -> None:
        super().__init__()
        hidden = belief.weight_hh_l0.shape[1]
        self.items = nn.Parameter(belief.items.detach().clone())
        self.gru = nn.GRU(belief.weight_ih_l0.shape[1], hidden, batch_first=True)
        with torch.no_grad():
            for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
                getattr(self.gru, name).copy_(getattr(belief, name))

    def forward(self, slates: torch.Tensor, clicks: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.items[slates], clicks.float().unsqueeze(-1)], -1).flatten(2)
        return self.gru(x)[0]


def plain_sac_losses(agent, batch, noise: torch.Tensor, stored=None, target_values=None):
    """The SAC update written plainly, on copies of the agent's networks (separate Q-nets, nn.GRU encoders, the
    policy evaluated separately on next states). Returns the losses and the gradients of every piece, in the
    reference's order (critic grads before the critic step; actor grads with the stepped critic).

    stored: what the critics see for the stored transitions (default: the stored actions); target_values(next
    critic states, next actions, next actor states): min of the target critics (default: the two target critics,
    evaluated plainly)."""
    cfg, hidden = agent.config, agent.config.belief.hidden_dim
    enc = {name: PlainGRU(agent.beliefs.encoders[name]) for name in ("actor", "critic")}
    num, steps = batch.slates.shape[0], batch.slates.shape[1] - 1
    full_a, full_c = (enc[name](batch.slates, batch.clicks) for name in ("actor", "critic"))  # h_0 .. h_H
    h_a, h_c = full_a[:, :-1].reshape(num * steps, hidden), full_c[:, :-1].reshape(num * steps, hidden)
    policy = [p.detach().clone().requires_grad_() for p in agent.policy.parameters()]
    w1, b1, w2, b2 = [p.detach().clone().requires_grad_() for p in agent.q.params()]
    qs = [
        (w1[k * cfg.hidden : (k + 1) * cfg.hidden], b1[k * cfg.hidden : (k + 1) * cfg.hidden], w2[k], b2[k])
        for k in range(2)
    ]
    targets = [p.detach() for p in agent.target_params()]
    tq = [
        (
            targets[0][k * cfg.hidden : (k + 1) * cfg.hidden],
            targets[1][k * cfg.hidden : (k + 1) * cfg.hidden],
            targets[2][k],
            targets[3][k],
        )
        for k in range(2)
    ]

    def q_net(params, state, action):
        w, b, v, c = params
        return F.linear(torch.relu(F.linear(torch.cat([state, action], 1), w, b)), v.unsqueeze(0), c).squeeze(1)

    def pi(state, eps):
        out = F.linear(torch.relu(F.linear(state, policy[0], policy[1])), policy[2], policy[3])
        mu, log_std = out[:, : agent.action_dim], out[:, agent.action_dim :].clamp(-20, 2)
        u = mu + log_std.exp() * eps
        logp = (
            torch.distributions.Normal(mu, log_std.exp()).log_prob(u) - torch.log(1 - torch.tanh(u) ** 2 + 1e-6)
        ).sum(1)
        if not cfg.reference_temperature:  # the Jacobian of the action box (Q9)
            logp = logp - agent.action_scale.log().sum()
        return agent.action_center + agent.action_scale * torch.tanh(u), logp

    alpha = agent.temperature.alpha.clone()
    next_state_c = full_c[:, 1:].reshape(num * steps, hidden).detach()
    next_state_a = full_a[:, 1:].reshape(num * steps, hidden).detach()
    not_done = torch.ones(num, steps)
    if cfg.reference_terminal_end:  # the last transition is terminal; otherwise it bootstraps from h_H
        not_done[:, -1] = 0
    with torch.no_grad():
        a_next, logp_next = pi(next_state_a, noise[1])
        if target_values is None:
            q_next = torch.min(q_net(tq[0], next_state_c, a_next), q_net(tq[1], next_state_c, a_next))
        else:
            q_next = target_values(next_state_c, a_next, next_state_a)
        y = batch.rewards.reshape(-1) + cfg.gamma * not_done.reshape(-1) * (q_next - alpha * logp_next)
    stored = batch.actions.reshape(num * steps, -1) if stored is None else stored
    q_loss = 0.5 * (F.mse_loss(q_net(qs[0], h_c, stored), y) + F.mse_loss(q_net(qs[1], h_c, stored), y))
    critic_params = [w1, b1, w2, b2, *enc["critic"].parameters()]
    critic_grads = torch.autograd.grad(q_loss, critic_params)
    # the critic step (Adam's first step moves every parameter by -lr * sign(grad), up to eps)
    opt = torch.optim.Adam([w1, b1, w2, b2], lr=cfg.q_lr)
    for p, g in zip([w1, b1, w2, b2], critic_grads[:4], strict=True):
        p.grad = g
    opt.step()
    a, logp = pi(h_a, noise[0])
    q_new = torch.min(q_net(qs[0], h_c.detach(), a), q_net(qs[1], h_c.detach(), a))
    pi_loss = (alpha * logp - q_new).mean()
    actor_grads = torch.autograd.grad(pi_loss, [*policy, *enc["actor"].parameters()])
    return {
        "q_loss": q_loss.detach(),
        "pi_loss": pi_loss.detach(),
        "critic_grads": critic_grads,
        "actor_grads": actor_grads,
        "log_prob": logp.detach(),
        "target": y,
    }


def gems_decoder(env, seed: int = 0) -> SlateDecoder:
    """An untrained GeMS decoder of the paper's shape (d = 32) with a unit box: enough to exercise SAC+GeMS."""
    from slate_rl.rankers.decoders import GeMSDecoder
    from slate_rl.rankers.gems import GeMS

    vae = GeMS(num_items=env.num_items, slate_size=env.slate_size, latent_dim=32, seed=seed)
    return GeMSDecoder(vae.decoder, vae.slate_head, vae.item_embeddings.weight, torch.zeros(32), torch.ones(32))


def mf_table(env, seed: int = 0) -> torch.Tensor:
    """A stand-in MF table: the simulator's table plus noise."""
    noise = torch.randn(env.item_embeddings.shape, generator=torch.Generator().manual_seed(seed))
    return env.item_embeddings + 0.1 * noise


def upstream(env) -> dict:
    """Keyword arguments of build_agent for every method."""
    return {"gems_decoder": gems_decoder(env), "mf_table": mf_table(env)}
