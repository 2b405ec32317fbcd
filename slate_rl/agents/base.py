"""What every agent offers the training loop, the evaluation and the registered inference model.

An agent is an `nn.Module` whose `state_dict()` holds everything needed to act (weights, decoder, action bounds);
`training_state_dict()` adds what continuing the training needs (optimisers, temperature, generators). Agent-side
randomness comes from two generators derived from the run's seed, never from the global RNG nor the simulator's:
`act_generator` (seeded with the seed: exploration, warm-up actions, Random's items) and `generator` (initialisation,
update noise, replay sampling). Two streams keep acting and learning independent, so episodes can be collected
in another thread while the updates run (`Trainer` with `Protocol.overlap_collection`).

An agent lives on one device (`device`, the simulator's: `build_agent` passes it): its weights, its buffers and
every tensor it returns. Its generators stay on the CPU, as the simulator's: random numbers are drawn there
(`draw`) and moved, so an agent takes the same random actions and initial weights on every device.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from slate_rl.agents.belief import BeliefEncoders
from slate_rl.agents.buffer import Trajectories
from slate_rl.envs.topicrec import TopicRec
from slate_rl.errors import SlateRLError

Observation = dict[str, torch.Tensor]
Diagnostics = dict[str, torch.Tensor]  # what an update reports: name -> 0-d tensor

RANDOM, EXPLORE, GREEDY = "random", "explore", "greedy"
MODES = (RANDOM, EXPLORE, GREEDY)
LEARNING_SEED_OFFSET = 1_000_003  # the learning generator's seed is seed + this


class Agent(nn.Module):
    """Base class. Subclasses set the class attributes and implement `act` (and `update` if they learn).

    Class attributes:
        method: the method id ('sac_gems', ...).
        learns: False for the Random and Short-term oracle baselines (test only).
        on_policy: True when each update trains on one freshly collected episode (REINFORCE) instead of a replay
            sample.
        updates_in_warmup: True when updates also run during the random warm-up episodes (REINFORCE).
    """

    method: str = ""
    learns: bool = True
    on_policy: bool = False
    updates_in_warmup: bool = False

    def __init__(self, num_items: int, slate_size: int, seed: int, device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.num_items, self.slate_size, self.seed = int(num_items), int(slate_size), int(seed)
        self.device = torch.device(device)
        self.act_generator = torch.Generator(device="cpu").manual_seed(int(seed))
        self.generator = torch.Generator(device="cpu").manual_seed((int(seed) + LEARNING_SEED_OFFSET) % 2**63)

    # ---------------------------------------------------------------- what the loop stores
    @property
    def stored_action_dim(self) -> int:
        """Size of the continuous action kept in the replay buffer (0: none, the slate is enough)."""
        return 0

    @property
    def privileged_dim(self) -> int:
        """Size of the privileged per-step vector kept in the replay buffer (0: none)."""
        return 0

    @property
    def batch_size(self) -> int:
        return 1

    @property
    def buffer_capacity(self) -> int:
        return 1

    def privileged_record(self, env: TopicRec) -> torch.Tensor | None:
        """Privileged simulator data to store after each step (SlateQ only)."""
        return None

    # ---------------------------------------------------------------- acting
    def start(self, num_users: int) -> None:
        """Begin a batch of `num_users` episodes (zero the belief states)."""

    def act(self, obs: Observation, mode: str, episode: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Slates (n, R) for the latest observations, and the continuous action to store (or None).

        mode: 'random' (warm-up), 'explore' (training) or 'greedy' (validation, test, inference);
        episode: index of the first episode of the batch (SlateQ's epsilon schedule).
        """
        raise NotImplementedError

    def recommend(self, slates: torch.Tensor, clicks: torch.Tensor, **privileged: torch.Tensor) -> torch.Tensor:
        """Deterministic next slates (B, R) after observation histories slates, clicks (B, T, R), T >= 1, each
        starting with the reset observation (the registered inference model)."""
        raise NotImplementedError

    # ---------------------------------------------------------------- learning
    def update(self, batch: Trajectories) -> Diagnostics:
        """One gradient step on a batch of trajectories; returns its diagnostics by name (0-d tensors, the same
        names at every update), which the training loop logs as 'train/<name>'."""
        raise NotImplementedError

    def training_state_dict(self) -> dict[str, Any]:
        """Weights plus everything needed to continue training exactly (optimisers, generators, counters)."""
        return {
            "weights": self.state_dict(),
            "generator": self.generator.get_state(),
            "act_generator": self.act_generator.get_state(),
        }

    def load_training_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `training_state_dict()` (its tensors on any device: they are copied to the agent's)."""
        self.load_state_dict(state["weights"])
        self.generator.set_state(state["generator"].cpu())
        self.act_generator.set_state(state["act_generator"].cpu())

    def acting_copy(self) -> Agent:
        """A copy that acts like this agent now (weights copied) for another thread, sharing `act_generator` and
        the simulator (SlateQ) but not the optimisers, the learning generator or the training buffers."""
        memo: dict[int, Any] = {id(self.act_generator): self.act_generator, id(self.generator): None}
        for value in self.__dict__.values():
            if isinstance(value, torch.optim.Optimizer):
                memo[id(value)] = None
            elif isinstance(value, TopicRec):
                memo[id(value)] = value
        for module in self.modules():
            if isinstance(module, BeliefEncoders):
                memo[id(module._workspaces)] = {}
        return copy.deepcopy(self, memo)


def draw(sample: Callable[..., torch.Tensor], *args: Any, device: torch.device, **kwargs: Any) -> torch.Tensor:
    """`sample(*args, **kwargs)` (e.g. torch.rand with a `generator=`) drawn on the CPU, moved to `device`."""
    return sample(*args, device="cpu", **kwargs).to(device)


def check_history(slates: torch.Tensor, clicks: torch.Tensor) -> None:
    """Raise unless slates and clicks are both (B, T >= 1, R)."""
    if slates.dim() != 3 or slates.shape != clicks.shape or slates.shape[1] < 1:
        raise SlateRLError(
            f"slates and clicks must both have shape (B, T >= 1, R), got {tuple(slates.shape)} and "
            f"{tuple(clicks.shape)}"
        )


class BeliefAgent(Agent):
    """An agent that acts from GRU belief states: `act` advances the encoders named by `acting_encoders` and calls
    `choose`; `recommend` encodes whole histories with the same encoders."""

    beliefs: BeliefEncoders
    acting_encoders: tuple[str, ...] = ()

    def start(self, num_users: int) -> None:
        self.beliefs.start(num_users, self.acting_encoders)

    @torch.no_grad()
    def act(self, obs: Observation, mode: str, episode: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
        if mode == RANDOM:
            return self.random_action(obs["slate"].shape[0])
        states = self.beliefs.step(obs["slate"], obs["clicks"], self.acting_encoders)
        return self.choose(states, mode, episode)

    @torch.no_grad()
    def recommend(self, slates: torch.Tensor, clicks: torch.Tensor, **privileged: torch.Tensor) -> torch.Tensor:
        check_history(slates, clicks)
        states = self.beliefs.encode(slates, clicks, self.acting_encoders)[:, :, -1]
        return self.choose(states, GREEDY, 0, **privileged)[0]

    def random_action(self, num_users: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Warm-up action (Q10): rankerless agents draw R items uniformly with replacement."""
        slates = draw(
            torch.randint,
            self.num_items,
            (num_users, self.slate_size),
            generator=self.act_generator,
            device=self.device,
        )
        return slates, None

    def choose(
        self, states: torch.Tensor, mode: str, episode: int, **privileged: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Slates (and stored actions) from belief states (G, n, H) of `acting_encoders`."""
        raise NotImplementedError
