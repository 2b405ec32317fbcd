"""SAC family: the update equals an independent computation (nn.GRU encoders, separate critics); action boxes;
temperature; belief encoders (plain and fused) against nn.GRU."""

from __future__ import annotations

import pytest
import torch

from agents_helpers import PlainGRU, mf_table, plain_sac_losses, single_thread, small_env  # noqa: F401
from slate_rl.agents import build_agent
from slate_rl.agents.base import EXPLORE, GREEDY
from slate_rl.agents.belief import BeliefEncoders
from slate_rl.agents.config import SACConfig
from slate_rl.agents.rollout import play
from slate_rl.agents.sac import SACAgent
from slate_rl.rankers.decoders import TopKDecoder


def make_agent(env, seed: int = 3, **overrides) -> SACAgent:
    return SACAgent(
        TopKDecoder(env.item_embeddings), env.num_items, env.slate_size, SACConfig(**overrides), seed, "sac_topk_ideal"
    )


def collected_batch(env, agent, num: int = 6):
    traj = play(env, agent, num, EXPLORE)
    return traj.select(torch.arange(num))


@pytest.mark.parametrize("fused", [False, True])
def test_belief_encoders_match_nn_gru_outputs_and_gradients(fused):
    gen = torch.Generator().manual_seed(0)
    enc = BeliefEncoders(("actor", "critic"), 50, 4, gen, item_dim=6, hidden_dim=5)
    slates = torch.randint(50, (3, 7, 4), generator=gen)
    clicks = torch.randint(2, (3, 7, 4), generator=gen)
    weights = torch.randn(2, 3, 7, 5, generator=gen)
    out = (enc.encode_fused if fused else enc.encode)(slates, clicks)
    (out * weights).sum().backward()
    for g, name in enumerate(("actor", "critic")):
        plain = PlainGRU(enc.encoders[name])
        ref = plain(slates, clicks)
        torch.testing.assert_close(out[g], ref, rtol=1e-5, atol=1e-6)
        (ref * weights[g]).sum().backward()
        mine = enc.encoders[name]
        torch.testing.assert_close(mine.items.grad, plain.items.grad, rtol=1e-4, atol=1e-6)
        for key in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
            torch.testing.assert_close(getattr(mine, key).grad, getattr(plain.gru, key).grad, rtol=1e-4, atol=1e-6)


def test_online_step_matches_sequence_encoding():
    gen = torch.Generator().manual_seed(1)
    enc = BeliefEncoders(("actor", "critic"), 30, 3, gen)
    slates = torch.randint(30, (4, 5, 3), generator=gen)
    clicks = torch.randint(2, (4, 5, 3), generator=gen)
    full = enc.encode(slates, clicks).detach()
    enc.start(4, ("critic",))
    for t in range(5):
        state = enc.step(slates[:, t], clicks[:, t], ("critic",))
        torch.testing.assert_close(state[0], full[1, :, t], rtol=1e-5, atol=1e-6)


def assert_update_equals_plain(agent, batch, **plain_options) -> None:
    """One update gives the independent plain computation's losses and gradients (critic step, then actor, encoders
    and temperature)."""
    rows = batch.slates.shape[0] * (batch.slates.shape[1] - 1)
    noise = torch.randn(2, rows, agent.action_dim, generator=torch.Generator().set_state(agent.generator.get_state()))
    plain = plain_sac_losses(agent, batch, noise, **plain_options)
    log_alpha = agent.temperature.log_alpha.detach().clone().requires_grad_()
    weight = log_alpha.exp() if agent.config.reference_temperature else log_alpha
    (-(weight * (plain["log_prob"] + agent.temperature.target_entropy)).mean()).backward()

    captured = {}

    def capture(optimizer, key):
        original = optimizer.step

        def step(*args, **kwargs):
            captured[key] = [p.grad.clone() for group in optimizer.param_groups for p in group["params"]]
            return original(*args, **kwargs)

        optimizer.step = step

    capture(agent.q_optimizer, "q")
    capture(agent.optimizer, "rest")
    metrics = {name: value.item() for name, value in agent.update(batch).items()}
    torch.testing.assert_close(torch.tensor(metrics["q_loss"]), plain["q_loss"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.tensor(metrics["pi_loss"]), plain["pi_loss"], rtol=1e-5, atol=1e-5)
    critic_q, critic_enc = plain["critic_grads"][:4], plain["critic_grads"][4:]
    for mine, ref in zip(captured["q"], critic_q, strict=False):
        torch.testing.assert_close(mine, ref, rtol=1e-4, atol=1e-5)
    n_actor = len(plain["actor_grads"])
    for mine, ref in zip(captured["rest"][:n_actor], plain["actor_grads"], strict=False):
        torch.testing.assert_close(mine, ref, rtol=1e-4, atol=1e-5)
    for mine, ref in zip(captured["rest"][n_actor : n_actor + 5], critic_enc, strict=False):
        torch.testing.assert_close(mine, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(captured["rest"][-1], log_alpha.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("reference_temperature", [True, False])
def test_update_equals_plain_computation(reference_temperature):
    env = small_env(episode_length=12)
    agent = make_agent(env, reference_temperature=reference_temperature)
    assert_update_equals_plain(agent, collected_batch(env, agent))


def test_wknn_update_equals_plain_computation():
    env = small_env(episode_length=12)
    agent = build_agent("sac_wknn", env, 2, mf_table=mf_table(env))
    batch = collected_batch(env, agent)
    assert_update_equals_plain(agent, batch, stored=agent.critic_actions(batch), target_values=agent.target_values)


def test_actions_stay_in_the_box_and_warmup_uses_its_central_half():
    env = small_env()
    agent = make_agent(env)
    center, scale = agent.action_center, agent.action_scale
    agent.start(64)
    obs, _ = env.reset(64)
    for mode in (EXPLORE, GREEDY):
        _, actions = agent.act(obs, mode)
        assert ((actions - center).abs() <= scale + 1e-6).all()
    _, warm = agent.random_action(4096)
    assert ((warm - center).abs() <= scale / 2 + 1e-6).all()
    assert ((warm - center).abs() > 0.45 * scale).any()


def test_reference_temperature_schedule():
    env = small_env(episode_length=8)
    agent = make_agent(env)
    assert float(agent.temperature.alpha) == pytest.approx(0.2) and float(agent.temperature.log_alpha.detach()) == 0.0
    batch = collected_batch(env, agent)
    values = {name: value.item() for name, value in agent.update(batch).items()}
    assert values["alpha"] == pytest.approx(0.2)  # the initial alpha serves the first update only
    # first Adam step moves log alpha by lr against the sign of -(log pi + target entropy)
    expected_sign = 1.0 if values["log_prob"] - agent.action_dim > 0 else -1.0
    assert abs(float(agent.temperature.log_alpha.detach()) - expected_sign * 1e-3) < 1e-5
    torch.testing.assert_close(agent.temperature.alpha, agent.temperature.log_alpha.exp().detach())


def test_standard_temperature_starts_at_the_given_alpha():
    env = small_env(episode_length=8)
    agent = make_agent(env, reference_temperature=False)
    torch.testing.assert_close(agent.temperature.log_alpha.detach(), torch.tensor(0.2).log())


def test_polyak_moves_targets_by_tau():
    env = small_env(episode_length=8)
    agent = make_agent(env)
    before = [p.clone() for p in agent.target_params()]
    agent.update(collected_batch(env, agent))
    for old, new, online in zip(before, agent.target_params(), agent.q.params(), strict=True):
        torch.testing.assert_close(new, old + 0.002 * (online.detach() - old))
