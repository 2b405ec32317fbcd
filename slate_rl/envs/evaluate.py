"""Play a policy for M episodes at once (optionally in blocks of users) and summarise the returns."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from slate_rl.envs.policies import Policy
from slate_rl.envs.topicrec import TopicRec
from slate_rl.errors import SlateRLError


@dataclass
class EvaluationResult:
    """Per-episode returns (clicks over the episode) and step statistics of an evaluation."""

    returns: torch.Tensor  # (M,) float
    clicks_per_step: torch.Tensor  # (M * H,) int: clicks of every step, for histograms
    bored_steps: int  # steps on which at least one topic was bored
    total_steps: int

    @property
    def mean(self) -> float:
        return float(self.returns.mean())

    @property
    def std(self) -> float:
        return float(self.returns.std()) if self.returns.numel() > 1 else 0.0

    @property
    def stderr(self) -> float:
        return self.std / math.sqrt(self.returns.numel())

    def summary(self) -> dict[str, float]:
        """Mean / std / standard error / min / max of the returns, clicks per step and the share of bored steps."""
        return {
            "mean_return": self.mean,
            "std_return": self.std,
            "stderr_return": self.stderr,
            "min_return": float(self.returns.min()),
            "max_return": float(self.returns.max()),
            "clicks_per_step": float(self.clicks_per_step.float().mean()),
            "bored_step_share": self.bored_steps / max(self.total_steps, 1),
        }


def play(
    env: TopicRec,
    policy: Policy,
    num_users: int,
    on_step: Callable[[int, dict, torch.Tensor | None, dict], None] | None = None,
) -> torch.Tensor:
    """Play one batch of `num_users` full episodes; returns their returns. `on_step(t, obs, reward, info)` sees
    every step (t = 1..H) and, with t = 0, the reset observation (reward None)."""
    obs, info = env.reset(num_users)
    policy.start(num_users)
    if on_step is not None:
        on_step(0, obs, None, info)
    returns = torch.zeros(num_users, device=env.device)
    for t in range(1, env.episode_length + 1):
        obs, reward, _, info = env.step(policy.act(obs, info))
        returns += reward
        if on_step is not None:
            on_step(t, obs, reward, info)
    return returns


def evaluate(
    env: TopicRec, policy: Policy, num_episodes: int, batch_size: int | None = None, reseed: bool = False
) -> EvaluationResult:
    """Play `num_episodes` episodes (all at once, or in blocks of `batch_size` users).

    reseed=True restarts the simulator's user stream first, as the paper does before its test, so that every
    policy meets the same users.
    """
    if int(num_episodes) < 1:
        raise SlateRLError(f"num_episodes must be >= 1 (got {num_episodes})")
    if reseed:
        env.reset_random_state()
    block = int(batch_size or num_episodes)
    returns, clicks = [], []
    bored = 0

    def record(t: int, obs: dict, reward: torch.Tensor | None, info: dict) -> None:
        nonlocal bored
        if t > 0:
            clicks.append(obs["clicks"].sum(dim=1).to("cpu", torch.int8))
            bored += int(info["bored"].any(dim=1).sum())

    with torch.no_grad():
        for start in range(0, int(num_episodes), block):
            returns.append(play(env, policy, min(block, int(num_episodes) - start), record).cpu())
    all_returns = torch.cat(returns)
    return EvaluationResult(all_returns, torch.cat(clicks), bored, all_returns.numel() * env.episode_length)
