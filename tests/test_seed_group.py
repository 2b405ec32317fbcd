"""A seed group trains each of its seeds as the seed's agent alone would: 200 updates in float64 of 4 seeds grouped
and of the same 4 seeds each alone (own buffers, own generators) give the same diagnostics at every update, the
same parameters after every update and the same training state (weights, optimiser states, generators) at the end
(rtol 1e-8). Small networks keep it fast; a few updates at the paper's shapes check those. Also: acting in a
group equals each agent acting alone, and the groups that are refused."""

from __future__ import annotations

import copy

import pytest
import torch

from agents_helpers import gems_decoder, single_thread, small_env, upstream  # noqa: F401 (autouse fixture)
from slate_rl.agents import EXPLORE, GREEDY, RANDOM, BeliefConfig, Trajectories, TrajectoryBuffer, build_agent, play
from slate_rl.agents.sac import SACAgent
from slate_rl.agents.seed_group import SeedGroup, play_group
from slate_rl.errors import SlateRLError

SEEDS = (3, 11, 2024, 58407201)
SMALL = {"hidden": 32, "batch_size": 4, "belief": BeliefConfig(item_dim=8, hidden_dim=8)}
CASES = [
    ("sac_topk_ideal", {}),
    ("sac_topk_ideal", {"reference_temperature": False, "auto_entropy": False}),
    ("sac_gems", {"reference_temperature": False, "reference_terminal_end": True}),
]


def agents(method: str, env, overrides: dict, seeds=SEEDS) -> list[SACAgent]:
    """One agent per seed; SAC+GeMS seeds each get their own GeMS decoder, as in the paper (ranker seed = seed)."""
    built = [
        build_agent(
            method, env, seed, **{**upstream(env), "gems_decoder": gems_decoder(env, seed)}, overrides=overrides
        )
        for seed in seeds
    ]
    return [agent for agent in built if isinstance(agent, SACAgent)]


def filled_buffers(env, method: str, overrides: dict, episodes: int, seeds=SEEDS) -> list[TrajectoryBuffer]:
    """One buffer per seed with episodes collected by that seed's exploring policy (different for every seed)."""
    buffers = []
    for collector in agents(method, env, overrides, seeds):
        buffer = TrajectoryBuffer(episodes, env.episode_length, env.slate_size, env.num_items, collector.action_dim)
        episodes_played = play(env, collector, episodes, EXPLORE)
        buffer.add(episodes_played)
        buffers.append(buffer)
    return buffers


def in_float64(batch: Trajectories) -> Trajectories:
    return Trajectories(batch.slates, batch.clicks.double(), None if batch.actions is None else batch.actions.double())


@pytest.mark.parametrize(("method", "switches"), CASES)
def test_each_seed_of_a_group_trains_as_it_would_alone_for_200_updates_in_float64(method, switches):
    env = small_env("focused_divpen", episode_length=10, num_items=200)
    overrides = {**SMALL, **switches}
    buffers = filled_buffers(env, method, overrides, 12)
    alone = [agent.double() for agent in agents(method, env, overrides)]
    group = SeedGroup([agent.double() for agent in agents(method, env, overrides)])
    initial = copy.deepcopy(group.params)
    for update in range(200):
        grouped = group.update(in_float64(group.sample(buffers)))
        for index, (agent, buffer) in enumerate(zip(alone, buffers, strict=True)):
            expected = agent.update(in_float64(buffer.sample(agent.batch_size, agent.generator)))
            assert list(grouped) == list(expected)
            for name, value in expected.items():
                torch.testing.assert_close(
                    grouped[name][index], value, rtol=1e-8, atol=1e-12, msg=f"{name}, seed {index}, update {update}"
                )
            for name, param in agent.named_parameters():
                if param.requires_grad:
                    torch.testing.assert_close(group.params[name][index], param, rtol=1e-8, atol=1e-12)
    group.write_back()
    for agent, grouped_agent in zip(alone, group.agents, strict=True):
        torch.testing.assert_close(grouped_agent.training_state_dict(), agent.training_state_dict(), rtol=1e-8, atol=0)
    moved = [name for name, value in group.params.items() if not torch.equal(value, initial[name])]
    frozen = {"temperature.log_alpha"} if switches.get("auto_entropy") is False else set()
    assert sorted(moved) == sorted(set(group.params) - frozen)  # every trained parameter moved: not vacuous


def test_a_group_at_the_paper_shapes_matches_its_seeds_alone():
    """SAC+GeMS, hidden 256, belief 20, 20 episodes of 100 steps per batch, 1,000 items: 3 updates of 2 seeds."""
    env = small_env("focused_topdown", episode_length=100)
    buffers = filled_buffers(env, "sac_gems", {}, 20, SEEDS[:2])
    alone = [agent.double() for agent in agents("sac_gems", env, {}, SEEDS[:2])]
    group = SeedGroup([agent.double() for agent in agents("sac_gems", env, {}, SEEDS[:2])])
    for update in range(3):
        grouped = group.update(in_float64(group.sample(buffers)))
        for index, (agent, buffer) in enumerate(zip(alone, buffers, strict=True)):
            expected = agent.update(in_float64(buffer.sample(agent.batch_size, agent.generator)))
            for name, value in expected.items():
                torch.testing.assert_close(grouped[name][index], value, rtol=1e-8, atol=1e-12, msg=f"{name} {update}")
    group.write_back()
    for agent, grouped_agent in zip(alone, group.agents, strict=True):
        torch.testing.assert_close(grouped_agent.training_state_dict(), agent.training_state_dict(), rtol=1e-8, atol=0)


@pytest.mark.parametrize("method", ["sac_topk_ideal", "sac_gems"])
def test_acting_in_a_group_equals_each_agent_acting_alone(method):
    env = small_env("focused_mix", episode_length=5, num_items=200)
    alone, group = agents(method, env, SMALL), SeedGroup(agents(method, env, SMALL))
    users = 6
    generator = torch.Generator().manual_seed(7)
    group.start(users)
    for agent in alone:
        agent.start(users)
    for mode in (RANDOM, EXPLORE, EXPLORE, GREEDY, EXPLORE):
        obs = {
            "slate": torch.randint(env.num_items, (len(SEEDS), users, env.slate_size), generator=generator),
            "clicks": torch.randint(2, (len(SEEDS), users, env.slate_size), generator=generator, dtype=torch.uint8),
        }
        slates, actions = group.act(obs, mode)
        for index, agent in enumerate(alone):
            own_slates, own_actions = agent.act({key: value[index] for key, value in obs.items()}, mode)
            torch.testing.assert_close(actions[index], own_actions, msg=f"{mode}, seed {index}")
            assert torch.equal(slates[index], own_slates), f"{mode}, seed {index}"


def test_groups_that_cannot_train_together_are_refused():
    env = small_env(episode_length=4)
    topk = agents("sac_topk_ideal", env, SMALL, SEEDS[:2])
    with pytest.raises(SlateRLError, match="at least one agent"):
        SeedGroup([])
    with pytest.raises(SlateRLError, match=r"share one method.*'sac_topk_ideal' and 'sac_gems'"):
        SeedGroup([topk[0], *agents("sac_gems", env, SMALL, SEEDS[2:3])])
    with pytest.raises(SlateRLError, match="share one config"):
        SeedGroup([topk[0], *agents("sac_topk_ideal", env, {**SMALL, "tau": 0.01}, SEEDS[2:3])])
    with pytest.raises(SlateRLError, match=r"distinct seeds \(got \[3, 3\]\)"):
        SeedGroup([topk[0], *agents("sac_topk_ideal", env, SMALL, SEEDS[:1])])
    wknn = build_agent("sac_wknn", env, 0, **upstream(env))
    with pytest.raises(SlateRLError, match=r"WkNNAgent.*train its seeds separately"):
        SeedGroup([wknn])  # type: ignore[list-item]
    group = SeedGroup(topk)
    with pytest.raises(SlateRLError, match="one buffer per seed"):
        group.sample([])
    batch = play(env, topk[0], 3, RANDOM)
    with pytest.raises(SlateRLError, match=r"stacked trajectories.*S=2"):
        group.update(batch)


@pytest.mark.parametrize("mode", [RANDOM, EXPLORE, GREEDY])
def test_a_group_plays_each_seed_against_the_users_it_would_meet_alone(mode):
    env, alone_env = (small_env("focused_divpen", episode_length=6, num_items=200) for _ in range(2))
    group, alone = SeedGroup(agents("sac_gems", env, SMALL)), agents("sac_gems", alone_env, SMALL)
    played = play_group(env, group, 5, mode)
    assert played.slates.shape == (len(SEEDS), 5, 7, env.slate_size)
    stream_after = env.stream.get_state()
    for index, agent in enumerate(alone):
        alone_env.reset_random_state()
        own = play(alone_env, agent, 5, mode)
        assert torch.equal(played.slates[index], own.slates), f"seed {index}"
        assert torch.equal(played.clicks[index], own.clicks), f"seed {index}"
        if mode == GREEDY:
            assert played.actions is None
        else:
            torch.testing.assert_close(played.actions[index], own.actions)
        assert torch.equal(alone_env.stream.get_state(), stream_after)  # the stream advanced as for one seed
    assert not torch.equal(played.slates[0], played.slates[1])  # the seeds act differently: not vacuous
