"""The paper's online protocol (`slate_rl.protocol.Protocol`) as a pure, resumable loop; no files, no MLflow.

One training step is one collected episode. Episodes are collected in blocks of K users played together
(`Protocol.parallel_episodes`), each block followed by one gradient step per episode of the block; each step's replay
batch is drawn once the block is stored. With `Protocol.reference_protocol` (K = 1, no overlap) the batch is drawn
before the episode is played, as in the reference: it never holds that episode, and REINFORCE trains on the previous
one. Blocks never straddle the end of the warm-up or a validation point, so the schedule of the
simulator's user stream (training blocks, then the validation users as one batch, ...) depends only on the
protocol, never on the agent: every method and seed meets the same training, validation and test users (common
random numbers). With `Protocol.overlap_collection` the next block is collected in a second thread during the
updates of the current one (same stream schedule, policy one block older). The test re-seeds the stream and plays the
best-validation weights on the test users as one batch.

The stage drives the loop through `Hooks` and saves what it is handed; `Trainer.state_dict()` is a complete,
detached snapshot (agent, optimisers, buffer, generators, simulator stream, counters, best weights, history, the
block collected ahead) from which `load_state_dict` continues bit for bit with one intra-op thread
(`slate_rl.agents.runtime.configure_cpu`, which the CLI calls). With several intra-op threads and overlap_collection,
the two loop threads compete for the thread pool and a kernel's rounding can depend on how many threads it got, so
runs are then reproducible only up to float rounding.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from slate_rl.agents.base import EXPLORE, RANDOM, Agent, Diagnostics
from slate_rl.agents.buffer import Trajectories, TrajectoryBuffer
from slate_rl.agents.rollout import StepHook, evaluate_policy, play
from slate_rl.envs.topicrec import TopicRec
from slate_rl.errors import SlateRLError
from slate_rl.protocol import Protocol


@dataclass
class Hooks:
    """Callbacks of the loop (all optional).

    on_metrics(episode, values): training metrics aggregated since the previous call (means of the update
        diagnostics as 'train/<name>', counts and timings as 'time/<name>'), once per validation.
    on_validation(episode, returns): the validation returns (val_episodes,), after every validation.
    on_checkpoint(kind, episode, state): kind 'best' (state = agent weights, on a strict improvement of the mean
        validation return) or 'periodic' (state = `Trainer.state_dict()`, every `save_every` episodes).
    on_progress(episode, total): after every block of collected episodes.
    """

    on_metrics: Callable[[int, dict[str, float]], None] | None = None
    on_validation: Callable[[int, torch.Tensor], None] | None = None
    on_checkpoint: Callable[[str, int, dict[str, Any]], None] | None = None
    on_progress: Callable[[int, int], None] | None = None


@dataclass
class _Meter:
    """Sums of the update diagnostics (by name) and the time spent per phase since the last emission.

    Each update's values are stacked into one tensor and added to the running sums, so an emission costs one
    host sync whatever the number of metrics.
    """

    names: tuple[str, ...] = ()
    sums: torch.Tensor | None = None
    updates: int = 0
    episodes: int = 0
    since: float = field(default_factory=time.perf_counter)
    seconds: dict[str, float] = field(default_factory=lambda: {"collect": 0.0, "update": 0.0, "validate": 0.0})

    def add(self, values: Diagnostics) -> None:
        stacked = torch.stack(tuple(values.values()))
        if self.sums is None:
            self.names, self.sums = tuple(values), stacked
        elif tuple(values) != self.names:
            raise SlateRLError(
                f"an update reported the diagnostics {tuple(values)}, earlier ones {self.names}; "
                "an agent must report the same names at every update"
            )
        else:
            self.sums += stacked
        self.updates += 1

    def emit(self, column: int | None = None) -> dict[str, float]:
        """The metrics since the last emission; `column`: that seed's, of a group's (names, S) sums."""
        out: dict[str, float] = {}
        if self.sums is not None:
            sums = self.sums if column is None else self.sums[:, column]
            means = (sums / self.updates).tolist()
            out.update({f"train/{name}": value for name, value in zip(self.names, means, strict=True)})
        elapsed = time.perf_counter() - self.since
        out.update(
            {
                "time/updates": float(self.updates),
                "time/episodes": float(self.episodes),
                "time/episodes_per_s": self.episodes / elapsed if elapsed > 0 else 0.0,
                "time/elapsed_s": elapsed,
            }
        )
        out.update({f"time/{phase}_s": value for phase, value in self.seconds.items()})
        return out

    def state_dict(self, column: int | None = None) -> dict[str, Any]:
        values = self.sums if self.sums is None or column is None else self.sums[:, column]
        sums = {} if values is None else dict(zip(self.names, values.clone().unbind(), strict=True))
        return {"sums": sums, "updates": self.updates, "episodes": self.episodes}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        sums = state["sums"]
        self.names = tuple(sums)
        self.sums = torch.stack(tuple(sums.values())) if sums else None
        self.updates, self.episodes = state["updates"], state["episodes"]


class _Collector(threading.Thread):
    """Collects one block in the background with a frozen copy of the agent."""

    def __init__(self, collect: Callable[[int, Agent], Trajectories], start: int, actor: Agent) -> None:
        super().__init__(daemon=True)
        self.collect, self.first, self.actor = collect, start, actor
        self.result: Trajectories | None = None
        self.error: BaseException | None = None
        self.seconds = 0.0

    def run(self) -> None:
        tic = time.perf_counter()
        try:
            self.result = self.collect(self.first, self.actor)
        except BaseException as exc:  # re-raised in the training thread
            self.error = exc
        self.seconds = time.perf_counter() - tic

    def outcome(self) -> Trajectories:
        self.join()
        if self.error is not None:
            raise self.error
        if self.result is None:
            raise SlateRLError("the background collection ended without a block of episodes")
        return self.result


class Trainer:
    """Train, validate and test one agent on one simulator.

    Args:
        agent: built by `slate_rl.agents.build_agent`, on the simulator's device (the replay buffer goes there too).
        env: the simulator; its generator drives every user (training, validation, test).
        protocol: the protocol's counts (default: the paper's).
        hooks: callbacks for the stage (metrics, validation, checkpoints, progress).
    """

    def __init__(
        self, agent: Agent, env: TopicRec, protocol: Protocol | None = None, hooks: Hooks | None = None
    ) -> None:
        protocol = protocol or Protocol()
        protocol.validate()
        if agent.device != env.device:
            raise SlateRLError(
                f"the agent is on {agent.device} but the simulator on {env.device}; build the agent for this "
                "simulator (build_agent puts it on the simulator's device)"
            )
        self.agent, self.env, self.protocol = agent, env, protocol
        self.hooks = hooks or Hooks()
        capacity = protocol.parallel_episodes if agent.on_policy else agent.buffer_capacity
        self.buffer = TrajectoryBuffer.for_agent(agent, env, capacity) if agent.learns else None
        self.episode = 0
        self.best_return = -math.inf
        self.best_episode: int | None = None
        self.best_weights: dict[str, Any] | None = None
        self.validations: list[tuple[int, float]] = []
        self._pending: Trajectories | None = None  # the next block, collected ahead (overlap_collection)
        self._meter = _Meter()

    # ---------------------------------------------------------------- training
    @property
    def done(self) -> bool:
        return not self.agent.learns or self.episode >= self.protocol.episodes

    def fit(self, max_episodes: int | None = None) -> None:
        """Train until the protocol's last episode (or until `max_episodes` more have been trained on)."""
        stop = (
            self.protocol.episodes
            if max_episodes is None
            else min(self.protocol.episodes, self.episode + int(max_episodes))
        )
        while not self.done and self.episode < stop:
            self._block()

    def block_size(self, start: int) -> int:
        """Episodes in the block starting at episode `start` (K, cut at the warm-up end and validation points)."""
        return block_size(self.protocol, start)

    def _collect(self, start: int, actor: Agent) -> Trajectories:
        mode = RANDOM if start < self.protocol.warmup_episodes else EXPLORE
        return play(self.env, actor, self.block_size(start), mode, start)

    def _updates_at(self, episode: int) -> bool:
        """Whether training episode `episode` is followed by an update (not in the warm-up, except REINFORCE's)."""
        return episode >= self.protocol.warmup_episodes or self.agent.updates_in_warmup

    def _replay(self, buffer: TrajectoryBuffer, slots: torch.Tensor | None) -> Trajectories | None:
        """An update's batch: a replay sample; for an on-policy agent the episodes at `slots` (None: the latest stored
        one, or None while the buffer is empty)."""
        if not self.agent.on_policy:
            return buffer.sample(self.agent.batch_size, self.agent.generator)
        if slots is None:
            return buffer.get(buffer.latest(1)) if len(buffer) else None
        return buffer.get(slots)

    def _block(self) -> None:
        p, agent, start = self.protocol, self.agent, self.episode
        buffer = self.buffer
        if buffer is None:
            raise SlateRLError(f"method {agent.method!r} does not learn: it has no training loop")
        # the reference draws the batch before playing the episode (K = 1): from the buffer as it was before it
        prefetched = self._replay(buffer, None) if p.reference_protocol and self._updates_at(start) else None
        if self._pending is None:
            tic = time.perf_counter()
            self._pending = self._collect(start, agent)
            self._meter.seconds["collect"] += time.perf_counter() - tic
        episodes, self._pending = self._pending, None
        size = episodes.slates.shape[0]
        end = start + size
        slots = buffer.add(episodes)
        collector = None
        if p.overlap_collection and end < p.episodes and end % p.val_every != 0:
            collector = _Collector(self._collect, end, agent.acting_copy())
            collector.start()
        tic = time.perf_counter()
        try:
            for i in range(size):
                if not self._updates_at(start + i):
                    continue
                batch = prefetched if p.reference_protocol else self._replay(buffer, slots[i : i + 1])
                if batch is not None:
                    self._meter.add(agent.update(batch))
        except BaseException:
            if collector is not None:  # a thread still in torch when the interpreter exits aborts the process
                collector.join()
            raise
        self._meter.seconds["update"] += time.perf_counter() - tic
        if collector is not None:
            self._pending = collector.outcome()
            self._meter.seconds["collect"] += collector.seconds
        self._meter.episodes += size
        self.episode = end
        if end % p.val_every == 0:
            self._validate()
        if self.hooks.on_checkpoint is not None and end // p.save_every > start // p.save_every:
            self.hooks.on_checkpoint("periodic", end, self.state_dict())
        if self.hooks.on_progress is not None:
            self.hooks.on_progress(end, p.episodes)

    def _validate(self) -> None:
        tic = time.perf_counter()
        returns = evaluate_policy(self.env, self.agent, self.protocol.val_episodes, reseed=False)
        self._meter.seconds["validate"] += time.perf_counter() - tic
        mean = float(returns.mean())
        self.validations.append((self.episode, mean))
        if self.hooks.on_metrics is not None:
            self.hooks.on_metrics(self.episode, self._meter.emit())
        self._meter = _Meter()
        if self.hooks.on_validation is not None:
            self.hooks.on_validation(self.episode, returns)
        if mean > self.best_return:
            self.best_return, self.best_episode = mean, self.episode
            self.best_weights = copy.deepcopy(self.agent.state_dict())
            if self.hooks.on_checkpoint is not None:
                self.hooks.on_checkpoint("best", self.episode, self.best_weights)

    # ---------------------------------------------------------------- test
    def test(self, use_best: bool = True, on_step: StepHook | None = None) -> torch.Tensor:
        """Load the best-validation weights (if any and `use_best`), re-seed the simulator's stream and return the
        returns of `test_episodes` deterministic episodes played as one batch. The agent keeps the best weights."""
        if use_best and self.best_weights is not None:
            self.agent.load_state_dict(self.best_weights)
        return evaluate_policy(self.env, self.agent, self.protocol.test_episodes, reseed=True, on_step=on_step)

    # ---------------------------------------------------------------- resume
    def state_dict(self) -> dict[str, Any]:
        """A detached snapshot of everything the continuation depends on (plain containers and tensors: loadable
        with `torch.load(..., weights_only=True)`)."""
        pending = None if self._pending is None else dataclasses.asdict(self._pending)
        state = {
            "episode": self.episode,
            "protocol": dataclasses.asdict(self.protocol),
            "method": self.agent.method,
            "agent": self.agent.training_state_dict(),
            "buffer": None if self.buffer is None else self.buffer.state_dict(),
            "pending": pending,
            "env": self.env.state_dict(),
            "best_return": self.best_return,
            "best_episode": self.best_episode,
            "best_weights": self.best_weights,
            "validations": [list(item) for item in self.validations],
            "meter": self._meter.state_dict(),
        }
        return copy.deepcopy(state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_state(state, self.agent.method, self.protocol)
        state = copy.deepcopy(state)
        self.agent.load_training_state_dict(state["agent"])
        if self.buffer is not None:
            self.buffer.load_state_dict(state["buffer"])
        pending = state["pending"]
        self._pending = None if pending is None else Trajectories(**_to_device(pending, self.agent.device))
        self.env.load_state_dict(state["env"])
        self.episode = int(state["episode"])
        self.best_return, self.best_episode = state["best_return"], state["best_episode"]
        self.best_weights = state["best_weights"]
        self.validations = [(int(e), float(v)) for e, v in state["validations"]]
        self._meter = _Meter()
        self._meter.load_state_dict(state["meter"])


def check_state(state: dict[str, Any], method: str, protocol: Protocol) -> None:
    """A saved training state may continue a loop of `method` under `protocol` (else a SlateRLError)."""
    if state["method"] != method:
        raise SlateRLError(f"checkpoint is of method {state['method']!r}, this trainer runs {method!r}")
    saved = {**dataclasses.asdict(Protocol()), **state["protocol"]}  # a field added later: its default
    if saved != dataclasses.asdict(protocol):
        raise SlateRLError(
            f"checkpoint protocol {saved} differs from this trainer's "
            f"{dataclasses.asdict(protocol)}; resume with the same protocol"
        )


def block_size(p: Protocol, start: int) -> int:
    """Episodes in the block starting at episode `start` (K, cut at the warm-up end and validation points)."""
    size = min(p.parallel_episodes, p.episodes - start, p.val_every - start % p.val_every)
    return min(size, p.warmup_episodes - start) if start < p.warmup_episodes else size


def _to_device(fields: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The tensors of `fields` moved to `device` (None kept)."""
    return {key: None if value is None else value.to(device) for key, value in fields.items()}
