"""The switches that restore the reference code's behaviours (B2, B3, B4 of WkNN; the terminal end of an episode):
each is checked against the reference's rule computed by hand on a tiny input (a decoded slate, a refined slate, a
TD target), and the default (slate-rl's fix) is shown to give something else."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from agents_helpers import PlainGRU, mf_table, plain_sac_losses, single_thread, small_env  # noqa: F401
from slate_rl.agents import GREEDY, RANDOM, Trajectories, TrajectoryBuffer, build_agent, play
from slate_rl.agents.base import LEARNING_SEED_OFFSET
from slate_rl.agents.config import ReinforceConfig, SACConfig, SlateQConfig, WkNNConfig
from slate_rl.agents.pairing import first_clicks
from slate_rl.rankers.decoders import KNNDecoder, decoder_from_payload

R, D, K = 10, 20, 10  # slots, item dimension, neighbours (the paper's WkNN)


# ---------------------------------------------------------------- hand-written reference rules
def q_value(params: list[torch.Tensor], critic: int, state: torch.Tensor, slate_embedding: torch.Tensor) -> float:
    """Critic `critic` (0 = Q1) of packed twin parameters at one state and one flat (R * D) action, by hand."""
    w1, b1, w2, b2 = params
    hidden = w2.shape[1]
    rows = slice(critic * hidden, (critic + 1) * hidden)
    return float(torch.relu(w1[rows] @ torch.cat([state, slate_embedding]) + b1[rows]) @ w2[critic] + b2[critic])


def nearest(table: torch.Tensor, query: torch.Tensor, k: int) -> list[int]:
    """The k items of `table` closest to `query` (squared Euclidean distance), nearest first."""
    return (table - query).pow(2).sum(1).argsort()[:k].tolist()


def slot_query(proto: torch.Tensor, slot: int, interleaved: bool) -> torch.Tensor:
    """Slot `slot`'s query: components slot, slot + R, ... (the reference, B3) or the slot's contiguous block."""
    return proto[slot::R] if interleaved else proto[slot * D : (slot + 1) * D]


def greedy_slate(table, proto, state, params, interleaved: bool = False) -> list[int]:
    """The Wolpertinger refinement as the reference writes it: slot by slot, each of the k nearest items of the
    slot is scored by Q1 of `params` at `state`, the chosen items before it, the candidate in every later slot."""
    chosen: list[int] = []
    for slot in range(R):
        candidates = nearest(table, slot_query(proto, slot, interleaved), K)

        def score(item: int, slot: int = slot) -> float:
            filled = [table[i] for i in chosen] + [table[item]] * (R - slot)
            return q_value(params, 0, state, torch.cat(filled))

        chosen.append(max(candidates, key=score))
    return chosen


def wknn(env, seed: int = 4, **switches):
    return build_agent("sac_wknn", env, seed, mf_table=mf_table(env), overrides={"batch_size": 2, **switches})


def perturb_targets(agent, seed: int = 0) -> None:
    """Make the target critics differ from the online ones (as they do after some training)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for target in agent.target_params():
            target.add_(0.3 * torch.randn(target.shape, generator=gen))


def random_protos(agent, num: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return agent.action_center + agent.action_scale * (torch.rand(num, agent.action_dim, generator=gen) * 2 - 1)


# ---------------------------------------------------------------- the switch lists
def test_every_agent_config_lists_its_reference_switches():
    for config in (SACConfig, WkNNConfig, SlateQConfig, ReinforceConfig):
        fields = {field.name: field for field in dataclasses.fields(config)}
        assert all(fields[name].type == "bool" for name in config.REFERENCE_SWITCHES)
        named = {name for name in fields if name.startswith("reference_") or name == "batch_divpen"}
        assert set(config.REFERENCE_SWITCHES) == named
    assert WkNNConfig.REFERENCE_SWITCHES[: len(SACConfig.REFERENCE_SWITCHES)] == SACConfig.REFERENCE_SWITCHES
    assert {"reference_item_table", "reference_knn_layout", "reference_refinement"} < set(WkNNConfig.REFERENCE_SWITCHES)
    assert (
        "reference_terminal_end" in SACConfig.REFERENCE_SWITCHES
        and "reference_terminal_end" in SlateQConfig.REFERENCE_SWITCHES
    )
    assert ReinforceConfig.REFERENCE_SWITCHES == ("reference_pairing",)
    # the new switches default to slate-rl's fixed behaviour
    assert not any(
        getattr(WkNNConfig(), name) for name in WkNNConfig.REFERENCE_SWITCHES if name != "reference_temperature"
    )


# ---------------------------------------------------------------- B2: the kNN item table
def test_reference_item_table_is_a_frozen_copy_of_the_critic_beliefs_random_table():
    env = small_env(episode_length=4)
    agent = wknn(env, seed=7, reference_item_table=True)
    # the reference's table: the critic belief's initial N(0, 1) table, the learning generator's first draw
    initial = torch.randn(env.num_items, D, generator=torch.Generator().manual_seed(7 + LEARNING_SEED_OFFSET))
    assert torch.equal(agent.beliefs.encoder("critic").items.detach(), initial)
    assert torch.equal(agent.decoder.item_table, initial)
    center = (initial.max(0).values + initial.min(0).values) / 2
    torch.testing.assert_close(agent.action_center.view(R, D), center.expand(R, D))  # its box, slot-major
    protos = random_protos(agent, 3, seed=1)
    by_hand = [[nearest(initial, slot_query(proto, slot, False), 1)[0] for slot in range(R)] for proto in protos]
    assert agent.decoder.decode(protos).tolist() == by_hand
    default = wknn(env, seed=7)
    assert torch.equal(default.decoder.item_table, mf_table(env))  # the fix: the given (MF) table
    assert default.decoder.decode(protos).tolist() != by_hand
    # frozen: training moves the belief's table, not the kNN copy
    agent.update(play(env, agent, 2, RANDOM).select(torch.arange(2)))
    assert not torch.equal(agent.beliefs.encoder("critic").items.detach(), initial)
    assert torch.equal(agent.decoder.item_table, initial)


# ---------------------------------------------------------------- B3: the proto-action layout
def test_reference_knn_layout_reads_slot_r_from_components_r_r_plus_R_and_so_on():
    table = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 2.0]])
    proto = torch.tensor([[1.0, 0.0, 2.0, 0.9, 0.1, 2.0]])  # R = 3 slots of D = 2
    # interleaved: slot 0 = (a0, a3) = (1, .9) -> item 3, slot 1 = (a1, a4) = (0, .1) -> 0, slot 2 = (2, 2) -> 4
    interleaved = KNNDecoder(table, slate_size=3, k=1, interleaved=True)
    assert interleaved.decode(proto).tolist() == [[3, 0, 4]]
    # slot-major: slot 0 = (1, 0) -> item 1, slot 1 = (2, .9) -> 3, slot 2 = (.1, 2) -> 2
    assert KNNDecoder(table, slate_size=3, k=1).decode(proto).tolist() == [[1, 3, 2]]
    slot_major_box = KNNDecoder(table, 3, k=1).action_center
    torch.testing.assert_close(interleaved.action_center, slot_major_box)  # the box stays slot-major
    restored = decoder_from_payload(interleaved.save_payload())
    assert isinstance(restored, KNNDecoder) and restored.decode(proto).tolist() == [[3, 0, 4]]


def test_reference_knn_layout_in_the_agent():
    env = small_env(episode_length=4)
    agent, default = wknn(env, reference_knn_layout=True), wknn(env)
    torch.testing.assert_close(agent.action_center, default.action_center)
    protos = random_protos(agent, 2, seed=2)
    table = mf_table(env)
    for row, proto in enumerate(protos):
        for slot in range(R):
            assert agent.decoder.candidates(protos)[row, slot].tolist() == nearest(table, proto[slot::R], K)
    assert not torch.equal(agent.decoder.candidates(protos), default.decoder.candidates(protos))


# ---------------------------------------------------------------- B4: the refinement's critic and state
def test_reference_refinement_when_acting_uses_the_target_q1_at_the_actor_state():
    env = small_env(episode_length=4)
    agent, default = wknn(env, reference_refinement=True), wknn(env)
    assert agent.acting_encoders == ("actor",) and default.acting_encoders == ("actor", "critic")
    for each in (agent, default):
        perturb_targets(each)
    gen = torch.Generator().manual_seed(3)
    actor_states, critic_states = torch.randn(2, 3, 20, generator=gen)
    table, protos = agent.decoder.item_table, agent.policy_action(actor_states, GREEDY)
    targets = [p.detach() for p in agent.target_params()]
    slates, _ = agent.choose(actor_states.unsqueeze(0), GREEDY, 0)
    by_hand = [greedy_slate(table, protos[row], actor_states[row], targets) for row in range(3)]
    assert slates.tolist() == by_hand
    fixed, _ = default.choose(torch.stack([actor_states, critic_states]), GREEDY, 0)
    online = [p.detach() for p in default.q.params()]
    assert fixed.tolist() == [greedy_slate(table, protos[row], critic_states[row], online) for row in range(3)]
    assert fixed.tolist() != by_hand


def test_reference_refinement_in_the_critic_targets_uses_the_actor_state():
    env = small_env(episode_length=4)
    agent, default = wknn(env, reference_refinement=True), wknn(env)
    for each in (agent, default):
        perturb_targets(each)
    gen = torch.Generator().manual_seed(4)
    next_actor, next_critic = torch.randn(2, 3, 20, generator=gen)
    protos = random_protos(agent, 3, seed=5)
    table, targets = agent.decoder.item_table, [p.detach() for p in agent.target_params()]

    def value(state_for_refinement: torch.Tensor, row: int) -> float:
        # min of both target critics at the critic state, for the slate refined at the given state
        slate = greedy_slate(table, protos[row], state_for_refinement[row], targets)
        embedded = table[slate].flatten()
        return min(q_value(targets, k, next_critic[row], embedded) for k in range(2))

    reference = torch.tensor([value(next_actor, row) for row in range(3)])
    fixed = torch.tensor([value(next_critic, row) for row in range(3)])
    torch.testing.assert_close(agent.target_values(next_critic, protos, next_actor), reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(default.target_values(next_critic, protos, next_actor), fixed, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(reference, fixed)


# ---------------------------------------------------------------- the end of an episode
def test_the_buffer_keeps_each_episodes_final_observation():
    env = small_env(episode_length=4)
    agent = wknn(env)
    final: dict[str, torch.Tensor] = {}

    def keep_last(t, obs, info, action) -> None:
        if t == env.episode_length:
            final.update(slate=obs["slate"].clone(), clicks=obs["clicks"].clone())

    traj = play(env, agent, 3, RANDOM, on_step=keep_last)
    buffer = TrajectoryBuffer(8, env.episode_length, env.slate_size, env.num_items)
    stored = buffer.get(buffer.add(traj))
    assert stored.slates.shape[1] == env.episode_length + 1
    assert torch.equal(stored.slates[:, -1], final["slate"]) and torch.equal(stored.clicks[:, -1], final["clicks"])


def sac_batch(env, num: int = 3) -> tuple[Trajectories, Trajectories]:
    """Random-action episodes, and a copy whose final observation shows other items (same clicks: same rewards)."""
    collector = build_agent("sac_topk_ideal", env, 0)
    batch = play(env, collector, num, RANDOM).select(torch.arange(num))
    slates = batch.slates.clone()
    slates[:, -1] = (slates[:, -1] + 1) % env.num_items
    return batch, Trajectories(slates, batch.clicks, batch.actions)


@pytest.mark.parametrize("terminal", [True, False])
def test_sac_td_target_at_the_end_of_an_episode(terminal):
    env = small_env(episode_length=4)
    batch, other_end = sac_batch(env)

    def agent():
        return build_agent("sac_topk_ideal", env, 3, overrides={"batch_size": 3, "reference_terminal_end": terminal})

    fresh = agent()
    rows = 3 * env.episode_length
    noise = torch.randn(2, rows, fresh.action_dim, generator=torch.Generator().set_state(fresh.generator.get_state()))
    plain = plain_sac_losses(fresh, batch, noise)
    target, rewards = plain["target"].view(3, -1), batch.rewards
    if terminal:  # the reference: y = r at the last step, no bootstrap
        assert torch.equal(target[:, -1], rewards[:, -1])
    else:  # a truncation: y = r + gamma * soft value at h_H, the belief after the final observation
        assert (target[:, -1] != rewards[:, -1]).all()
    torch.testing.assert_close(fresh.update(batch)["q_loss"], plain["q_loss"], rtol=1e-5, atol=1e-5)
    # the final observation enters the loss only through the truncated episode's bootstrap
    same = torch.equal(agent().update(batch)["q_loss"], agent().update(other_end)["q_loss"])
    assert same == terminal


def test_sac_targets_differ_only_at_the_last_step():
    env = small_env(episode_length=4)
    batch, _ = sac_batch(env)
    targets = []
    for terminal in (True, False):
        agent = build_agent("sac_topk_ideal", env, 3, overrides={"reference_terminal_end": terminal})
        noise = torch.randn(2, 12, agent.action_dim, generator=torch.Generator().manual_seed(9))
        targets.append(plain_sac_losses(agent, batch, noise)["target"].view(3, -1))
    torch.testing.assert_close(targets[0][:, :-1], targets[1][:, :-1], rtol=0, atol=0)
    assert not torch.equal(targets[0][:, -1], targets[1][:, -1])


@pytest.mark.parametrize("terminal", [True, False])
def test_slateq_td_target_at_the_end_of_an_episode(terminal):
    env = small_env(episode_length=6)
    agent = build_agent("slateq", env, 5, overrides={"batch_size": 10, "reference_terminal_end": terminal})
    batch = play(env, agent, 10, RANDOM).select(torch.arange(10))
    items, has = first_clicks(batch.slates, batch.clicks, reference_pairing=False)
    assert has[:, -1].any()  # some last transitions have a click, so their target matters
    with torch.no_grad():
        beliefs = PlainGRU(agent.beliefs.encoder("critic"))(batch.slates, batch.clicks)  # h_0 .. h_6 (nn.GRU)
        states, next_states = beliefs[:, :-1].reshape(-1, 20), beliefs[:, 1:].reshape(-1, 20)
        q = agent.q(states).gather(1, items.reshape(-1, 1)).squeeze(1)
        truncated = 1.0 + 0.8 * agent.next_slate_values(next_states, batch.privileged.reshape(-1, 20)).view(10, 6)
    y = truncated.clone()
    if terminal:  # the reference: the last transition's target is the click alone
        y[:, -1] = 1.0
    else:  # a truncation: the last transition bootstraps from h_6, the belief after the final observation
        assert (y[:, -1] != 1.0).all()
    mask = has.reshape(-1)
    expected = (q - y.reshape(-1))[mask].pow(2).mean()
    torch.testing.assert_close(agent.update(batch)["loss"], expected, rtol=1e-5, atol=1e-6)
