"""The batched simulator against the per-user reference.

Exact agreement: both simulators get the same draws (`reset_with` / `step_with` vs `ReferenceTopicRec`) and the
same slates, and must produce the same filled slates, clicks, boredom, short-term topics and user states at
every step of whole episodes. One batch mixes oracle (epsilon 0), logging-policy (0.5) and random (1) users.

Statistical agreement: the batched simulator with its own stream vs the reference fed independent draws.
"""

from __future__ import annotations

import pytest
import torch

from sim_helpers import PerUserEpsilon, ReferenceTopicRec, run_lockstep, single_torch_thread, small_env, welch_z
from slate_rl.envs import ENV_NAMES, env_params
from slate_rl.envs.policies import EpsilonGreedyOracle
from slate_rl.envs.randomness import UserStream

EPSILONS = [0.0, 0.5, 1.0, 0.0, 0.5, 1.0]

pytestmark = pytest.mark.usefixtures(single_torch_thread.__name__)  # tiny tensors: threads only add overhead


def _custom_propensities() -> list[float]:
    """Examination decays with rank and with the distance to the last click (none yet = column 10)."""
    return [
        0.95 * 0.9**r if j == 10 else 0.95 * 0.9**r * (0.5 + 0.5 * 0.8 ** abs(r - j))
        for r in range(10)
        for j in range(11)
    ]


PARAMETER_SETS = {
    "custom_propensities": dict(click_model="custom", env_propensities=_custom_propensities(), env_alpha=0.9),
    "boost_3": dict(short_term_boost=3.0),
    "click_only_once": dict(click_only_once=True),
    "rel_threshold": dict(rel_threshold=0.3),
    "no_quirks_boost_2": dict(reference_quirks=False, short_term_boost=2.0),
    "busy_boredom": dict(
        diversity_penalty=2.0,
        diversity_threshold=3,
        boredom_threshold=3,
        boredom_moving_window=3,
        recent_items_maxlen=4,
        bored_timeout=3,
        prop_threshold=0.5,
        short_term_boost=1.5,
    ),
    "four_topics_slate_8": dict(num_items=200, num_topics=4, topic_size=3, slate_size=8, diversity_penalty=2.0),
}


def _check_exercised(seen: dict[str, int], params) -> None:
    """The episode really used what it is meant to compare."""
    assert seen["clicks"] > 50 and seen["oracle_slots"] > 100 and seen["bored_user_steps"] > 20, seen
    if params.diversity_penalty != 1.0:
        assert seen["duplicates"] > 0, seen


@pytest.mark.parametrize("name", ENV_NAMES)
def test_exact_agreement_on_the_presets(name: str) -> None:
    params = env_params(name)
    env = small_env(params, sim_seed=ENV_NAMES.index(name) + 1)
    seen = run_lockstep(env, PerUserEpsilon(EPSILONS, params.num_items, params.slate_size, seed=7), len(EPSILONS))
    _check_exercised(seen, params)


@pytest.mark.parametrize("label", sorted(PARAMETER_SETS))
def test_exact_agreement_with_other_parameters(label: str) -> None:
    params = env_params("focused_mix", **PARAMETER_SETS[label])
    env = small_env(params, sim_seed=sorted(PARAMETER_SETS).index(label) + 20)
    seen = run_lockstep(env, PerUserEpsilon(EPSILONS, params.num_items, params.slate_size, seed=8), len(EPSILONS))
    _check_exercised(seen, params)
    if params.short_term_boost != 1.0:
        assert seen["stc_changes"] > 0, seen


def _reference_returns(params, table, epsilon: float, episodes: int, seed: int) -> torch.Tensor:
    """Returns of `episodes` reference users with draws from a stream of their own."""
    stream = UserStream(seed)
    policy = EpsilonGreedyOracle(params.num_items, params.slate_size, epsilon, seed=seed + 1)
    draws = stream.reset_draws(episodes, params.num_topics, params.topic_size, params.slate_size)
    users = [ReferenceTopicRec(params, table) for _ in range(episodes)]
    obs = {"slate": torch.zeros(episodes, params.slate_size, dtype=torch.long)}
    for i, user in enumerate(users):
        user.reset(draws.normal[i], draws.topic_weights[i], draws.click_uniforms[i], int(draws.fallback_topic[i]))
    returns = torch.zeros(episodes)
    for _ in range(params.episode_length):
        slates = policy.act(obs, {})
        uniforms = stream.step_draws(episodes, params.slate_size)
        for i, user in enumerate(users):
            _, reward, _, _ = user.step(slates[i], uniforms[i])
            returns[i] += int(reward)
    return returns


@pytest.mark.parametrize("epsilon", [1.0, 0.5, 0.0])
def test_statistical_agreement_of_returns(epsilon: float) -> None:
    """500 batched episodes (the simulator's own stream) vs 40 reference episodes (independent draws)."""
    params = env_params("focused_topdown")
    env = small_env(params, sim_seed=31)
    policy = EpsilonGreedyOracle(params.num_items, params.slate_size, epsilon, seed=32)
    obs, info = env.reset(500)
    batched = torch.zeros(500)
    for _ in range(params.episode_length):
        obs, reward, _, info = env.step(policy.act(obs, info))
        batched += reward
    reference = _reference_returns(params, env.item_embeddings, epsilon, episodes=40, seed=33)
    z = welch_z(
        float(batched.mean()),
        float(batched.std()) / 500**0.5,
        float(reference.mean()),
        float(reference.std()) / 40**0.5,
    )
    assert z < 4.0, (float(batched.mean()), float(reference.mean()), z)
