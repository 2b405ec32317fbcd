"""OfflineEpisodes, EpisodeRecorder and the flat transition view: shapes, alignment, boundaries, refusals."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from slate_rl.data import EpisodeRecorder, to_episodes, to_transitions
from slate_rl.envs.evaluate import play
from slate_rl.envs.policies import RandomPolicy
from slate_rl.errors import SlateRLError
from test_offline_helpers import HORIZON, collect, small_env, tiny_episodes


@pytest.fixture(scope="module")
def env():
    return small_env()


@pytest.fixture(scope="module")
def episodes(env):
    return collect(env, "expert", 7, epsilon=0.2, action_dim=12, oracle=True, blocks=2)


def test_recorder_shapes_dtypes_and_metadata(env, episodes):
    assert (episodes.num_episodes, episodes.horizon, episodes.slate_size) == (7, HORIZON, 10)
    assert episodes.slates.shape == (7, HORIZON + 1, 10) and episodes.slates.dtype == np.int16
    assert episodes.clicks.shape == (7, HORIZON + 1, 10) and episodes.clicks.dtype == np.uint8
    assert episodes.rewards.shape == (7, HORIZON) and episodes.rewards.dtype == np.float32
    assert episodes.actions.shape == (7, HORIZON, 12)
    assert episodes.user_states.shape == (7, HORIZON + 1, 20) and episodes.bored.shape == (7, HORIZON + 1, 10)
    assert episodes.item_relevances is None
    assert episodes.source_names == ("expert",) and episodes.source_counts() == {"expert": 7}
    assert episodes.metadata["env"] == "focused_topdown"
    assert episodes.metadata["env_params"]["episode_length"] == HORIZON and episodes.metadata["sim_seed"] == 7
    assert episodes.metadata["sources"] == {"expert": {"policy": "epsilon_greedy_0.2", "seed": 0}}
    assert all(a.flags["C_CONTIGUOUS"] for a in (episodes.slates, episodes.clicks, episodes.rewards))


def test_row_zero_is_the_reset_observation_and_rewards_are_the_next_clicks(env, episodes):
    initial = env.initial_slate.numpy()
    assert (episodes.slates[:, 0] == initial).all()
    np.testing.assert_array_equal(episodes.rewards, episodes.clicks[:, 1:].sum(axis=2))
    # the recorded action of step t encodes the slate of observation t+1 (see the helper)
    np.testing.assert_allclose(episodes.actions[:, :, :10], episodes.slates[:, 1:] / 1000.0, rtol=1e-6)


def test_recorder_matches_the_simulator_step_by_step():
    env = small_env()
    recorder = EpisodeRecorder.for_env(env, 3, "random", oracle=True)
    seen = []

    def record(t, obs, reward, info):
        recorder.on_step(t, obs, reward, info)
        seen.append((obs["slate"].clone(), obs["clicks"].clone(), info["user_state"].clone()))

    play(env, RandomPolicy(1000, 10, 4), 3, record)
    episodes = recorder.finish()
    for t, (slate, clicks, user) in enumerate(seen):
        np.testing.assert_array_equal(episodes.slates[:, t], slate.numpy())
        np.testing.assert_array_equal(episodes.clicks[:, t], clicks.numpy())
        np.testing.assert_array_equal(episodes.user_states[:, t], user.numpy())


def test_relevances_are_opt_in_and_recorded_as_float16():
    env = small_env()
    episodes = collect(env, "random", 2, relevances=True)
    assert episodes.item_relevances.shape == (2, HORIZON + 1, 1000)
    assert episodes.item_relevances.dtype == np.float16
    assert episodes.user_states is None


def test_recorder_refuses_misuse():
    env = small_env()
    recorder = EpisodeRecorder.for_env(env, 2, "random", action_dim=3)
    with pytest.raises(SlateRLError, match="exceed the 2 episodes"):
        recorder.reset(env.reset(3)[0])
    obs, info = env.reset(2)
    with pytest.raises(SlateRLError, match="reset"):
        recorder.step(obs, info, actions=np.zeros((2, 3)))
    recorder.reset(obs, info)
    obs, _, _, info = env.step(torch.full((2, 10), -1))
    with pytest.raises(SlateRLError, match="actions="):
        recorder.step(obs, info)
    with pytest.raises(SlateRLError, match="finish it before a reset"):
        recorder.reset(obs, info)
    with pytest.raises(SlateRLError, match="only 0 of 2 episodes are complete"):
        recorder.finish()
    with pytest.raises(SlateRLError, match="oracle=True needs"):
        EpisodeRecorder.for_env(env, 1, "x", oracle=True).reset(env.reset(1)[0])
    with pytest.raises(SlateRLError, match="relevances="):
        EpisodeRecorder.for_env(env, 1, "x", relevances=True).reset(*env.reset(1))


def test_container_refuses_bad_arrays():
    good = tiny_episodes([[[0, 1], [2, 3]]], [[[0, 0], [1, 0]]])
    with pytest.raises(SlateRLError, match="dtype int16"):
        dataclasses.replace(good, slates=good.slates.astype(np.int64))
    with pytest.raises(SlateRLError, match="rewards has shape"):
        dataclasses.replace(good, rewards=np.zeros((1, 2), np.float32))
    with pytest.raises(SlateRLError, match="must equal clicks"):
        dataclasses.replace(good, rewards=np.zeros((1, 1), np.float32))
    with pytest.raises(SlateRLError, match="actions has shape"):
        dataclasses.replace(good, actions=np.zeros((1, 2, 4), np.float32))
    with pytest.raises(SlateRLError, match="negative item ids"):
        dataclasses.replace(good, slates=-good.slates - 1)
    with pytest.raises(SlateRLError, match="catalogue has 10 items"):
        dataclasses.replace(good, slates=good.slates + 9)
    with pytest.raises(SlateRLError, match="codes in"):
        dataclasses.replace(good, sources=np.array([1], np.int16))
    with pytest.raises(SlateRLError, match="source names"):
        dataclasses.replace(good, source_names=("bad name",))
    with pytest.raises(SlateRLError, match="reserved"):
        dataclasses.replace(good, metadata={"format": 1})
    with pytest.raises(SlateRLError, match="JSON-serialisable"):
        dataclasses.replace(good, metadata={"model": object()})


def test_metadata_numpy_values_become_plain_json():
    episodes = tiny_episodes(
        [[[0, 1], [2, 3]]], [[[0, 0], [1, 0]]], metadata={"seed": np.int64(3), "scores": np.array([1.5, 2.0])}
    )
    assert episodes.metadata == {"seed": 3, "scores": [1.5, 2.0]}
    assert type(episodes.metadata["seed"]) is int


def test_transitions_next_is_the_next_step_and_never_crosses_episodes(episodes):
    flat = to_transitions(episodes)
    e, horizon = episodes.num_episodes, episodes.horizon
    assert len(flat) == e * horizon
    ids, steps = flat["episode_ids"], flat["timesteps"]
    np.testing.assert_array_equal(ids, np.repeat(np.arange(e), horizon))
    np.testing.assert_array_equal(steps, np.tile(np.arange(horizon), e))
    for row in (0, 1, horizon - 1, horizon, len(flat) - 1):
        episode, t = ids[row], steps[row]
        np.testing.assert_array_equal(flat["slates"][row], episodes.slates[episode, t])
        np.testing.assert_array_equal(flat["next_slates"][row], episodes.slates[episode, t + 1])
        np.testing.assert_array_equal(flat["next_clicks"][row], episodes.clicks[episode, t + 1])
        assert flat["rewards"][row] == flat["next_clicks"][row].sum()
        np.testing.assert_array_equal(flat["actions"][row], episodes.actions[episode, t])
    assert (flat["slates"][steps == 0] == episodes.slates[0, 0]).all()  # the reset observation opens each episode
    within = ids[1:] == ids[:-1]  # next of row n is the observation of row n + 1, inside an episode only
    np.testing.assert_array_equal(flat["next_slates"][:-1][within], flat["slates"][1:][within])
    assert not flat["terminals"].any()
    np.testing.assert_array_equal(flat["timeouts"], steps == horizon - 1)
    assert flat.oracle["user_states"] is episodes.user_states


def test_next_slates_are_never_the_current_ones(env):
    flat = to_transitions(collect(env, "random", 4, seed=3))  # random slates: consecutive ones always differ
    assert not (flat["next_slates"] == flat["slates"]).all(axis=1).any()


def test_transitions_convert_back_to_the_same_episodes(episodes):
    back = to_episodes(to_transitions(episodes))
    for name in ("slates", "clicks", "rewards", "sources", "actions", "user_states", "bored"):
        np.testing.assert_array_equal(getattr(back, name), getattr(episodes, name))
    assert back.metadata == episodes.metadata and back.source_names == episodes.source_names


def test_shuffled_or_misaligned_rows_are_not_taken_for_episodes(episodes):
    flat = to_transitions(episodes)
    order = np.random.default_rng(0).permutation(len(flat))
    shuffled = dataclasses.replace(flat, data={key: value[order] for key, value in flat.data.items()})
    with pytest.raises(SlateRLError, match="whole episodes in order"):
        to_episodes(shuffled)
    v4_style = dataclasses.replace(flat, data={**flat.data, "next_slates": flat["slates"]})
    with pytest.raises(SlateRLError, match="misaligned"):
        to_episodes(v4_style)
    terminal = dataclasses.replace(flat, data={**flat.data, "terminals": flat["timeouts"]})
    with pytest.raises(SlateRLError, match="terminals must be all False"):
        to_episodes(terminal)


def test_return_stats_overall_and_by_source():
    episodes = tiny_episodes(
        [[[0, 1], [2, 3], [4, 5]]] * 3,
        [[[0, 0], [1, 0], [1, 1]], [[0, 0], [0, 0], [0, 0]], [[1, 1], [1, 1], [0, 1]]],
        sources=[0, 1, 0],
        source_names=("a", "b"),
    )
    np.testing.assert_array_equal(episodes.returns(), [3, 0, 3])
    stats = episodes.return_stats()
    assert stats["all"]["mean"] == 2.0 and stats["all"]["count"] == 3
    assert stats["by_source"] == {
        "a": {"count": 2, "mean": 3.0, "std": 0.0, "min": 3.0, "median": 3.0, "max": 3.0},
        "b": {"count": 1, "mean": 0.0, "std": 0.0, "min": 0.0, "median": 0.0, "max": 0.0},
    }
