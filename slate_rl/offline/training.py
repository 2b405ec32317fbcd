"""The offline training loop: gradient steps on sampled episodes, evaluation in the simulator, divergence checks,
and a complete state to resume from. No files, no MLflow (the stage saves what it is handed).

Every `eval_every` steps (and after the last one) the greedy policy plays the validation users (the same users at
every evaluation: their simulator is re-seeded) and the agent is diagnosed on a fixed batch of the dataset. The best
validation weights are kept; `test` plays given weights on the test users after re-seeding the simulator.

Divergence ends training with a SlateRLError: a non-finite training diagnostic or Q value, or a mean Q of the
dataset's actions (never clamped) above `DIVERGENCE_FACTOR` x r_max / (1 - gamma) for `DIVERGENCE_PATIENCE`
consecutive evaluations.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from slate_rl.agents.base import Diagnostics
from slate_rl.agents.rollout import evaluate_policy
from slate_rl.envs.topicrec import TopicRec
from slate_rl.errors import SlateRLError
from slate_rl.offline.common import OfflineAgent, OfflineBatch

DIVERGENCE_FACTOR = 2.0
DIVERGENCE_PATIENCE = 5


@dataclass(kw_only=True)
class Schedule:
    """Gradient steps, evaluation and checkpoint periods (in steps), and the users of validation and test."""

    steps: int
    eval_every: int
    save_every: int
    val_episodes: int = 200
    test_episodes: int = 500

    def validate(self) -> None:
        for name in ("steps", "eval_every", "save_every", "val_episodes", "test_episodes"):
            if int(getattr(self, name)) < 1:
                raise SlateRLError(f"{name} must be a positive number (got {getattr(self, name)})")


class OfflineData:
    """A dataset on tensors: slates / clicks of o_0..o_T (E, T+1, R) in their compact dtypes, normalised labels
    (E, T, A), and the reward scale; batches are whole episodes, on `device` (the agent's)."""

    def __init__(
        self,
        slates: np.ndarray,
        clicks: np.ndarray,
        labels: torch.Tensor,
        reward_scale: float = 1.0,
        device: torch.device | str = "cpu",
    ) -> None:
        self.device = torch.device(device)
        self.slates = torch.from_numpy(np.ascontiguousarray(slates)).to(self.device)
        self.clicks = torch.from_numpy(np.ascontiguousarray(clicks)).to(self.device)
        self.labels = labels.to(self.device, torch.float32).contiguous()
        self.reward_scale = float(reward_scale)
        if self.labels.shape[:2] != (self.slates.shape[0], self.slates.shape[1] - 1):
            raise SlateRLError(
                f"labels {tuple(self.labels.shape)} do not match episodes {tuple(self.slates.shape)} (one per step)"
            )

    @property
    def num_episodes(self) -> int:
        return int(self.slates.shape[0])

    def batch(self, index: torch.Tensor) -> OfflineBatch:
        clicks = self.clicks[index].float()
        return OfflineBatch(
            self.slates[index].long(), clicks, self.labels[index], clicks[:, 1:].sum(-1) * self.reward_scale
        )

    def sample(self, size: int, generator: torch.Generator) -> OfflineBatch:
        """`size` distinct episodes drawn uniformly (all of them, shuffled, when the dataset has fewer); drawn on
        the generator's device, gathered on the data's."""
        order = torch.randperm(self.num_episodes, generator=generator, device=generator.device)
        return self.batch(order[:size].to(self.device))


@dataclass
class _Means:
    """Running sums of the update diagnostics since the last evaluation."""

    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    count: int = 0

    def add(self, values: Diagnostics) -> None:
        for name, value in values.items():
            self.sums[name] = self.sums.get(name, torch.zeros((), device=value.device)) + value.detach().float()
        self.count += 1

    def emit(self) -> dict[str, float]:
        out = {f"train/{name}": float(total) / max(self.count, 1) for name, total in self.sums.items()}
        self.sums, self.count = {}, 0
        return out


@dataclass
class Evaluation:
    """One evaluation: the step, the validation returns, and the diagnostics (train/ means, diag/ values)."""

    step: int
    returns: torch.Tensor
    metrics: dict[str, float]


class OfflineTrainer:
    """Train an offline agent on `data`, validate it on `val_env`, test it on `test_env`.

    on_evaluation(evaluation): after every evaluation (before any divergence error is raised).
    on_checkpoint(step, state): every `save_every` steps, with `state_dict()`.
    """

    def __init__(
        self,
        agent: OfflineAgent,
        data: OfflineData,
        val_env: TopicRec,
        test_env: TopicRec,
        schedule: Schedule,
        on_evaluation: Callable[[Evaluation], None] | None = None,
        on_checkpoint: Callable[[int, dict[str, Any]], None] | None = None,
    ) -> None:
        schedule.validate()
        self.agent, self.data, self.schedule = agent, data, schedule
        self.val_env, self.test_env = val_env, test_env
        self.on_evaluation, self.on_checkpoint = on_evaluation, on_checkpoint
        size = min(agent.config.batch_episodes, data.num_episodes)
        self.probe = data.batch(torch.arange(size, device=data.device))  # the fixed batch of the diagnostics
        self.cloud = self.probe.actions.reshape(-1, agent.action_dim)
        self.bound = agent.config.return_bound(agent.slate_size)
        self.step = 0
        self.best_return = -math.inf
        self.best_step: int | None = None
        self.best_weights: dict[str, Any] | None = None
        self.validations: list[tuple[int, float]] = []
        self.diverging = 0  # consecutive evaluations with mean Q beyond the divergence bound
        self._means = _Means()

    @property
    def done(self) -> bool:
        return self.step >= self.schedule.steps

    def fit(self, max_steps: int | None = None) -> None:
        """Train to the last step (or `max_steps` more)."""
        stop = self.schedule.steps if max_steps is None else min(self.schedule.steps, self.step + int(max_steps))
        s = self.schedule
        while self.step < stop:
            batch = self.data.sample(self.agent.config.batch_episodes, self.agent.generator)
            self._means.add(self.agent.update(batch))
            self.step += 1
            if self.step % s.eval_every == 0 or self.step == s.steps:
                self.evaluate()
            if self.step % s.save_every == 0 and self.on_checkpoint is not None:
                self.on_checkpoint(self.step, self.state_dict())

    def evaluate(self) -> Evaluation:
        returns = evaluate_policy(self.val_env, self.agent, self.schedule.val_episodes, reseed=True)
        generator = torch.Generator(device="cpu").manual_seed(self.agent.seed + self.step)
        diagnostics = self.agent.diagnose(self.probe, self.cloud, generator)
        metrics = {**self._means.emit(), **{f"diag/{k}": v for k, v in diagnostics.items()}}
        mean = float(returns.mean())
        self.validations.append((self.step, mean))
        if mean > self.best_return:
            self.best_return, self.best_step = mean, self.step
            self.best_weights = copy.deepcopy(self.agent.state_dict())
        evaluation = Evaluation(self.step, returns, metrics)
        if self.on_evaluation is not None:
            self.on_evaluation(evaluation)
        self._check_divergence(metrics)
        return evaluation

    def _check_divergence(self, metrics: dict[str, float]) -> None:
        broken = sorted(name for name, value in metrics.items() if not math.isfinite(value))
        if broken:
            raise SlateRLError(
                f"training diverged at step {self.step}: {', '.join(broken)} became non-finite; lower lr, gamma "
                "or reward_scale, or raise the algorithm's regularisation"
            )
        q = metrics.get("diag/q_data")
        limit = DIVERGENCE_FACTOR * self.bound
        self.diverging = self.diverging + 1 if q is not None and q > limit else 0
        if self.diverging >= DIVERGENCE_PATIENCE:
            raise SlateRLError(
                f"training diverged: the mean Q of the dataset's actions stayed above {DIVERGENCE_FACTOR:g} x "
                f"r_max / (1 - gamma) = {limit:.1f} for {DIVERGENCE_PATIENCE} consecutive evaluations (last "
                f"{q:.1f} at step {self.step}); lower gamma or lr, or raise the algorithm's regularisation"
            )

    def test(self, weights: dict[str, Any] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Play `weights` (default: the current ones, which they replace) on the test users after re-seeding;
        returns the returns (M,) and the observed slates and clicks (M, T+1, R), row 0 the reset observation."""
        if weights is not None:
            self.agent.load_state_dict(weights)
        env, count = self.test_env, self.schedule.test_episodes
        shape = (count, env.episode_length + 1, env.slate_size)
        slates = torch.empty(shape, dtype=torch.long, device=env.device)
        clicks = torch.zeros(shape, dtype=torch.uint8, device=env.device)
        slates[:, 0] = env.initial_slate

        def record(t: int, obs: dict, info: dict, action: torch.Tensor | None) -> None:
            slates[:, t], clicks[:, t] = obs["slate"], obs["clicks"]

        returns = evaluate_policy(env, self.agent, count, reseed=True, on_step=record)
        return returns, slates, clicks

    # ---------------------------------------------------------------- resume
    def state_dict(self) -> dict[str, Any]:
        """A detached snapshot of everything the continuation depends on."""
        return copy.deepcopy(
            {
                "step": self.step,
                "schedule": vars(self.schedule),
                "method": self.agent.method,
                "agent": self.agent.training_state_dict(),
                "best_return": self.best_return,
                "best_step": self.best_step,
                "best_weights": self.best_weights,
                "validations": [list(item) for item in self.validations],
                "diverging": self.diverging,
                "means": {"sums": self._means.sums, "count": self._means.count},
            }
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["method"] != self.agent.method or state["schedule"] != vars(self.schedule):
            raise SlateRLError(
                f"the checkpoint is of {state['method']} with schedule {state['schedule']}; this run trains "
                f"{self.agent.method} with {vars(self.schedule)}"
            )
        state = copy.deepcopy(state)
        self.agent.load_training_state_dict(state["agent"])
        self.step = int(state["step"])
        self.best_return, self.best_step = float(state["best_return"]), state["best_step"]
        self.best_weights = state["best_weights"]
        self.validations = [(int(s), float(v)) for s, v in state["validations"]]
        self.diverging = int(state["diverging"])
        self._means = _Means(dict(state["means"]["sums"]), int(state["means"]["count"]))
