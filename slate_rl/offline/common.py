"""What the offline algorithms share: their hyper-parameters, the batch they learn from, and the agent they build on.

An offline agent acts like the online ones: GRU belief encoders (`slate_rl.agents.belief`) turn the observation
history into a belief state, an actor maps it to a point of the ranker's action box, and the frozen ranker decodes
that point into a slate. Actions are learned in normalised form, a in [-1, 1]^A, and played as
centre + scale * a (the ranker's box). The belief that chooses a_t has seen observations 0..t only: a batch holds
whole episodes, o_0 .. o_T, and the label of a_t is read from the slate of o_{t+1}.

Each algorithm owns named belief streams: `actor` (every algorithm) and `critic` (those with value functions); the
streams are trained end to end through their own losses. An update is written as losses and differentiated by
autograd: a critic phase (the critic losses reach the critic stream and the value heads) followed by an actor
phase; each stream is encoded once per update (the critic step leaves the actor stream as it was, so the actor loss
reuses the states the targets were computed from). Next states are the online encoders' states at t + 1, detached
(as in the online agents); only the heads have target copies.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from slate_rl.agents.base import BeliefAgent, Diagnostics, draw
from slate_rl.agents.belief import BeliefEncoders
from slate_rl.agents.config import BeliefConfig
from slate_rl.agents.nets import MLP, adam
from slate_rl.envs.topicrec import TopicRec
from slate_rl.errors import SlateRLError
from slate_rl.methods import Need
from slate_rl.offline.actions import ranker_decoder
from slate_rl.rankers.base import SlateDecoder


@dataclass(frozen=True)
class OfflineConfig:
    """Hyper-parameters every offline algorithm has.

    gamma: discount (the online benchmark's 0.8). lr: Adam learning rate of every network. hidden: units of the one
    hidden layer of every head. batch_episodes: whole episodes per gradient step (B; a step sees B x T transitions).
    grad_clip: maximum gradient norm of each optimiser's parameters. reward_scale: training rewards are clicks x
    reward_scale (evaluation returns are always clicks). tau: Polyak rate of the target heads.
    """

    gamma: float = 0.8
    lr: float = 3e-4
    hidden: int = 256
    batch_episodes: int = 16
    grad_clip: float = 10.0
    reward_scale: float = 1.0
    tau: float = 0.005
    belief: BeliefConfig = dataclasses.field(default_factory=BeliefConfig)

    def validate(self) -> None:
        """Raise SlateRLError naming the first value out of range."""
        if not 0.0 <= float(self.gamma) < 1.0:
            raise SlateRLError(f"gamma must lie in [0, 1) (got {self.gamma})")
        for name in ("lr", "grad_clip", "reward_scale"):
            if not float(getattr(self, name)) > 0:
                raise SlateRLError(f"{name} must be > 0 (got {getattr(self, name)})")
        if not 0.0 < float(self.tau) <= 1.0:
            raise SlateRLError(f"tau must lie in (0, 1] (got {self.tau})")
        for name in ("hidden", "batch_episodes"):
            if int(getattr(self, name)) < 1:
                raise SlateRLError(f"{name} must be >= 1 (got {getattr(self, name)})")

    def return_bound(self, slate_size: int) -> float:
        """r_max / (1 - gamma): no discounted return can exceed it (r_max = every slot clicked)."""
        return float(slate_size) * float(self.reward_scale) / (1.0 - float(self.gamma))


@dataclass
class OfflineBatch:
    """B whole episodes: slates and clicks of o_0..o_T (B, T+1, R), normalised action labels a_0..a_{T-1}
    (B, T, A) and training rewards (B, T) (clicks on o_{t+1} x reward_scale)."""

    slates: torch.Tensor
    clicks: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor

    @property
    def not_done(self) -> torch.Tensor:
        """(B, T): 1, and 0 at the last step (the horizon ends the episode: nothing is bootstrapped past it)."""
        mask = torch.ones_like(self.rewards)
        mask[:, -1] = 0.0
        return mask


class TwinCritic(nn.Module):
    """Two critics Q_k(state, action) (one hidden layer each); `forward` returns (..., 2).

    The first layer W [s; a] + b is computed as (W_s s + b) + W_a a: states (..., H) broadcast against actions
    (J, ..., A), so that J actions per state (CQL's sampled actions) share one state projection, and no gradient
    is formed for an input that does not need one.
    """

    def __init__(
        self,
        state_dim: int,
        action_dim: int,
        hidden: int,
        generator: torch.Generator,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__()
        self.q1 = MLP(state_dim + action_dim, hidden, 1, generator, device)
        self.q2 = MLP(state_dim + action_dim, hidden, 1, generator, device)

    def forward(self, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.head(self.q1, states, actions), self.head(self.q2, states, actions)], -1)

    @staticmethod
    def head(q: MLP, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Q(states, actions) (..., 1) of one critic: the J actions per state as a batch of J products, each added
        to the shared state part in the same pass."""
        state_dim = states.shape[-1]
        projected = torch.addmm(q.bias1, states.reshape(-1, state_dim), q.weight1[:, :state_dim].t())
        per_state = actions.reshape(-1, *projected.shape[:1], actions.shape[-1])  # (J, states, A)
        count = per_state.shape[0]
        action_part = q.weight1[:, state_dim:].t().expand(count, -1, -1)
        hidden = torch.baddbmm(projected.expand(count, -1, -1), per_state, action_part).relu_()
        values = torch.matmul(hidden, q.weight2.t()).add_(q.bias2)
        return values.view(*actions.shape[:-1], 1)


def target_copy(module: nn.Module) -> nn.Module:
    """A frozen copy of `module` (a target network)."""
    return copy.deepcopy(module).requires_grad_(False)


@torch.no_grad()
def polyak(target: nn.Module, online: nn.Module, tau: float) -> None:
    """target <- (1 - tau) target + tau online."""
    torch._foreach_lerp_(list(target.parameters()), list(online.parameters()), tau)


@contextlib.contextmanager
def frozen(*modules: nn.Module) -> Iterator[None]:
    """No gradient reaches the parameters of `modules` inside the block (e.g. the critic in the actor loss)."""
    for module in modules:
        module.requires_grad_(False)
    try:
        yield
    finally:
        for module in modules:
            module.requires_grad_(True)


def step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, clip: float) -> torch.Tensor:
    """Back-propagate `loss`, clip the gradient norm of the optimiser's parameters, step; returns the norm."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    norm = nn.utils.clip_grad_norm_(params, clip, foreach=True)
    optimizer.step()
    return norm.detach()


class OfflineAgent(BeliefAgent):
    """Belief streams, a deterministic tanh actor in the normalised action box, and the frozen ranker.

    Subclasses set `streams` and implement `update`; those with critics also `q_values` (for the diagnostics).

    Args:
        decoder: the ranker (GeMS or TopK), frozen and saved with the agent.
        method: the algorithm's id ('bc', 'td3_bc', ...).
        device: where the agent (and its copy of the decoder) lives.
    """

    streams: tuple[str, ...] = ("actor",)
    acting_encoders = ("actor",)
    action_center: torch.Tensor
    action_scale: torch.Tensor

    def __init__(
        self,
        decoder: SlateDecoder,
        num_items: int,
        slate_size: int,
        config: OfflineConfig,
        seed: int,
        method: str,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__(num_items, slate_size, seed, device)
        config.validate()
        self.config, self.method = config, method
        self.action_dim = decoder.action_dim
        self.register_buffer("action_center", decoder.action_center.detach().to(self.device, torch.float32, copy=True))
        self.register_buffer("action_scale", decoder.action_scale.detach().to(self.device, torch.float32, copy=True))
        self.decoder = decoder.to(self.device).eval().requires_grad_(False)
        belief = config.belief
        self.beliefs = BeliefEncoders(
            self.streams, num_items, slate_size, self.generator, belief.item_dim, belief.hidden_dim, self.device
        )
        self.actor = MLP(belief.hidden_dim, config.hidden, self.action_dim, self.generator, self.device)
        self.actor_optimizer = adam([*self.actor.parameters(), *self.stream_parameters("actor")], config.lr)
        self.updates = 0

    def stream_parameters(self, name: str) -> list[nn.Parameter]:
        return list(self.beliefs.encoder(name).parameters())

    # ---------------------------------------------------------------- acting
    @property
    def stored_action_dim(self) -> int:
        return self.action_dim

    def policy(self, states: torch.Tensor) -> torch.Tensor:
        """Normalised actions tanh(actor(state)) in [-1, 1]^A for states (..., H)."""
        return torch.tanh(self.actor(states.flatten(0, -2))).view(*states.shape[:-1], self.action_dim)

    def to_box(self, normalised: torch.Tensor) -> torch.Tensor:
        """centre + scale * a: the ranker's action."""
        return self.action_center + self.action_scale * normalised

    def choose(
        self, states: torch.Tensor, mode: str, episode: int, **privileged: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        actions = self.to_box(self.policy(states[0]))
        return self.decoder.decode(actions), actions

    # ---------------------------------------------------------------- learning
    def encode(self, batch: OfflineBatch, names: tuple[str, ...], last: bool = True) -> dict[str, torch.Tensor]:
        """Belief states of the named streams, (B, T+1, H) over o_0..o_T (or (B, T, H) over o_0..o_{T-1} with
        `last=False`): entry t encodes o_0..o_t. On the CPU the encoders run as fused kernels with a hand-written
        backward pass (the same equations; `BeliefEncoders.encode_fused`), whose output lives in a reused buffer:
        consume it (back-propagate) before the next encode of the same shape, or clone it."""
        stop = None if last else -1
        encode = self.beliefs.encode_fused if self.device.type == "cpu" else self.beliefs.encode
        encoded = encode(batch.slates[:, :stop], batch.clicks[:, :stop], names)
        return dict(zip(names, encoded.unbind(0), strict=True))

    def update(self, batch: OfflineBatch) -> Diagnostics:  # type: ignore[override]
        raise NotImplementedError

    def q_values(self, critic_states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor | None:
        """min over the critics of Q(state, normalised action), (...,); None for an algorithm without critics."""
        return None

    @torch.no_grad()
    def diagnose(self, batch: OfflineBatch, cloud: torch.Tensor, generator: torch.Generator) -> dict[str, float]:
        """Where the policy stands on `batch` (no learning): distance of its normalised actions to the labels of
        the same states and to the nearest point of `cloud` (a sample of dataset labels, (M, A)); with critics, the
        mean Q of the dataset's actions, of the policy's and of uniform random actions (drawn from `generator`),
        and the largest Q."""
        states = self.encode(batch, self.streams)
        policy = self.policy(states["actor"][:, :-1])
        flat = policy.reshape(-1, self.action_dim)
        nearest = torch.cdist(flat, cloud).min(dim=1).values
        out = {
            "policy_to_label": float((policy - batch.actions).norm(dim=-1).mean()),
            "policy_to_data_cloud": float(nearest.mean()),
        }
        if "critic" in states:
            critic = states["critic"][:, :-1]
            q_data = self.q_values(critic, batch.actions)
            q_policy = self.q_values(critic, policy)
            uniform = draw(torch.rand, batch.actions.shape, generator=generator, device=self.device) * 2 - 1
            q_random = self.q_values(critic, uniform)
            if q_data is not None and q_policy is not None and q_random is not None:
                out.update(
                    q_data=float(q_data.mean()),
                    q_policy=float(q_policy.mean()),
                    q_random=float(q_random.mean()),
                    q_max=float(torch.stack([q_data, q_policy, q_random]).max()),
                )
        return out

    # ---------------------------------------------------------------- resume
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"actor_optimizer": self.actor_optimizer}

    def training_state_dict(self) -> dict[str, Any]:
        return {
            **super().training_state_dict(),
            "updates": self.updates,
            **{name: opt.state_dict() for name, opt in self.optimizers().items()},
        }

    def load_training_state_dict(self, state: dict[str, Any]) -> None:
        super().load_training_state_dict(state)
        self.updates = int(state["updates"])
        for name, opt in self.optimizers().items():
            opt.load_state_dict(state[name])


def td_target(rewards: torch.Tensor, not_done: torch.Tensor, next_values: torch.Tensor, gamma: float) -> torch.Tensor:
    """r + gamma (1 - d) V(next): the one-step bootstrapped target."""
    return rewards + gamma * not_done * next_values


def q_statistics(q: torch.Tensor, target: torch.Tensor, bound: float) -> Diagnostics:
    """Mean and largest Q of the dataset's actions, and the share of TD targets beyond the return bound."""
    return {"q_mean": q.mean(), "q_max": q.max(), "target_beyond_bound": (target.abs() > bound).float().mean()}


def builder(agent_class: type[OfflineAgent], method: str) -> Callable[..., OfflineAgent]:
    """The registry's builder of an algorithm: the agent acts through the GeMS decoder given as input, else through
    TopK over the environment's item table."""

    def build(env: TopicRec, seed: int, config: OfflineConfig, inputs: Mapping[Need, Any]) -> OfflineAgent:
        decoder = ranker_decoder(env, inputs)
        return agent_class(decoder, env.num_items, env.slate_size, config, seed, method, env.device)

    return build
