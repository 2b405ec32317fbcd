"""Baseline policies (random items, epsilon-greedy oracle, short-term oracle) and the evaluator."""

from __future__ import annotations

import math

import pytest
import torch

from sim_helpers import single_torch_thread, small_env
from slate_rl.envs import env_params
from slate_rl.envs.evaluate import evaluate, play
from slate_rl.envs.policies import (
    EpsilonGreedyOracle,
    RandomPolicy,
    ShortTermOracle,
    baseline_policy,
    distinct_random_items,
)
from slate_rl.errors import SlateRLError

pytestmark = pytest.mark.usefixtures(single_torch_thread.__name__)  # tiny tensors: threads only add overhead


def test_distinct_random_items_are_distinct_and_uniform() -> None:
    users, items, size = 20_000, 1000, 10
    slates = distinct_random_items(users, items, size, torch.Generator().manual_seed(0))
    assert slates.dtype == torch.long and tuple(slates.shape) == (users, size)
    assert int(slates.min()) >= 0 and int(slates.max()) < items
    assert bool((slates.sort(dim=1).values.diff(dim=1) > 0).all())  # no repeat within a slate
    # chi-square over items: 999 degrees of freedom, mean 999, sd sqrt(2 * 999) = 44.7
    counts = torch.bincount(slates.flatten(), minlength=items).double()
    expected = users * size / items
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert abs(chi2 - (items - 1)) < 5 * math.sqrt(2 * (items - 1)), chi2
    # every slot is uniform too (the order is shuffled): mean id 499.5, sd 288.7 per draw
    slot_means = slates.double().mean(dim=0)
    standard_error = math.sqrt((items**2 - 1) / 12) / math.sqrt(users)
    assert float((slot_means - (items - 1) / 2).abs().max()) < 4.5 * standard_error, slot_means


def test_distinct_random_items_of_the_whole_catalogue_is_a_permutation() -> None:
    slates = distinct_random_items(500, 10, 10, torch.Generator().manual_seed(1))
    assert bool((slates.sort(dim=1).values == torch.arange(10)).all())
    first_slot = torch.bincount(slates[:, 0], minlength=10).double()
    assert float((first_slot - 50).abs().max()) < 5 * math.sqrt(500 * 0.1 * 0.9)


@pytest.mark.parametrize("epsilon", [0.0, 0.2, 0.5, 1.0])
def test_epsilon_greedy_share_of_oracle_slots(epsilon: float) -> None:
    users = 4000
    policy = EpsilonGreedyOracle(1000, 10, epsilon, seed=3)
    slates = policy.act({"slate": torch.zeros(users, 10, dtype=torch.long)}, {})
    oracle_share = float((slates == -1).double().mean())
    standard_error = math.sqrt(epsilon * (1 - epsilon) / (users * 10))
    assert abs(oracle_share - (1 - epsilon)) <= 5 * standard_error + 1e-12
    for row in slates[:200]:
        given = row[row >= 0]
        assert len(set(given.tolist())) == given.numel()


def test_policies_are_seeded_and_checked() -> None:
    obs = {"slate": torch.zeros(5, 10, dtype=torch.long)}
    assert torch.equal(RandomPolicy(1000, 10, seed=4).act(obs, {}), RandomPolicy(1000, 10, seed=4).act(obs, {}))
    assert not torch.equal(RandomPolicy(1000, 10, seed=4).act(obs, {}), RandomPolicy(1000, 10, seed=5).act(obs, {}))
    assert torch.equal(ShortTermOracle(10).act(obs, {}), torch.full((5, 10), -1))
    assert isinstance(baseline_policy("epsilon_greedy", 1000, 10, seed=1), EpsilonGreedyOracle)
    assert baseline_policy("epsilon_greedy", 1000, 10, seed=1).epsilon == 0.5
    with pytest.raises(SlateRLError, match="epsilon"):
        EpsilonGreedyOracle(1000, 10, 1.5, seed=1)
    with pytest.raises(SlateRLError, match="unknown baseline policy"):
        baseline_policy("greedy", 1000, 10, seed=1)


def test_evaluator_summary_and_common_random_numbers() -> None:
    env = small_env(env_params("focused_mix", episode_length=30))
    result = evaluate(env, EpsilonGreedyOracle(1000, 10, 0.5, seed=6), num_episodes=50, batch_size=20, reseed=True)
    again = evaluate(env, EpsilonGreedyOracle(1000, 10, 0.5, seed=6), num_episodes=50, batch_size=20, reseed=True)
    env.reset_random_state()
    played = play(env, EpsilonGreedyOracle(1000, 10, 0.5, seed=6), 20)
    summary = result.summary()
    assert result.returns.shape == (50,) and result.total_steps == 50 * 30
    assert summary["mean_return"] == pytest.approx(float(result.returns.mean()))
    assert summary["stderr_return"] == pytest.approx(float(result.returns.std()) / math.sqrt(50))
    assert summary["min_return"] <= summary["mean_return"] <= summary["max_return"]
    assert result.clicks_per_step.numel() == 50 * 30
    assert int(result.clicks_per_step.sum()) == int(result.returns.sum())  # returns = clicks over the steps
    assert summary["clicks_per_step"] == pytest.approx(float(result.returns.mean()) / 30)
    assert 0.2 < summary["bored_step_share"] < 1.0  # epsilon 0.5 bores users on most steps (~70% over 100)
    assert torch.equal(result.returns, again.returns)  # reseeded stream + same policy seed: same episodes
    assert torch.equal(played, result.returns[:20])  # the first block of users is the stream's first users
    with pytest.raises(SlateRLError, match="num_episodes"):
        evaluate(env, ShortTermOracle(10), num_episodes=0)
