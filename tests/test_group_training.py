"""The group trainer runs each of its seeds as `Trainer` runs that seed alone: same training metrics (float32, tight
tolerance), validation returns, checkpoints and test; a seed's periodic state continues alone in a `Trainer`; a
diverging seed leaves the group while the others go on unchanged; fused_update is refused."""

from __future__ import annotations

import io

import pytest
import torch

from agents_helpers import gems_decoder, single_thread, small_env, small_protocol, upstream  # noqa: F401 (autouse)
from slate_rl.agents import BeliefConfig, Hooks, Trainer, build_agent
from slate_rl.agents.group_training import GroupTrainer
from slate_rl.errors import SlateRLError
from slate_rl.safe_load import torch_load

SEEDS = (3, 11, 2024)
SMALL = {"hidden": 32, "batch_size": 4, "belief": BeliefConfig(item_dim=8, hidden_dim=8)}


def agent(method: str, env, seed: int, **overrides):
    kwargs = {**upstream(env), "gems_decoder": gems_decoder(env, seed)}
    return build_agent(method, env, seed, **kwargs, overrides={**SMALL, **overrides})


def protocol(**overrides):
    values = dict(episodes=40, warmup_episodes=10, val_every=10, val_episodes=8, test_episodes=12, save_every=20)
    return small_protocol(**{**values, "parallel_episodes": 5, **overrides})


def recorder(store: dict) -> Hooks:
    """Hooks that keep what a run logs: metrics by episode, validation returns, checkpoints (saved and loaded)."""
    store.update(metrics=[], val=[], ckpt=[])
    return Hooks(
        on_metrics=lambda e, m: store["metrics"].append((e, m)),
        on_validation=lambda e, r: store["val"].append((e, r.clone())),
        on_checkpoint=lambda kind, e, s: store["ckpt"].append((kind, e, round_trip(s))),
    )


def round_trip(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return torch_load(buffer.getvalue(), "resume state")


def alone(method: str, seed: int, prot, **overrides) -> tuple[dict, torch.Tensor, Trainer]:
    env = small_env("focused_divpen", episode_length=6, num_items=200)
    store: dict = {}
    trainer = Trainer(agent(method, env, seed, **overrides), env, prot, recorder(store))
    trainer.fit()
    return store, trainer.test(), trainer


def assert_same_run(grouped: dict, single: dict) -> None:
    """Same metric names at the same episodes; training means within float32 rounding, the rest equal."""
    assert [(e, sorted(m)) for e, m in grouped["metrics"]] == [(e, sorted(m)) for e, m in single["metrics"]]
    for (episode, mine), (_, theirs) in zip(grouped["metrics"], single["metrics"], strict=True):
        for name, value in theirs.items():
            if name.startswith("train/"):
                assert mine[name] == pytest.approx(value, rel=1e-4, abs=1e-5), (episode, name)
            elif name in ("time/updates", "time/episodes"):
                assert mine[name] == value, (episode, name)
    assert [e for e, _ in grouped["val"]] == [e for e, _ in single["val"]]
    for (_, mine_returns), (_, their_returns) in zip(grouped["val"], single["val"], strict=True):
        assert torch.equal(mine_returns, their_returns)
    assert [(kind, e) for kind, e, _ in grouped["ckpt"]] == [(kind, e) for kind, e, _ in single["ckpt"]]


@pytest.mark.parametrize(("method", "overlap"), [("sac_topk_ideal", True), ("sac_gems", False), ("sac_topk_mf", True)])
def test_each_seed_of_a_group_runs_as_it_would_alone(method, overlap):
    prot = protocol(overlap_collection=overlap)
    env = small_env("focused_divpen", episode_length=6, num_items=200)
    stores: dict[int, dict] = {seed: {} for seed in SEEDS}
    trainer = GroupTrainer(
        [agent(method, env, seed) for seed in SEEDS], env, prot, [recorder(stores[seed]) for seed in SEEDS]
    )
    trainer.fit()
    for seed in SEEDS:
        single, single_test, single_trainer = alone(method, seed, prot)
        assert_same_run(stores[seed], single)
        assert len(single["metrics"]) == 4 and "train/q_loss" in single["metrics"][-1][1]  # updates ran: not vacuous
        record = trainer.records[seed]
        assert record.validations == single_trainer.validations
        assert record.best_episode == single_trainer.best_episode
        assert torch.equal(trainer.test(seed), single_test)


def test_a_seeds_periodic_state_continues_alone_as_the_uninterrupted_run():
    prot = protocol()
    env = small_env("focused_divpen", episode_length=6, num_items=200)
    stores: dict[int, dict] = {seed: {} for seed in SEEDS[:2]}
    group = GroupTrainer(
        [agent("sac_topk_ideal", env, seed) for seed in SEEDS[:2]], env, prot, [recorder(stores[s]) for s in SEEDS[:2]]
    )
    group.fit()
    single, single_test, _ = alone("sac_topk_ideal", SEEDS[1], prot)
    state = next(s for kind, e, s in stores[SEEDS[1]]["ckpt"] if kind == "periodic" and e == 20)
    env2 = small_env("focused_divpen", episode_length=6, num_items=200)
    resumed: dict = {}
    trainer = Trainer(agent("sac_topk_ideal", env2, 999), env2, prot, recorder(resumed))
    trainer.load_state_dict(state)
    trainer.fit()
    assert [e for e, _ in resumed["val"]] == [30, 40]
    for (_, mine), (_, theirs) in zip(resumed["val"], single["val"][-2:], strict=True):
        assert torch.equal(mine, theirs)
    assert torch.equal(trainer.test(), single_test)


def test_a_diverging_seed_leaves_the_group_and_the_others_go_on():
    prot = protocol()
    env = small_env("focused_divpen", episode_length=6, num_items=200)
    stores: dict[int, dict] = {seed: {} for seed in SEEDS}
    diverged: list[tuple[int, str]] = []
    trainer = GroupTrainer(
        [agent("sac_topk_ideal", env, seed) for seed in SEEDS],
        env,
        prot,
        [recorder(stores[seed]) for seed in SEEDS],
        on_diverged=lambda seed, message: diverged.append((seed, message)),
    )
    trainer.fit(max_episodes=20)
    with torch.no_grad():
        trainer.group.params["q.weight1"][1].fill_(float("nan"))  # the second seed's critic breaks
    trainer.fit()
    assert [seed for seed, _ in diverged] == [SEEDS[1]]
    assert "diverged by episode 25: train/q_loss" in diverged[0][1]
    assert trainer.seeds == [SEEDS[0], SEEDS[2]] and set(trainer.diverged) == {SEEDS[1]}
    assert [e for e, _ in stores[SEEDS[1]]["val"]] == [10, 20]  # no validation after it left
    for seed in (SEEDS[0], SEEDS[2]):
        single, single_test, _ = alone("sac_topk_ideal", seed, prot)
        assert_same_run(stores[seed], single)
        assert torch.equal(trainer.test(seed), single_test)


def test_fused_update_is_refused_in_a_group():
    env = small_env(episode_length=4)
    with pytest.raises(SlateRLError, match=r"not fused_update.*drop fused_update=true"):
        GroupTrainer([agent("sac_topk_ideal", env, seed, fused_update=True) for seed in SEEDS[:2]], env, protocol())
