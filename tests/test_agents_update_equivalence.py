"""The fused update (`fused_update=true`) equals the plain autograd update: 200 updates in float64 from the same
initial state on the same batches give the same diagnostics at every update and the same parameters, optimiser
states and generators at the end (rtol 1e-8). Small networks (hidden 32, belief 8, 10-step episodes, 200 items)
keep it fast; the arithmetic is the same at the paper's sizes. Also: where the fused update is refused."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from agents_helpers import single_thread, small_env, upstream  # noqa: F401 (autouse fixture)
from slate_rl.agents import RANDOM, BeliefConfig, Trajectories, build_agent, play
from slate_rl.agents.base import Agent
from slate_rl.errors import SlateRLError
from slate_rl.methods import get_method

UPDATES = 200
SMALL = {"hidden": 32, "batch_size": 4, "belief": BeliefConfig(item_dim=8, hidden_dim=8)}

CASES = [
    ("sac_topk_ideal", {}),
    ("sac_topk_ideal", {"auto_entropy": False}),
    ("sac_topk_ideal", {"reference_temperature": False}),
    ("sac_topk_mf", {}),
    ("sac_gems", {}),
    ("sac_gems", {"reference_temperature": False, "auto_entropy": False, "reference_terminal_end": True}),
    ("sac_wknn", {}),
    ("sac_wknn", {"reference_pairing": True, "refine_fill": "proto", "reference_temperature": False}),
    (
        "sac_wknn",
        {
            "reference_item_table": True,
            "reference_knn_layout": True,
            "reference_refinement": True,
            "reference_terminal_end": True,
            "refine_fill": "proto",
        },
    ),
    ("slateq", {}),
    (
        "slateq",
        {"reference_relevances": True, "batch_divpen": True, "reference_pairing": True, "reference_terminal_end": True},
    ),
    ("reinforce_softmax", {}),
    ("reinforce_softmax", {"reference_pairing": True}),
]


def small_agent(method: str, env, switches: dict, fused: bool) -> Agent:
    fields = {field.name for field in dataclasses.fields(get_method(method).load_config())}
    overrides = {key: value for key, value in SMALL.items() if key in fields}
    return build_agent(method, env, 5, **upstream(env), overrides={**overrides, **switches, "fused_update": fused})


def in_float64(batch: Trajectories) -> Trajectories:
    def double(x: torch.Tensor | None) -> torch.Tensor | None:
        return None if x is None else x.double()

    return Trajectories(batch.slates, batch.clicks.double(), double(batch.actions), double(batch.privileged))


def assert_same_state(plain: Agent, fused: Agent) -> None:
    state, other = plain.training_state_dict(), fused.training_state_dict()
    torch.testing.assert_close(state, other, rtol=1e-8, atol=1e-12)


def optimised(agent: Agent) -> list[torch.Tensor]:
    """The parameters the agent's optimisers step."""
    optimizers = [value for value in vars(agent).values() if isinstance(value, torch.optim.Optimizer)]
    return [p for optimizer in optimizers for group in optimizer.param_groups for p in group["params"]]


@pytest.mark.parametrize(("method", "switches"), CASES)
def test_fused_update_equals_plain_update_for_200_updates_in_float64(method, switches):
    env = small_env("focused_divpen", episode_length=10, num_items=200)
    collector = small_agent(method, env, switches, fused=False)
    episodes = play(env, collector, 16, RANDOM)
    plain, fused = (small_agent(method, env, switches, fused).double() for fused in (False, True))
    assert_same_state(plain, fused)
    order = torch.Generator().manual_seed(0)
    for update in range(UPDATES):
        batch = in_float64(episodes.select(torch.randperm(16, generator=order)[: plain.batch_size]))
        expected, got = plain.update(batch), fused.update(batch)
        assert list(got) == list(expected)
        for name, value in expected.items():
            torch.testing.assert_close(got[name], value, rtol=1e-8, atol=1e-12, msg=f"{name} at update {update}")
    assert_same_state(plain, fused)
    initial = small_agent(method, env, switches, fused=False).double()
    for learned, start in zip(optimised(plain), optimised(initial), strict=True):
        assert not torch.equal(learned, start)  # every trained parameter moved: the comparison is not vacuous


def test_fused_update_is_refused_where_it_does_not_apply():
    env = small_env(episode_length=4)
    with pytest.raises(SlateRLError, match=r"'random' has no fused update.*sac_gems"):
        build_agent("random", env, 0, overrides={"fused_update": True})
    agent = build_agent("sac_topk_ideal", env, 0, overrides={"fused_update": True})
    batch = play(env, agent, 3, RANDOM)
    meta = Trajectories(batch.slates.to("meta"), batch.clicks.to("meta"), batch.actions.to("meta"))
    with pytest.raises(SlateRLError, match=r"fused CPU kernels.*meta.*drop fused_update"):
        agent.update(meta)
