"""The offline algorithms on hand-made batches: each loss term against a plain computation, the action labels, the
normalised score, and the time alignment of beliefs and labels."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from slate_rl.agents import configure_cpu
from slate_rl.errors import SlateRLError
from slate_rl.offline.actions import embedding_labels, encoder_labels, normalise
from slate_rl.offline.bc import BCAgent, BCConfig, bc_loss
from slate_rl.offline.common import OfflineAgent, OfflineBatch, OfflineConfig
from slate_rl.offline.cql import CQLAgent, CQLConfig
from slate_rl.offline.evaluation import normalised_score
from slate_rl.offline.iql import IQLAgent, IQLConfig
from slate_rl.offline.td3_bc import TD3BCAgent, TD3BCConfig, td3_actor_terms
from slate_rl.offline.training import OfflineData
from slate_rl.rankers.decoders import TopKDecoder

N, R, T, B = 12, 3, 4, 2  # items, slots, steps, episodes
GAMMA = 0.8


@pytest.fixture(autouse=True)
def one_thread():
    configure_cpu()


def hand_made_batch() -> OfflineBatch:
    """Two episodes of four steps, labels inside the box, rewards = clicks on the next observation."""
    rng = np.random.default_rng(3)
    slates = rng.integers(0, N, size=(B, T + 1, R)).astype(np.int16)
    clicks = rng.integers(0, 2, size=(B, T + 1, R)).astype(np.uint8)
    labels = torch.from_numpy(rng.uniform(-0.9, 0.9, size=(B, T, 2))).float()
    return OfflineData(slates, clicks, labels).batch(torch.arange(B))


def agent_of(agent_class: type[OfflineAgent], config: OfflineConfig) -> OfflineAgent:
    table = torch.from_numpy(np.random.default_rng(0).normal(size=(N, 2))).float()
    return agent_class(TopKDecoder(table, R), N, R, config, seed=7, method="test")


def states_of(agent: OfflineAgent, batch: OfflineBatch) -> dict[str, torch.Tensor]:
    """Belief states (B, T+1, H) of every stream, computed without gradient."""
    with torch.no_grad():
        return {k: v.clone() for k, v in agent.encode(batch, agent.streams).items()}


@torch.no_grad()
def q(critic, state: torch.Tensor, action: torch.Tensor, k: int) -> float:
    """Critic k at one state and action, one row at a time."""
    net = critic.q1 if k == 0 else critic.q2
    return float(net(torch.cat([state, action]).unsqueeze(0)))


@torch.no_grad()
def actor_action(agent: OfflineAgent, state: torch.Tensor) -> torch.Tensor:
    """tanh(actor(state)) for one state."""
    return torch.tanh(agent.actor(state.unsqueeze(0))[0])


def test_batch_rewards_are_the_clicks_of_the_next_observation_and_the_last_step_is_done():
    batch = hand_made_batch()
    np.testing.assert_array_equal(batch.rewards.numpy(), batch.clicks[:, 1:].sum(-1).numpy())
    assert batch.not_done[:, :-1].eq(1).all() and batch.not_done[:, -1].eq(0).all()


def test_bc_loss_is_the_mean_squared_distance_to_the_labels():
    batch = hand_made_batch()
    agent = agent_of(BCAgent, BCConfig())
    states = states_of(agent, batch)["actor"]
    expected = np.mean(
        [
            sum((float(actor_action(agent, states[b, t])[j]) - float(batch.actions[b, t, j])) ** 2 for j in range(2))
            for b in range(B)
            for t in range(T)
        ]
    )
    assert float(agent.update(batch)["bc_loss"]) == pytest.approx(expected, rel=1e-5)


def test_td3_bc_critic_loss_uses_smoothed_target_actions_and_no_bootstrap_at_the_horizon():
    batch = hand_made_batch()
    cfg = TD3BCConfig(gamma=GAMMA)
    agent = agent_of(TD3BCAgent, cfg)
    states = states_of(agent, batch)
    noise_generator = torch.Generator()
    noise_generator.set_state(agent.generator.get_state())
    noise = torch.randn(batch.actions.shape, generator=noise_generator) * cfg.policy_noise
    before = copy.deepcopy(agent)
    terms = []
    for b in range(B):
        for t in range(T):
            with torch.no_grad():
                next_action = torch.tanh(before.actor_target(states["actor"][b, t + 1].unsqueeze(0))[0])
            next_action = (next_action + noise[b, t].clamp(-cfg.noise_clip, cfg.noise_clip)).clamp(-1, 1)
            next_q = min(q(before.critic_target, states["critic"][b, t + 1], next_action, k) for k in (0, 1))
            target = float(batch.rewards[b, t]) + (GAMMA * next_q if t < T - 1 else 0.0)
            terms.append(
                sum((q(before.critic, states["critic"][b, t], batch.actions[b, t], k) - target) ** 2 for k in (0, 1))
            )
    out = agent.update(batch)
    assert float(out["critic_loss"]) == pytest.approx(np.mean(terms), rel=1e-5)
    assert float(out["rl_term"]) == 0.0  # the actor waits for policy_freq critic updates
    assert float(agent.update(batch)["bc_term"]) > 0


def test_td3_bc_actor_terms_normalise_q_by_its_mean_size():
    q_policy = torch.tensor([2.0, -4.0, 6.0])
    policy, labels = torch.tensor([[0.5, 0.0]] * 3), torch.tensor([[0.0, 0.0], [0.5, 0.5], [0.5, 0.0]])
    rl, bc = td3_actor_terms(q_policy, policy, labels, alpha=2.5)
    assert float(rl) == pytest.approx(-(2.5 / 4.0) * (4.0 / 3.0))
    assert float(bc) == pytest.approx((0.25 + 0.25 + 0.0) / 3)


def test_iql_value_critic_and_actor_losses():
    batch = hand_made_batch()
    cfg = IQLConfig(gamma=GAMMA, expectile=0.7, beta=3.0, max_weight=5.0)
    agent = agent_of(IQLAgent, cfg)
    states = states_of(agent, batch)
    before = copy.deepcopy(agent)
    value_terms, q_terms, actor_terms = [], [], []
    for b in range(B):
        for t in range(T):
            s_c, a = states["critic"][b, t], batch.actions[b, t]
            q_min = min(q(before.critic_target, s_c, a, k) for k in (0, 1))
            with torch.no_grad():
                v = float(before.value(s_c.unsqueeze(0)))
                next_v = float(before.value(states["critic"][b, t + 1].unsqueeze(0)))
            u = q_min - v
            value_terms.append((0.7 if u >= 0 else 0.3) * u * u)
            target = float(batch.rewards[b, t]) + (GAMMA * next_v if t < T - 1 else 0.0)
            q_terms.append(sum((q(before.critic, s_c, a, k) - target) ** 2 for k in (0, 1)))
            policy = actor_action(before, states["actor"][b, t])
            actor_terms.append(min(math.exp(3.0 * u), 5.0) * float((policy - a).pow(2).sum()))
    out = agent.update(batch)
    assert float(out["value_loss"]) == pytest.approx(np.mean(value_terms), rel=1e-4)
    assert float(out["q_loss"]) == pytest.approx(np.mean(q_terms), rel=1e-5)
    assert float(out["actor_loss"]) == pytest.approx(np.mean(actor_terms), rel=1e-4)


def test_cql_td_loss_conservative_term_and_actor_loss():
    batch = hand_made_batch()
    cfg = CQLConfig(gamma=GAMMA, alpha=0.5, n_actions=3)
    agent = agent_of(CQLAgent, cfg)
    states = states_of(agent, batch)
    draws = torch.Generator()
    draws.set_state(agent.generator.get_state())
    uniform = torch.rand(3, *batch.actions.shape, generator=draws) * 2 - 1
    before = copy.deepcopy(agent)
    td_terms, penalty = [], 0.0
    for k in (0, 1):
        per_state = []
        for b in range(B):
            for t in range(T):
                s_c, s_a = states["critic"][b, t], states["actor"][b, t]
                policy = actor_action(before, s_a)
                sampled = [q(before.critic, s_c, uniform[j, b, t], k) for j in range(3)]
                sampled.append(q(before.critic, s_c, policy, k))
                soft_max = math.log(sum(math.exp(v) for v in sampled) / len(sampled))
                per_state.append(soft_max - q(before.critic, s_c, batch.actions[b, t], k))
        penalty += float(np.mean(per_state))
    for b in range(B):
        for t in range(T):
            next_action = actor_action(before, states["actor"][b, t + 1])
            next_q = min(q(before.critic_target, states["critic"][b, t + 1], next_action, k) for k in (0, 1))
            target = float(batch.rewards[b, t]) + (GAMMA * next_q if t < T - 1 else 0.0)
            td_terms.append(
                sum((q(before.critic, states["critic"][b, t], batch.actions[b, t], k) - target) ** 2 for k in (0, 1))
            )
    out = agent.update(batch)
    assert float(out["td_loss"]) == pytest.approx(np.mean(td_terms), rel=1e-5)
    assert float(out["conservative_term"]) == pytest.approx(0.5 * penalty, rel=1e-4, abs=1e-6)
    # the actor maximises the stepped critic at its own (pre-step) actions
    actor_values = [
        min(q(agent.critic, states["critic"][b, t], actor_action(before, states["actor"][b, t]), k) for k in (0, 1))
        for b in range(B)
        for t in range(T)
    ]
    assert float(out["actor_loss"]) == pytest.approx(-np.mean(actor_values), rel=1e-4)


def test_belief_for_a_t_sees_observations_up_to_t_only():
    """Labels that are a function of the slate at t + 1 cannot be predicted on new episodes (BC only memorises its
    training episodes), while the same labels read from the slate at t are learned: the belief is aligned."""
    items, slots, steps, episodes = 30, 3, 8, 512
    rng = np.random.default_rng(0)
    slates = rng.integers(0, items, size=(episodes, steps + 1, slots)).astype(np.int16)
    clicks = rng.integers(0, 2, size=(episodes, steps + 1, slots)).astype(np.uint8)

    def held_out_loss(first_item: np.ndarray) -> tuple[float, float]:
        labels = torch.from_numpy(2 * first_item / (items - 1) - 1).float().unsqueeze(-1)
        train = OfflineData(slates[:256], clicks[:256], labels[:256])
        held = OfflineData(slates[256:], clicks[256:], labels[256:]).batch(torch.arange(256))
        decoder = TopKDecoder(torch.linspace(-1, 1, items).unsqueeze(1), 1)
        agent = BCAgent(decoder, items, slots, BCConfig(lr=3e-3, batch_episodes=32), 0, "bc")
        for _ in range(300):
            agent.update(train.sample(32, agent.generator))
        with torch.no_grad():
            states = agent.encode(held, ("actor",), last=False)["actor"]
            return float(bc_loss(agent.policy(states), held.actions)), float(held.actions.var())

    future, variance = held_out_loss(slates[:, 1:, 0])  # a_t = f(slate of o_{t+1}): the slate it produced
    assert future > 0.9 * variance
    visible, variance = held_out_loss(slates[:, :-1, 0])  # a control: the same function of o_t
    assert visible < 0.1 * variance


def test_encoder_labels_read_the_slate_each_action_produced():
    slates = np.arange(2 * 4 * 3).reshape(2, 4, 3).astype(np.int16)
    clicks = (np.arange(2 * 4 * 3).reshape(2, 4, 3) % 2).astype(np.uint8)

    def encode(s: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu = torch.stack([s.float().sum(1), c.sum(1)], 1)  # a known encoder: slate id sum, number of clicks
        return mu, torch.zeros_like(mu)

    labels = encoder_labels(encode, slates, clicks)
    assert labels.shape == (2, 3, 2)
    np.testing.assert_array_equal(labels[..., 0].numpy(), slates[:, 1:].sum(-1))  # a_t <- slate of o_{t+1}
    np.testing.assert_array_equal(labels[..., 1].numpy(), clicks[:, 1:].sum(-1))
    zero = encoder_labels(encode, slates, clicks, zero_clicks=True)
    assert (zero[..., 1] == 0).all() and torch.equal(zero[..., 0], labels[..., 0])


def test_topk_labels_decode_back_to_their_slates():
    table = torch.eye(20)  # orthogonal items: the mean embedding of a slate scores exactly its items highest
    rng = np.random.default_rng(1)
    slates = np.stack([rng.permutation(20)[:10] for _ in range(6)]).reshape(2, 3, 10).astype(np.int16)
    labels = embedding_labels(table, slates)
    decoded = TopKDecoder(table, 10).decode(labels.reshape(-1, 20)).view(2, 2, 10)
    for e in range(2):
        for t in range(2):
            assert set(decoded[e, t].tolist()) == set(slates[e, t + 1].tolist())


def test_labels_are_normalised_to_the_ranker_box_and_clamped():
    decoder = TopKDecoder(torch.tensor([[0.0, -2.0], [4.0, 2.0]]), 1)  # box: centre (2, 0), half-range (2, 2)
    labels, outside = normalise(torch.tensor([[2.0, 0.0], [4.0, 3.0]]), decoder)
    assert labels.tolist() == [[0.0, 0.0], [1.0, 1.0]] and outside == 0.25


def test_normalised_score_follows_the_d4rl_convention():
    assert normalised_score(30.0, random=30.0, expert=70.0) == 0.0
    assert normalised_score(70.0, random=30.0, expert=70.0) == 100.0
    assert normalised_score(50.0, random=30.0, expert=70.0) == 50.0
    assert normalised_score(20.0, random=30.0, expert=70.0) == -25.0
    # undefined without an expert above random (e.g. a random-only dataset scored against its own best source)
    assert math.isnan(normalised_score(1.0, random=5.0, expert=5.0))
    assert math.isnan(normalised_score(34.0, random=33.89, expert=33.77))


def test_out_of_range_hyper_parameters_are_refused():
    with pytest.raises(SlateRLError, match=r"expectile must lie in \(0, 1\)"):
        IQLConfig(expectile=1.0).validate()
    with pytest.raises(SlateRLError, match=r"gamma must lie in \[0, 1\)"):
        BCConfig(gamma=1.0).validate()


def plain_critic(critic, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """The critics on [state; action] rows, the state repeated for every leading action index."""
    inputs = torch.cat([states.expand(*actions.shape[:-1], states.shape[-1]), actions], -1).flatten(0, -2)
    return torch.cat([critic.q1(inputs), critic.q2(inputs)], 1).view(*actions.shape[:-1], 2)


@pytest.mark.parametrize("agent_class", [BCAgent, TD3BCAgent, IQLAgent, CQLAgent])
def test_update_matches_the_plain_computation(monkeypatch, agent_class):
    """The update as it runs (fused belief encoders, critics sharing each state's projection across actions) gives
    the losses and gradients of the plain one (the GRU cell stepped under autograd, concatenated critic inputs) in
    float64, two updates in a row (TD3+BC's actor learns on the second)."""
    batch = hand_made_batch()
    batch = OfflineBatch(batch.slates, batch.clicks.double(), batch.actions.double(), batch.rewards.double())
    config_class = {BCAgent: BCConfig, TD3BCAgent: TD3BCConfig, IQLAgent: IQLConfig, CQLAgent: CQLConfig}
    fast = agent_of(agent_class, config_class[agent_class](gamma=GAMMA)).double()
    plain = copy.deepcopy(fast)
    monkeypatch.setattr(plain.beliefs, "encode_fused", plain.beliefs.encode)
    if hasattr(plain, "critic"):
        for critic in (plain.critic, plain.critic_target):
            monkeypatch.setattr(critic, "forward", lambda s, a, c=critic: plain_critic(c, s, a))
    for _ in range(2):
        out_fast, out_plain = fast.update(batch), plain.update(batch)
        assert out_fast.keys() == out_plain.keys()
        for name in out_fast:
            torch.testing.assert_close(out_fast[name], out_plain[name], rtol=1e-10, atol=1e-12, msg=name)
        for (name, p_fast), p_plain in zip(fast.named_parameters(), plain.parameters(), strict=True):
            assert (p_fast.grad is None) == (p_plain.grad is None), name
            if p_fast.grad is not None:
                torch.testing.assert_close(p_fast.grad, p_plain.grad, rtol=1e-10, atol=1e-12, msg=name)
            torch.testing.assert_close(p_fast, p_plain, rtol=1e-10, atol=1e-12, msg=name)
