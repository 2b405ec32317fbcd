"""Train, validate and test S seeds of one SAC method together: `Trainer`'s protocol run by a `SeedGroup`.

Every seed follows the run it would have alone (up to float rounding): its own replay buffer, filled through
`play_group` with the users it would meet alone; one stacked update per step where `Trainer` updates; validations
played as one batch for all seeds (each seed meets the validation users it would meet alone); per-seed metrics,
best weights, periodic checkpoints and test. Differences from `Trainer`:

- `overlap_collection` collects the next block before the block's updates, in the training thread, with the
  weights as they were before those updates: the episodes of the threaded collection, without its overlap.
- A seed whose update diagnostics become non-finite leaves the group at the end of that block (`on_diverged`);
  the others go on with a group rebuilt from their agents (the stacked state copied back and re-stacked, exactly).
- The periodic state of seed s (`seed_state`) is the state a `Trainer` of that seed alone would save, so a
  seed's run can be continued alone with `Trainer.load_state_dict`, or the seeds together with `load_seed_states`.

    trainer = GroupTrainer([build_agent("sac_topk_ideal", env, seed) for seed in seeds], env, protocol, hooks)
    trainer.fit()
    returns = trainer.test(seed)       # per seed, with its best-validation weights
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from slate_rl.agents.base import EXPLORE, GREEDY, RANDOM
from slate_rl.agents.buffer import Trajectories, TrajectoryBuffer
from slate_rl.agents.rollout import evaluate_policy
from slate_rl.agents.sac import SACAgent
from slate_rl.agents.seed_group import SeedGroup, play_group, stack_trajectories
from slate_rl.agents.training import Hooks, _Meter, _to_device, block_size, check_state
from slate_rl.envs.topicrec import TopicRec
from slate_rl.errors import SlateRLError
from slate_rl.protocol import Protocol


@dataclass
class SeedRecord:
    """What the loop keeps of one seed (the per-seed fields of `Trainer`)."""

    agent: SACAgent
    buffer: TrajectoryBuffer
    hooks: Hooks
    episode: int = 0
    best_return: float = -math.inf
    best_episode: int | None = None
    best_weights: dict[str, Any] | None = None
    validations: list[tuple[int, float]] = field(default_factory=list)


class GroupTrainer:
    """Train S agents of one SAC method (distinct seeds) on one simulator as one group.

    Args:
        agents: built by `build_agent` for `env`, one per seed (see `SeedGroup` for what may be grouped).
        env: the simulator; its stream drives every seed's users as it would drive one seed's.
        protocol: the protocol's counts (default: the paper's).
        hooks: one `Hooks` per seed, in the order of `agents`.
        on_diverged: called with (seed, message) when a seed leaves the group on non-finite diagnostics.
    """

    def __init__(
        self,
        agents: Sequence[SACAgent],
        env: TopicRec,
        protocol: Protocol | None = None,
        hooks: Sequence[Hooks] | None = None,
        on_diverged: Callable[[int, str], None] | None = None,
    ) -> None:
        protocol = protocol or Protocol()
        protocol.validate()
        agents = list(agents)
        if agents and agents[0].config.fused_update:
            raise SlateRLError(
                "a seed group runs the plain SAC update stacked over its seeds, not fused_update; drop "
                "fused_update=true or train the seeds one by one"
            )
        hooks = list(hooks) if hooks is not None else [Hooks() for _ in agents]
        if len(hooks) != len(agents):
            raise SlateRLError(f"one Hooks per seed: got {len(hooks)} for {len(agents)} agents")
        self.group = SeedGroup(agents)
        for agent in agents:
            if agent.device != env.device:
                raise SlateRLError(
                    f"the agent of seed {agent.seed} is on {agent.device} but the simulator on {env.device}; "
                    "build the agents for this simulator"
                )
        self.env, self.protocol, self.on_diverged = env, protocol, on_diverged
        self.records = {
            agent.seed: SeedRecord(agent, self._buffer(agent), hook) for agent, hook in zip(agents, hooks, strict=True)
        }
        self.diverged: dict[int, str] = {}  # seed -> why it left the group
        self.episode = 0
        self._pending: Trajectories | None = None  # (S, n, ...) the next block, collected ahead (overlap_collection)
        self._meter = _Meter()

    def _buffer(self, agent: SACAgent) -> TrajectoryBuffer:
        return TrajectoryBuffer.for_agent(agent, self.env, agent.buffer_capacity)

    @property
    def seeds(self) -> list[int]:
        """The seeds still training, in the group's order."""
        return [agent.seed for agent in self.group.agents]

    @property
    def done(self) -> bool:
        return self.episode >= self.protocol.episodes or not self.records_training

    @property
    def records_training(self) -> list[SeedRecord]:
        return [self.records[seed] for seed in self.seeds]

    # ---------------------------------------------------------------- training
    def fit(self, max_episodes: int | None = None) -> None:
        """Train until the protocol's last episode (or `max_episodes` more), or until every seed has left."""
        stop = (
            self.protocol.episodes if max_episodes is None else min(self.protocol.episodes, self.episode + max_episodes)
        )
        while not self.done and self.episode < stop:
            self._block()
        self.group.write_back()

    def _collect(self, start: int) -> Trajectories:
        mode = RANDOM if start < self.protocol.warmup_episodes else EXPLORE
        return play_group(self.env, self.group, block_size(self.protocol, start), mode)

    def _block(self) -> None:
        p, start = self.protocol, self.episode
        buffers = [record.buffer for record in self.records_training]
        prefetched = self.group.sample(buffers) if p.reference_protocol and start >= p.warmup_episodes else None
        if self._pending is None:
            tic = time.perf_counter()
            self._pending = self._collect(start)
            self._meter.seconds["collect"] += time.perf_counter() - tic
        episodes, self._pending = self._pending, None
        size = episodes.slates.shape[1]
        end = start + size
        for index, buffer in enumerate(buffers):
            buffer.add(_seed_of(episodes, index))
        if p.overlap_collection and end < p.episodes and end % p.val_every != 0:
            tic = time.perf_counter()
            self._pending = self._collect(end)  # with the weights before this block's updates (see the module)
            self._meter.seconds["collect"] += time.perf_counter() - tic
        tic = time.perf_counter()
        for i in range(size):
            if start + i < p.warmup_episodes:
                continue
            batch = prefetched if p.reference_protocol else self.group.sample(buffers)
            if batch is not None:
                self._meter.add(self.group.update(batch))
        self._meter.seconds["update"] += time.perf_counter() - tic
        self._meter.episodes += size
        self.episode = end
        for record in self.records_training:
            record.episode = end
        self._drop_diverged()
        if not self.records_training:
            return
        if end % p.val_every == 0:
            self._validate()
        if end // p.save_every > start // p.save_every:
            self.group.write_back()
            for index, record in enumerate(self.records_training):
                if record.hooks.on_checkpoint is not None:
                    record.hooks.on_checkpoint("periodic", end, self.seed_state(record.agent.seed, index))
        for record in self.records_training:
            if record.hooks.on_progress is not None:
                record.hooks.on_progress(end, p.episodes)

    def _drop_diverged(self) -> None:
        """Take the seeds whose diagnostics since the last validation hold a non-finite value out of the group."""
        sums = self._meter.sums
        if sums is None:
            return
        finite = torch.isfinite(sums).all(0).tolist()
        if all(finite):
            return
        self.group.write_back()
        keep = [index for index, ok in enumerate(finite) if ok]
        for index, ok in enumerate(finite):
            if ok:
                continue
            seed = self.group.agents[index].seed
            values = zip(self._meter.names, sums[:, index].tolist(), strict=True)
            broken = [name for name, value in values if not math.isfinite(value)]
            self.diverged[seed] = (
                f"training diverged by episode {self.episode}: train/{', train/'.join(broken)} became non-finite; "
                "lower the learning rates or gamma"
            )
            if self.on_diverged is not None:
                self.on_diverged(seed, self.diverged[seed])
        self._meter.sums = sums[:, keep]
        if self._pending is not None:
            self._pending = _select(self._pending, keep)
        if keep:
            self.group = SeedGroup([self.group.agents[index] for index in keep])

    def _validate(self) -> None:
        tic = time.perf_counter()
        played = play_group(self.env, self.group, self.protocol.val_episodes, GREEDY)
        returns = played.clicks[:, :, 1:].sum(-1, dtype=torch.float32).sum(2)  # (S, n) as `Trajectories.returns`
        self._meter.seconds["validate"] += time.perf_counter() - tic
        means = returns.mean(1).tolist()
        improved = []
        for index, record in enumerate(self.records_training):
            record.validations.append((self.episode, means[index]))
            if record.hooks.on_metrics is not None:
                record.hooks.on_metrics(self.episode, self._meter.emit(index))
            if record.hooks.on_validation is not None:
                record.hooks.on_validation(self.episode, returns[index])
            if means[index] > record.best_return:
                improved.append(record)
        self._meter = _Meter()
        if improved:
            self.group.write_back()
        for record in improved:
            record.best_return, record.best_episode = record.validations[-1][1], self.episode
            record.best_weights = copy.deepcopy(record.agent.state_dict())
            if record.hooks.on_checkpoint is not None:
                record.hooks.on_checkpoint("best", self.episode, record.best_weights)

    # ---------------------------------------------------------------- test
    def test(self, seed: int, use_best: bool = True) -> torch.Tensor:
        """`Trainer.test` of one seed: its best-validation weights (if any and `use_best`), the re-seeded test."""
        record = self.records[seed]
        if use_best and record.best_weights is not None:
            record.agent.load_state_dict(record.best_weights)
        return evaluate_policy(self.env, record.agent, self.protocol.test_episodes, reseed=True)

    # ---------------------------------------------------------------- checkpoints
    def seed_state(self, seed: int, index: int) -> dict[str, Any]:
        """The state `Trainer.state_dict` of seed `seed` (at `index` in the group) alone would hold now (after
        `write_back`): loadable by a `Trainer` of that seed, which continues as the seed would alone."""
        record = self.records[seed]
        pending = None if self._pending is None else dataclasses.asdict(_seed_of(self._pending, index))
        state = {
            "episode": self.episode,
            "protocol": dataclasses.asdict(self.protocol),
            "method": record.agent.method,
            "agent": record.agent.training_state_dict(),
            "buffer": record.buffer.state_dict(),
            "pending": pending,
            "env": self.env.state_dict(),
            "best_return": record.best_return,
            "best_episode": record.best_episode,
            "best_weights": record.best_weights,
            "validations": [list(item) for item in record.validations],
            "meter": self._meter.state_dict(index),
        }
        return copy.deepcopy(state)

    def load_seed_states(self, states: Sequence[dict[str, Any]]) -> None:
        """Continue from one `seed_state` (or `Trainer.state_dict`) per seed, in the group's order: states of one
        episode, as the group saves them together. The simulator's state is the first one's: at one episode every
        seed's stream stands at the same point (each seed meets the users it would meet alone)."""
        records = self.records_training
        if len(states) != len(records):
            raise SlateRLError(f"one state per seed: got {len(states)} for {len(records)} seeds")
        episodes = sorted({int(state["episode"]) for state in states})
        if len(episodes) > 1:
            raise SlateRLError(
                f"the seeds' states are of episodes {episodes}; a group continues from states of one episode"
            )
        for state, record in zip(states, records, strict=True):
            check_state(state, record.agent.method, self.protocol)
            state = copy.deepcopy(state)
            record.agent.load_training_state_dict(state["agent"])
            record.buffer.load_state_dict(state["buffer"])
            record.episode = episodes[0]
            record.best_return, record.best_episode = state["best_return"], state["best_episode"]
            record.best_weights = state["best_weights"]
            record.validations = [(int(e), float(v)) for e, v in state["validations"]]
        self.group = SeedGroup([record.agent for record in records])  # the loaded weights and optimiser states
        self.env.load_state_dict(copy.deepcopy(states[0]["env"]))
        self.episode = episodes[0]
        pending = [state["pending"] for state in states]
        self._pending = (
            None
            if pending[0] is None
            else stack_trajectories([Trajectories(**_to_device(p, self.env.device)) for p in pending])
        )
        self._meter = _Meter()
        self._meter.load_state_dict(states[0]["meter"])
        if self._meter.sums is not None:  # (names, S): each seed's sums in its column
            self._meter.sums = torch.stack([torch.stack(tuple(s["meter"]["sums"].values())) for s in states], 1)


def _seed_of(episodes: Trajectories, index: int) -> Trajectories:
    """Seed `index`'s episodes of stacked trajectories (S, n, ...)."""
    return Trajectories(
        episodes.slates[index],
        episodes.clicks[index],
        None if episodes.actions is None else episodes.actions[index],
        None if episodes.privileged is None else episodes.privileged[index],
    )


def _select(episodes: Trajectories, keep: list[int]) -> Trajectories:
    """The stacked trajectories of the seeds at `keep`."""
    index = torch.tensor(keep, device=episodes.slates.device)
    return Trajectories(
        episodes.slates[index],
        episodes.clicks[index],
        None if episodes.actions is None else episodes.actions[index],
        None if episodes.privileged is None else episodes.privileged[index],
    )
