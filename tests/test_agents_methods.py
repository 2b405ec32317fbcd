"""Per-method pieces: B1 pairing, REINFORCE loss, SlateQ epsilon and targets, WkNN refinement and layout, the
replay buffer, the baselines against the simulator's own policies, inference from histories, construction."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from agents_helpers import PlainGRU, mf_table, single_thread, small_env, upstream  # noqa: F401 (autouse fixture)
from slate_rl.agents import EXPLORE, GREEDY, RANDOM, Trajectories, TrajectoryBuffer, build_agent, play
from slate_rl.agents.nets import twin_q
from slate_rl.agents.pairing import first_clicks
from slate_rl.agents.reinforce import discounted_returns
from slate_rl.envs import click_models
from slate_rl.envs.evaluate import evaluate
from slate_rl.envs.policies import RandomPolicy, ShortTermOracle
from slate_rl.errors import SlateRLError


def episodes(env, agent, num: int = 4, mode: str = EXPLORE) -> Trajectories:
    traj = play(env, agent, num, mode)
    return traj.select(torch.arange(num))


# ---------------------------------------------------------------- shared pieces
def test_first_click_pairing_b1():
    slates = torch.tensor([[[1, 2, 3], [4, 5, 6], [7, 8, 9]]])  # obs_0, obs_1, obs_2 of one trajectory (H = 2)
    clicks = torch.tensor([[[0, 1, 1], [0, 0, 0], [1, 0, 1]]])
    items, has = first_clicks(slates, clicks, reference_pairing=False)  # transition t <- obs_{t+1}
    assert items.tolist() == [[4, 7]] and has.tolist() == [[False, True]]
    items, has = first_clicks(slates, clicks, reference_pairing=True)  # transition t <- obs_t (reference)
    assert items.tolist() == [[2, 4]] and has.tolist() == [[True, False]]


def test_discounted_returns():
    rewards = torch.tensor([[1.0, 0.0, 2.0, 3.0]])
    expected = [1 + 0.8**2 * 2 + 0.8**3 * 3, 0.8 * 2 + 0.8**2 * 3, 2 + 0.8 * 3, 3.0]
    torch.testing.assert_close(discounted_returns(rewards, 0.8), torch.tensor([expected]))


def test_buffer_ring_sampling_and_state():
    buffer = TrajectoryBuffer(5, horizon=3, slate_size=2, num_items=50, action_dim=1)
    gen = torch.Generator().manual_seed(0)
    assert buffer.sample(2, gen) is None
    for k in range(7):  # 7 single trajectories into 5 slots: the two oldest are overwritten
        buffer.add(Trajectories(torch.full((1, 4, 2), k), torch.zeros(1, 4, 2), torch.full((1, 3, 1), float(k))))
    assert len(buffer) == 5 and sorted(buffer.slates[:, 0, 0].tolist()) == [2, 3, 4, 5, 6]
    batch = buffer.sample(5, gen)
    assert sorted(batch.slates[:, 0, 0].tolist()) == [2, 3, 4, 5, 6]  # without replacement
    assert batch.slates.dtype == torch.long and batch.clicks.dtype == torch.float32
    other = TrajectoryBuffer(5, horizon=3, slate_size=2, num_items=50, action_dim=1)
    other.load_state_dict(buffer.state_dict())
    assert torch.equal(other.slates, buffer.slates) and other.position == buffer.position


# ---------------------------------------------------------------- baselines
def test_random_and_oracle_reproduce_the_simulators_policies():
    env = small_env()
    for method, policy in (
        ("random", RandomPolicy(env.num_items, env.slate_size, seed=7)),
        ("short_term_oracle", ShortTermOracle(env.slate_size)),
    ):
        agent = build_agent(method, env, 7)
        env.reset_random_state()
        ours = play(env, agent, 30, GREEDY).returns
        reference = evaluate(env, policy, 30, reseed=True).returns
        torch.testing.assert_close(ours, reference)
    slates = build_agent("random", env, 3).act({"slate": torch.zeros(500, 10, dtype=torch.long)}, GREEDY)[0]
    assert all(len(set(row.tolist())) == 10 for row in slates)


# ---------------------------------------------------------------- REINFORCE
def test_reinforce_loss_and_gradients_match_plain_computation():
    env = small_env(episode_length=10)
    agent = build_agent("reinforce_softmax", env, 1)
    batch = episodes(env, agent, 1, RANDOM)
    plain = PlainGRU(agent.beliefs.encoders["actor"])
    policy = [p.detach().clone().requires_grad_() for p in agent.policy.parameters()]
    states = plain(batch.slates[:, :-1], batch.clicks[:, :-1])[0]
    logits = F.linear(torch.relu(F.linear(states, policy[0], policy[1])), policy[2], policy[3])
    pi = torch.softmax(logits, -1)
    rewards = batch.rewards[0]
    loss = 0.0
    for t in range(10):
        clicked = batch.clicks[0, t + 1].nonzero()
        if len(clicked):
            item = batch.slates[0, t + 1, clicked[0, 0]]
            g = sum(0.8 ** (k - t) * rewards[k] for k in range(t, 10))
            loss = loss - g * torch.log(1 - (1 - pi[t, item]) ** 10 + 1e-6)
    grads = torch.autograd.grad(loss, [*policy, *plain.parameters()])
    captured = {}
    step = agent.optimizer.step
    agent.optimizer.step = lambda: (captured.update(g=[p.grad.clone() for p in agent.parameters()]), step())
    value = agent.update(batch)["loss"]
    torch.testing.assert_close(value, loss.detach(), rtol=1e-5, atol=1e-5)
    mine = dict(zip([n for n, _ in agent.named_parameters()], captured["g"], strict=False))
    for name, ref in zip(["policy.weight1", "policy.bias1", "policy.weight2", "policy.bias2"], grads[:4], strict=True):
        torch.testing.assert_close(mine[name], ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(mine["beliefs.encoders.actor.items"], grads[4], rtol=1e-4, atol=1e-5)


def test_reinforce_slates():
    env = small_env()
    agent = build_agent("reinforce_softmax", env, 2)
    states = torch.randn(1, 300, 20, generator=torch.Generator().manual_seed(0))
    sampled, _ = agent.choose(states, EXPLORE, 0)
    assert sampled.shape == (300, 10)
    greedy, _ = agent.choose(states, GREEDY, 0)
    probs = torch.softmax(agent.policy(states[0]), -1)
    assert torch.equal(greedy, probs.topk(10).indices)


# ---------------------------------------------------------------- SlateQ
def test_slateq_epsilon_schedule():
    env = small_env()
    agent = build_agent("slateq", env, 1)
    assert float(agent.epsilon(0.0)) == pytest.approx(1.0)
    assert float(agent.epsilon(2000.0)) == pytest.approx(0.01 + 0.99 * math.exp(-2), rel=1e-5)
    assert float(agent.epsilon(5000.0)) == pytest.approx(0.0167, abs=1e-3)
    # early on every slate is random (epsilon ~ 1), late almost none
    obs, _ = env.reset(200)
    agent.start(200)
    relevance_greedy, _ = agent.act(obs, GREEDY)
    agent.start(200)
    explore_late, _ = agent.act(obs, EXPLORE, episode=100_000)
    assert (explore_late == relevance_greedy).all(1).float().mean() > 0.95


@pytest.mark.parametrize("batch_divpen", [False, True])
def test_slateq_targets_match_a_per_row_computation(batch_divpen):
    env = small_env(diversity_penalty=3.0, click_model="mixPBM")
    agent = build_agent("slateq", env, 4, overrides={"batch_divpen": batch_divpen})
    with torch.no_grad():
        agent.q_target_bias2.add_(5.0)  # positive values: the next slate follows the relevances
    gen = torch.Generator().manual_seed(0)
    users = torch.rand(6, 20, generator=gen)
    users[:3] = 0.0
    users[:3, :2] = 0.5**0.5  # users of a single topic: their next slate repeats it (diversity penalty)
    states = torch.randn(6, 20, generator=gen)
    values = agent.next_slate_values(states, users)
    with torch.no_grad():
        q = agent.target_q(states)
    gamma_pbm = env.propensities[:, env.slate_size]
    penalised = []
    for row in range(6):
        rel = env.item_relevances(user_state=users[row : row + 1])[0]
        slate = (rel * q[row]).topk(10).indices
        penalised.append(bool(torch.bincount(env.item_topics[slate], minlength=10).max() >= 4))
    assert any(penalised) and not all(penalised)
    for row in range(6):
        rel = env.item_relevances(user_state=users[row : row + 1])[0]
        slate = (rel * q[row]).topk(10).indices
        probs = rel[slate] * gamma_pbm  # position-based: P_m = rel * E_m
        if penalised[row] or batch_divpen:  # Q6: the reference decides once for the whole batch
            probs = probs / 3.0
        torch.testing.assert_close(values[row], (probs * q[row, slate]).sum(), rtol=1e-5, atol=1e-6)


def test_slateq_update_regresses_clicked_items_on_targets():
    env = small_env(episode_length=8)
    agent = build_agent("slateq", env, 5)
    batch = episodes(env, agent, 3, RANDOM)
    assert batch.privileged.shape == (3, 8, 20)
    beliefs = agent.beliefs.encode(batch.slates, batch.clicks)[0].detach()  # h_0 .. h_8
    states, nxt = beliefs[:, :-1].reshape(-1, 20), beliefs[:, 1:].reshape(-1, 20)
    items, has = first_clicks(batch.slates, batch.clicks, reference_pairing=False)
    mask = has.reshape(-1)
    with torch.no_grad():
        q = agent.q(states).gather(1, items.reshape(-1, 1)).squeeze(1)
        # the episode's end is a truncation: every transition bootstraps, the last from h_8 (the final observation)
        y = 1 + 0.8 * agent.next_slate_values(nxt, batch.privileged.reshape(-1, 20))
    expected = (q - y)[mask].pow(2).mean()
    loss = agent.update(batch)["loss"]
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def test_slateq_relevance_options():
    env = small_env()
    fixed, reference = (
        build_agent("slateq", env, 1),
        build_agent("slateq", env, 1, overrides={"reference_relevances": True}),
    )
    env.reset(5)
    env.bored[:, 3] = True
    torch.testing.assert_close(fixed.privileged_record(env), env.effective_user())
    torch.testing.assert_close(reference.privileged_record(env), env.user)
    with pytest.raises(SlateRLError, match="relevances"):
        fixed.recommend(torch.zeros(2, 1, 10, dtype=torch.long), torch.zeros(2, 1, 10))


# ---------------------------------------------------------------- WkNN
@pytest.mark.parametrize("fill", ["candidate", "proto"])
def test_wknn_refinement_equals_brute_force(fill):
    env = small_env()
    table = mf_table(env)
    agent = build_agent("sac_wknn", env, 2, mf_table=table, overrides={"refine_fill": fill})
    assert torch.equal(agent.decoder.item_table, table)  # B2: the given table
    gen = torch.Generator().manual_seed(1)
    states = torch.randn(5, 20, generator=gen)
    proto = agent.action_center + agent.action_scale * (torch.rand(5, 200, generator=gen) * 2 - 1)
    params = [p.detach() for p in agent.q.params()]
    slates = agent.refine(states, proto, params)
    candidates = agent.decoder.candidates(proto)
    for row in range(5):
        chosen = []
        for slot in range(10):
            best, best_value = None, -float("inf")
            for item in candidates[row, slot].tolist():
                filled = [table[i] for i in chosen] + [table[item]]
                rest = range(slot + 1, 10)
                filled += [table[item] if fill == "candidate" else proto[row, 20 * s : 20 * (s + 1)] for s in rest]
                value = twin_q(params, states[row : row + 1], torch.cat(filled).unsqueeze(0))[0, 0]  # Q1
                if value > best_value:
                    best, best_value = item, value
            chosen.append(best)
        assert slates[row].tolist() == chosen


def test_wknn_layout_and_acting_state():
    env = small_env(episode_length=6)
    table = mf_table(env)
    agent = build_agent("sac_wknn", env, 3, mf_table=table)
    batch = episodes(env, agent, 2)
    critic_in = agent.critic_actions(batch).view(2, 6, 10, 20)
    assert torch.equal(critic_in, table[batch.slates[:, 1:]])  # B1 (obs_{t+1}) and B3 (slot-major blocks)
    torch.testing.assert_close(agent.action_center.view(10, 20)[3], (table.max(0).values + table.min(0).values) / 2)
    states = torch.randn(2, 4, 20, generator=torch.Generator().manual_seed(0))
    slates, _ = agent.choose(states, GREEDY, 0)
    proto = agent.policy_action(states[0], GREEDY)
    assert torch.equal(slates, agent.refine(states[1], proto, agent.q.params()))  # B4: critic state, online critic
    assert agent.acting_encoders == ("actor", "critic")


# ---------------------------------------------------------------- inference, construction
@pytest.mark.parametrize("method", ["sac_gems", "sac_topk_mf", "sac_wknn", "reinforce_softmax"])
def test_recommend_from_histories_matches_online_acting(method):
    env = small_env(episode_length=5)
    agent = build_agent(method, env, 6, **upstream(env))
    traj = play(env, agent, 3, GREEDY)
    agent.start(3)
    for t in range(4):
        expected, _ = agent.act({"slate": traj.slates[:, t], "clicks": traj.clicks[:, t]}, GREEDY)
    got = agent.recommend(traj.slates[:, :4], traj.clicks[:, :4])
    assert torch.equal(got, expected)


def test_recommend_slateq_with_relevances_and_oracle():
    env = small_env()
    obs, _ = env.reset(3)
    relevances = env.item_relevances()
    slateq = build_agent("slateq", env, 1)
    slates = slateq.recommend(obs["slate"].unsqueeze(1), obs["clicks"].unsqueeze(1), relevances=relevances)
    assert slates.shape == (3, 10)
    oracle = build_agent("short_term_oracle", env, 1)
    assert (oracle.recommend(obs["slate"].unsqueeze(1), obs["clicks"].unsqueeze(1)) == -1).all()


def test_build_agent_requires_upstream_artifacts():
    env = small_env()
    with pytest.raises(SlateRLError, match="GeMS decoder"):
        build_agent("sac_gems", env, 0)
    with pytest.raises(SlateRLError, match="MF item table"):
        build_agent("sac_topk_mf", env, 0)
    with pytest.raises(SlateRLError, match="unknown method"):
        build_agent("ddpg", env, 0)
    with pytest.raises(SlateRLError, match=r"unknown hyper-parameter\(s\) lr \(--set\); valid ones: alpha, alpha_lr"):
        build_agent("sac_topk_ideal", env, 0, overrides={"lr": 1.0})


def test_acting_copy_shares_the_acting_stream_not_the_weights():
    env = small_env()
    agent = build_agent("sac_topk_ideal", env, 0)
    copy = agent.acting_copy()
    assert copy.act_generator is agent.act_generator and copy.generator is None
    with torch.no_grad():
        agent.policy.bias2.add_(1.0)
    assert not torch.equal(copy.policy.bias2, agent.policy.bias2)


def test_click_model_marginals_used_by_slateq_are_position_based():
    env = small_env(click_model="mixPBM")
    rel = torch.rand(4, 10, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(
        click_models.marginal_click_probabilities(rel, env.propensities), rel * env.propensities[:, 10]
    )
