"""S agents of one SAC method (SAC+TopK, SAC+GeMS) trained together: one forward and one backward for all seeds.

The agents' parameters are stacked along a leading seed dimension and every network runs as batched matmuls over it;
the belief GRUs of all seeds (actor and critic encoders) advance as one stack of 2S cells. Each seed keeps what makes
it an independent run: its own replay buffer and batch, its own generators (replay sampling and update noise from
`generator`, exploration and warm-up actions from `act_generator`, drawn in the same order as by the agent alone)
and its own action box. The per-seed losses are summed before differentiating: seeds share no parameter, so each
seed's slice of a stacked tensor receives exactly its own gradient. The optimisers are Adam over the stacked
tensors, which steps each slice as the seed's own Adam would: Adam is elementwise, and its step count, shared by
all elements, is the same for every seed because all seeds update together. So seed s of a group follows agent s
trained alone, up to float rounding (tested over 200 updates in float64).

The group is built from S agents (`build_agent` once per seed) and uses their generators; `write_back` copies the
stacked weights and optimiser states into the agents, so whatever works on one agent (checkpoints, validation,
export) works on each seed. The update is the plain SAC update of `slate_rl.agents.sac` (`fused_update` does not
apply), batched over seeds.

    group = SeedGroup([build_agent("sac_topk_ideal", env, seed) for seed in seeds])
    batch = group.sample(buffers)            # one TrajectoryBuffer per seed; None until each holds a batch
    diagnostics = group.update(batch)        # name -> (S,)
    group.start(K); slates, actions = group.act({"slate": (S, K, R), "clicks": (S, K, R)}, "explore")
    episodes = play_group(env, group, K, "explore")   # (S, K, ...): every seed meets the K users it would alone
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from slate_rl.agents.base import EXPLORE, GREEDY, MODES, RANDOM, Diagnostics, Observation
from slate_rl.agents.belief import encode_stacked, input_gates
from slate_rl.agents.buffer import Trajectories, TrajectoryBuffer
from slate_rl.agents.gru import gru_cell
from slate_rl.agents.nets import adam, twin_q_stacked
from slate_rl.agents.sac import SACAgent, draw_normal, tanh_gaussian, temperature_loss, transition_states
from slate_rl.envs.topicrec import TopicRec
from slate_rl.errors import SlateRLError
from slate_rl.precision import autocast

ENCODER_KEYS = ("items", "weight_ih_l0", "bias_ih_l0", "weight_hh_l0", "bias_hh_l0")
STACKED_BUFFERS: tuple[str, ...] = ("action_center", "action_scale", "temperature.alpha")
STACKED_BUFFERS += tuple(f"q_target_{key}" for key in ("weight1", "bias1", "weight2", "bias2"))
OPTIMIZERS = ("q_optimizer", "optimizer")


class SeedGroup:
    """S agents of one SAC method with stacked parameters, updated and stepped as one.

    Args:
        agents: SACAgent instances of one method and config, one per seed, in the order of the seed dimension.
    """

    def __init__(self, agents: Sequence[SACAgent]) -> None:
        agents = list(agents)
        _check_agents(agents)
        self.agents = agents
        self.config = agents[0].config
        self.size = len(agents)
        self.device = agents[0].device
        self.action_dim = agents[0].action_dim
        self.hidden_dim = self.config.belief.hidden_dim
        named = [dict(agent.named_parameters()) for agent in agents]
        self.params = {
            name: torch.stack([params[name].detach() for params in named]).requires_grad_()
            for name, value in named[0].items()
            if value.requires_grad
        }
        buffers = [dict(agent.named_buffers()) for agent in agents]
        self.buffers = {name: torch.stack([b[name] for b in buffers]) for name in STACKED_BUFFERS}
        # the agents' optimisers over the stacked tensors: same groups and learning rates, states stacked
        names = {id(value): name for name, value in named[0].items()}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        for key in OPTIMIZERS:
            groups = [
                {"params": [self.params[names[id(p)]] for p in group["params"]], "lr": group["lr"]}
                for group in getattr(agents[0], key).param_groups
            ]
            self.optimizers[key] = adam(groups, groups[0]["lr"])
            self._load_optimizer_state(key, names)
        self._hidden: torch.Tensor | None = None  # (S, n, H) actor belief states while acting
        first = agents[0].decoder
        self._shared_decoder = all(_same_module(first, agent.decoder) for agent in agents[1:])

    # ---------------------------------------------------------------- stacked networks
    def _encoder(self, name: str, key: str) -> torch.Tensor:
        return self.params[f"beliefs.encoders.{name}.{key}"]

    def _policy_head(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, log sigma clipped to [-20, 2]) of every seed's policy at its states (S, n, H)."""
        weight1, bias1, weight2, bias2 = (
            self.params[f"policy.{key}"] for key in ("weight1", "bias1", "weight2", "bias2")
        )
        out = mlp(weight1, bias1, weight2, bias2, states)
        return out[..., : self.action_dim], out[..., self.action_dim :].clamp(-20.0, 2.0)

    def _sample(self, states: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`SACBase.sample` for every seed: actions (S, n, A) and log pi (S, n)."""
        mu, log_std = self._policy_head(states)
        center, scale = self.buffers["action_center"].unsqueeze(1), self.buffers["action_scale"].unsqueeze(1)
        return tanh_gaussian(mu, log_std, noise, center, scale, not self.config.reference_temperature)

    def q_params(self) -> list[torch.Tensor]:
        return [self.params[f"q.{key}"] for key in ("weight1", "bias1", "weight2", "bias2")]

    def target_params(self) -> list[torch.Tensor]:
        return [self.buffers[f"q_target_{key}"] for key in ("weight1", "bias1", "weight2", "bias2")]

    # ---------------------------------------------------------------- learning
    def sample(self, buffers: Sequence[TrajectoryBuffer]) -> Trajectories | None:
        """Each seed's batch from its own buffer with its own generator, stacked (S, B, ...); None while a buffer
        holds fewer than a batch."""
        if len(buffers) != self.size:
            raise SlateRLError(f"a group of {self.size} seeds samples from one buffer per seed (got {len(buffers)})")
        if any(len(buffer) < self.config.batch_size for buffer in buffers):
            return None
        batches: list[Trajectories] = []
        for buffer, agent in zip(buffers, self.agents, strict=True):
            batch = buffer.sample(self.config.batch_size, agent.generator)
            assert batch is not None  # every buffer holds a batch (checked above)
            batches.append(batch)
        return stack_trajectories(batches)

    def update(self, batch: Trajectories) -> Diagnostics:
        """One SAC update of every seed on its batch (S, B, ...): the update of `SACBase.update`, batched over seeds.
        Returns each diagnostic of the agent's update as an (S,) tensor."""
        cfg, size, hidden = self.config, self.size, self.hidden_dim
        if batch.slates.dim() != 4 or batch.slates.shape[0] != size or batch.actions is None:
            raise SlateRLError(
                f"a group of {size} seeds updates on stacked trajectories with actions, slates (S={size}, B, H + 1, R);"
                f" got slates {tuple(batch.slates.shape)}, actions {'none' if batch.actions is None else 'given'}"
            )
        num, steps = batch.slates.shape[1], batch.slates.shape[2] - 1
        rows = num * steps
        flat = Trajectories(batch.slates.flatten(0, 1), batch.clicks.flatten(0, 1))
        rewards = flat.rewards.view(size, rows)
        not_done = flat.bootstrap_mask(cfg.reference_terminal_end).view(size, rows)
        alpha = self.buffers["temperature.alpha"].clone()
        with autocast(cfg.precision, self.device):  # the forward passes; a no-op in fp32
            # belief states h_0 .. h_H of both encoders of every seed in one GRU stack of 2S cells; transition t has
            # the state h_t and the next state h_{t+1}, detached (see SACBase.update)
            tables, w_ih, b_ih, w_hh, b_hh = (
                torch.cat([self._encoder("actor", key), self._encoder("critic", key)]) for key in ENCODER_KEYS
            )
            slates, clicks = (x.repeat(2, 1, 1, 1) for x in (batch.slates, batch.clicks))
            encoded = encode_stacked(tables, w_ih, b_ih, w_hh, b_hh, slates, clicks)
            encoded = encoded.view(2, size * num, steps + 1, -1)
            actor, next_actor = (x.view(size, rows, hidden) for x in transition_states(encoded[0]))
            critic, next_critic = (x.view(size, rows, hidden) for x in transition_states(encoded[1]))
            # the critic loss reads critic states through `critic_in`: its gradient there is taken before the
            # critic step and sent through the GRUs with the actor loss's (one backward pass, at the pre-step
            # critic, as in the agent's update)
            critic_in = critic.detach().requires_grad_()
            # noise[0]: the actor's draw at h_t, noise[1]: the target's draw at h_{t+1}, from each seed's generator
            noise = torch.stack([draw_normal(a.generator, actor, 2, rows, self.action_dim) for a in self.agents], 1)

            # critic: L_Q = 1/2 sum_k mean_t (Q_k(h^C_t, a_t) - y_t)^2 per seed (see SACBase.update)
            with torch.no_grad():
                next_actions, next_log_prob = self._sample(next_actor, noise[1])
                next_q = twin_q_stacked(self.target_params(), next_critic, next_actions).min(-1).values
                target = rewards + cfg.gamma * not_done * (next_q - alpha.unsqueeze(1) * next_log_prob)
            q = twin_q_stacked(self.q_params(), critic_in, batch.actions.reshape(size, rows, -1))
            q_loss = 0.5 * (q - target.unsqueeze(-1)).pow(2).mean(1).sum(-1)
        *q_grads, d_critic = torch.autograd.grad(q_loss.sum(), [*self.q_params(), critic_in])
        _step(self.optimizers["q_optimizer"], self.q_params(), q_grads)

        with autocast(cfg.precision, self.device):
            # actor: L_pi = mean_t [alpha log pi(a~ | h^A_t) - min_k Q_k(sg h^C_t, a~)] per seed, stepped critics
            actions, log_prob = self._sample(actor, noise[0])
            frozen_q = [p.detach() for p in self.q_params()]
            q_new = twin_q_stacked(frozen_q, critic_in.detach(), actions).min(-1).values
            pi_loss = (alpha.unsqueeze(1) * log_prob - q_new).mean(1)
            log_alpha = self.params["temperature.log_alpha"]
            target_entropy, reference = -float(self.action_dim), cfg.reference_temperature
            alpha_loss = (
                temperature_loss(log_alpha, log_prob, target_entropy, reference)
                if cfg.auto_entropy
                else torch.zeros_like(pi_loss)
            )
        torch.autograd.backward([(pi_loss + alpha_loss).sum(), critic], [None, d_critic])
        optimizer = self.optimizers["optimizer"]
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            if cfg.auto_entropy:
                self.buffers["temperature.alpha"].copy_(log_alpha.exp())
            torch._foreach_lerp_(self.target_params(), frozen_q, cfg.tau)
        return {
            "q_loss": q_loss.detach(),
            "pi_loss": pi_loss.detach(),
            "alpha_loss": alpha_loss.detach(),
            "alpha": alpha,
            "q_mean": q[..., 0].detach().mean(1),
            "log_prob": log_prob.detach().mean(1),
        }

    # ---------------------------------------------------------------- acting
    def start(self, num_users: int) -> None:
        """Zero the actor belief states of `num_users` users of every seed."""
        self._hidden = self._encoder("actor", "items").new_zeros(self.size, num_users, self.hidden_dim)

    @torch.no_grad()
    def act(self, obs: Observation, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Every seed's slates (S, n, R) and latent actions (S, n, A) for its users' latest observations
        obs['slate'], obs['clicks'] (S, n, R): `SACAgent.act` of each seed, in one pass."""
        if mode not in MODES:
            raise SlateRLError(f"unknown acting mode {mode!r}; choose one of {', '.join(MODES)}")
        num_users = obs["slate"].shape[1]
        if mode == RANDOM:
            actions = torch.stack([a.decoder.random_actions(num_users, a.act_generator) for a in self.agents])
            return self.decode(actions), actions
        if self._hidden is None:
            raise SlateRLError("call start() before act()")
        tables, w_ih, b_ih, w_hh, b_hh = (self._encoder("actor", key) for key in ENCODER_KEYS)
        gi = input_gates(tables, w_ih, b_ih, obs["slate"], obs["clicks"])
        self._hidden = states = gru_cell(gi, self._hidden, w_hh.transpose(1, 2), b_hh.unsqueeze(1))
        if mode == EXPLORE:
            noise = [draw_normal(a.act_generator, states, num_users, self.action_dim) for a in self.agents]
            actions = self._sample(states, torch.stack(noise))[0]
        else:
            mu = self._policy_head(states)[0]
            actions = self.buffers["action_center"].unsqueeze(1) + self.buffers["action_scale"].unsqueeze(1) * mu.tanh()
        return self.decode(actions), actions

    def decode(self, actions: torch.Tensor) -> torch.Tensor:
        """Slates (S, n, R) of latent actions (S, n, A): one call when the seeds share their decoder (TopK), else
        each seed's own (GeMS pre-trained per seed)."""
        if self._shared_decoder:
            return self.agents[0].decoder.decode(actions.flatten(0, 1)).view(*actions.shape[:2], -1)
        return torch.stack([a.decoder.decode(x) for a, x in zip(self.agents, actions, strict=True)])

    # ---------------------------------------------------------------- the agents
    @torch.no_grad()
    def write_back(self) -> None:
        """Copy every seed's weights, target critics, temperature and optimiser states into its agent."""
        for index, agent in enumerate(self.agents):
            named, buffers = dict(agent.named_parameters()), dict(agent.named_buffers())
            names = {id(value): name for name, value in named.items()}
            for name, value in self.params.items():
                named[name].copy_(value[index])
            for name, value in self.buffers.items():
                buffers[name].copy_(value[index])
            for key, stacked in self.optimizers.items():
                own = getattr(agent, key)
                for group in own.param_groups:
                    for param in group["params"]:
                        state = stacked.state.get(self.params[names[id(param)]])
                        if state:
                            own.state[param] = {k: _slice(v, index) for k, v in state.items()}

    def _load_optimizer_state(self, key: str, names: dict[int, str]) -> None:
        """Stack the agents' optimiser states (resuming agents); they must have taken the same number of steps."""
        named = [dict(agent.named_parameters()) for agent in self.agents]
        for param in _params(getattr(self.agents[0], key)):
            name = names[id(param)]
            states = [getattr(agent, key).state.get(own[name]) for agent, own in zip(self.agents, named, strict=True)]
            if not any(states):
                continue
            if not all(states) or any(not torch.equal(s["step"], states[0]["step"]) for s in states):
                raise SlateRLError(
                    "the agents of a seed group must have taken the same number of optimiser steps; build them "
                    "fresh or load checkpoints of the same episode"
                )
            self.optimizers[key].state[self.params[name]] = {
                k: states[0][k].clone() if k == "step" else torch.stack([s[k] for s in states]) for k in states[0]
            }


def play_group(env: TopicRec, group: SeedGroup, num_users: int, mode: str) -> Trajectories:
    """`rollout.play` for every seed of a group at once: `num_users` (K) episodes per seed, stacked (S, K, ...).

    The simulator plays S x K users (seed-major rows) whose random draws are those of K users, replicated over the
    seeds: each seed meets the very users and click draws it would meet playing alone, and the simulator's stream
    advances as in one `play` of K users (common random numbers across seeds, as across separate runs)."""
    if mode not in MODES:
        raise SlateRLError(f"unknown acting mode {mode!r}; choose one of {', '.join(MODES)}")
    size, users, horizon, slots = group.size, int(num_users), env.episode_length, env.slate_size
    p = env.params
    draws = env.stream.reset_draws(users, p.num_topics, p.topic_size, p.slate_size)
    replicated = torch.arange(size * users, device=env.device) % users  # row s * K + k is user k of seed s
    obs, _ = env.reset_with(draws.select(replicated))
    group.start(users)
    slates = torch.empty(size, users, horizon + 1, slots, dtype=torch.long, device=env.device)
    clicks = torch.empty(size, users, horizon + 1, slots, dtype=torch.uint8, device=env.device)
    actions = None if mode == GREEDY else torch.empty(size, users, horizon, group.action_dim, device=env.device)
    for t in range(horizon + 1):
        slates[:, :, t] = obs["slate"].view(size, users, slots)
        clicks[:, :, t] = obs["clicks"].view(size, users, slots)
        if t == horizon:
            break
        slate, action = group.act({key: value.view(size, users, slots) for key, value in obs.items()}, mode)
        if actions is not None:
            actions[:, :, t] = action
        uniforms = env.stream.step_draws(users, slots)
        obs = env.step_with(slate.reshape(size * users, slots), uniforms[replicated])[0]
    return Trajectories(slates, clicks, actions)


def mlp(
    weight1: torch.Tensor, bias1: torch.Tensor, weight2: torch.Tensor, bias2: torch.Tensor, x: torch.Tensor
) -> torch.Tensor:
    """`nets.MLP` of S stacked networks (weights (S, out, in), biases (S, out)) at inputs (S, n, in); the output in
    the parameters' dtype (also under bf16 autocast)."""
    hidden = torch.baddbmm(bias1.unsqueeze(1), x, weight1.transpose(1, 2)).relu_()
    return torch.baddbmm(bias2.unsqueeze(1), hidden, weight2.transpose(1, 2)).to(bias2.dtype)


def stack_trajectories(batches: Sequence[Trajectories]) -> Trajectories:
    """Trajectories of S seeds stacked along a new leading dimension (S, n, ...)."""

    def stacked(key: str) -> torch.Tensor | None:
        values = [getattr(batch, key) for batch in batches]
        return None if values[0] is None else torch.stack(values)

    slates, clicks = stacked("slates"), stacked("clicks")
    assert slates is not None and clicks is not None
    return Trajectories(slates, clicks, stacked("actions"), stacked("privileged"))


def _check_agents(agents: list[SACAgent]) -> None:
    if not agents:
        raise SlateRLError("a seed group needs at least one agent")
    first = agents[0]
    for agent in agents:
        if type(agent) is not SACAgent:
            raise SlateRLError(
                f"seed groups train SAC agents that act through a decoder (sac_topk_ideal, sac_topk_mf, sac_gems); "
                f"got {type(agent).__name__} ({agent.method!r}): train its seeds separately"
            )
        if agent.method != first.method:
            raise SlateRLError(
                f"the agents of a seed group must share one method; got {first.method!r} and {agent.method!r}"
            )
        if agent.config != first.config:
            raise SlateRLError(
                f"the agents of a seed group must share one config; got {first.config} and {agent.config}"
            )
    seeds = [agent.seed for agent in agents]
    if len(set(seeds)) != len(seeds):
        raise SlateRLError(f"the agents of a seed group must have distinct seeds (got {seeds})")


def _same_module(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """Whether two modules are of one type with equal tensors (two seeds' TopK decoders of one table)."""
    sa, sb = a.state_dict(), b.state_dict()
    return type(a) is type(b) and sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def _slice(value: Any, index: int) -> Any:
    """Seed `index`'s part of a stacked optimiser state entry (the shared step count is copied whole)."""
    return value.clone() if value.dim() == 0 else value[index].clone()


def _step(optimizer: torch.optim.Optimizer, params: list[torch.Tensor], grads: Sequence[torch.Tensor]) -> None:
    for param, grad in zip(params, grads, strict=True):
        param.grad = grad.contiguous()  # the fused Adam reads gradients as flat memory
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
