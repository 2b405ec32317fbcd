"""The gymnasium adapter: spaces, registration, truncation at the horizon, vector env with next-step autoreset."""

from __future__ import annotations

import gymnasium
import numpy as np
from gymnasium.utils.env_checker import check_env

import slate_rl.envs  # noqa: F401  (registers the ids)
from slate_rl import config
from slate_rl.envs.gym import SlateRLEnv, SlateRLVectorEnv


def test_registered_ids_build_checked_envs():
    ids = [env_id for env_id in gymnasium.registry if env_id.startswith("SlateRL/")]
    assert sorted(ids) == sorted(f"SlateRL/{name}-v0" for name in config.env_names())  # the paper's six, variants
    assert len(ids) == 11 and "SlateRL/focused_topdown-v0" in ids and "SlateRL/diffuse_mix_bt3_dp5-v0" in ids
    env = gymnasium.make("SlateRL/diffuse_divpen-v0")
    assert env.unwrapped.sim.params.diversity_penalty == 3.0
    check_env(env.unwrapped, skip_render_check=True)


def test_episode_is_truncated_after_100_steps_and_rewards_are_clicks():
    env = SlateRLEnv("focused_mix")
    obs, info = env.reset(seed=3)
    assert env.observation_space.contains(obs) and info["user_state"].shape == (20,)
    rng = np.random.default_rng(0)
    for t in range(1, 101):
        obs, reward, terminated, truncated, _ = env.step(rng.choice(1000, 10, replace=False))
        assert reward == obs["clicks"].sum() and not terminated
        assert truncated == (t == 100)


def test_same_seed_gives_the_same_user():
    env = SlateRLEnv("focused_mix")
    first = env.reset(seed=11)[1]["user_state"]
    env.reset()
    again = env.reset(seed=11)[1]["user_state"]
    np.testing.assert_array_equal(first, again)


def test_vector_env_steps_users_together_and_autoresets_next_step():
    env = gymnasium.make_vec("SlateRL/focused_topdown-v0", num_envs=4, vectorization_mode="vector_entry_point")
    assert isinstance(env, SlateRLVectorEnv)
    obs, _ = env.reset(seed=0)
    assert obs["slate"].shape == (4, 10) and obs["clicks"].shape == (4, 10)
    for _ in range(100):
        obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        assert reward.shape == (4,) and not terminated.any()
    assert truncated.all()
    obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
    assert (reward == 0).all() and not truncated.any()
    np.testing.assert_array_equal(obs["slate"][0], env.sim.initial_slate.numpy())  # the reset observation
