"""The training loop: block schedule, validation / checkpoints, exact resume, common random numbers."""

from __future__ import annotations

import dataclasses
import io

import pytest
import torch

from agents_helpers import single_thread, small_env, small_protocol, upstream  # noqa: F401 (autouse fixture)
from slate_rl.agents import Hooks, Trainer, build_agent
from slate_rl.agents.training import _Meter
from slate_rl.errors import SlateRLError
from slate_rl.safe_load import torch_load


def run(method: str, protocol, seed: int = 5, hooks: Hooks | None = None, env=None):
    env = env or small_env()
    return Trainer(build_agent(method, env, seed, **upstream(env)), env, protocol, hooks)


def record_resets(env) -> list[torch.Tensor]:
    """Wrap env.reset to keep the users each reset draws."""
    users: list[torch.Tensor] = []
    original = env.reset

    def reset(n):
        obs, info = original(n)
        users.append(info["user_state"].clone())
        return obs, info

    env.reset = reset
    return users


def round_trip(state):
    """What the stage does: torch.save, then the project's loader (tensors and plain values only)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return torch_load(buffer.getvalue(), "resume state")


def test_block_schedule_and_update_counts():
    protocol = small_protocol(episodes=50, warmup_episodes=22, val_every=25, parallel_episodes=7)
    sizes = []
    metrics = []
    trainer = run(
        "sac_topk_ideal",
        protocol,
        hooks=Hooks(on_progress=lambda e, t: sizes.append(e), on_metrics=lambda e, m: metrics.append((e, m))),
    )
    trainer.fit()
    # blocks stop at the end of the warm-up (22) and at every validation point (25, 50)
    assert sizes == [7, 14, 21, 22, 25, 32, 39, 46, 50]
    assert [e for e, _ in trainer.validations] == [25, 50]
    assert [m["time/updates"] for _, m in metrics] == [3.0, 25.0]  # one update per episode after the warm-up


SAC_DIAGNOSTICS = ("q_loss", "pi_loss", "alpha_loss", "alpha", "q_mean", "log_prob")
DIAGNOSTICS = {
    "sac_topk_ideal": SAC_DIAGNOSTICS,
    "sac_wknn": SAC_DIAGNOSTICS,
    "reinforce_softmax": ("loss", "return", "entropy"),
    "slateq": ("loss", "epsilon", "q_mean", "clicked_share"),
}


@pytest.mark.parametrize("method", sorted(DIAGNOSTICS))
def test_updates_report_named_diagnostics_logged_as_their_means(method):
    env = small_env()
    agent = build_agent(method, env, 5, **upstream(env))
    reported = []
    update = agent.update

    def recorded_update(batch):
        reported.append(update(batch))
        return reported[-1]

    agent.update = recorded_update
    emitted = []
    trainer = Trainer(
        agent,
        env,
        small_protocol(episodes=30, warmup_episodes=10, val_every=30, parallel_episodes=5),
        Hooks(on_metrics=lambda e, m: emitted.append(m)),
    )
    trainer.fit()
    assert all(
        tuple(values) == DIAGNOSTICS[method] and all(v.dim() == 0 for v in values.values()) for values in reported
    )
    (metrics,) = emitted
    assert metrics["time/updates"] == len(reported) > 0
    train = {k: v for k, v in metrics.items() if k.startswith("train/")}
    assert list(train) == [f"train/{name}" for name in DIAGNOSTICS[method]]
    for name in DIAGNOSTICS[method]:
        mean = torch.stack([values[name] for values in reported]).mean()
        assert train[f"train/{name}"] == pytest.approx(float(mean), rel=1e-5, abs=1e-6)


def test_meter_refuses_diagnostics_that_change_names():
    meter = _Meter()
    meter.add({"loss": torch.tensor(1.0), "q_mean": torch.tensor(2.0)})
    meter.add({"loss": torch.tensor(3.0), "q_mean": torch.tensor(4.0)})
    assert {k: v for k, v in meter.emit().items() if k.startswith("train/")} == {"train/loss": 2.0, "train/q_mean": 3.0}
    with pytest.raises(SlateRLError, match="same names at every update"):
        meter.add({"q_mean": torch.tensor(1.0), "loss": torch.tensor(1.0)})


def test_checkpoint_hooks_best_on_strict_improvement_and_periodic():
    calls = []
    protocol = small_protocol(episodes=60, val_every=10, save_every=25, parallel_episodes=5)
    trainer = run(
        "reinforce_softmax", protocol, hooks=Hooks(on_checkpoint=lambda kind, e, state: calls.append((kind, e)))
    )
    trainer.fit()
    periodic = [e for kind, e in calls if kind == "periodic"]
    assert periodic == [25, 50]
    best = [e for kind, e in calls if kind == "best"]
    returns = dict(trainer.validations)
    running = -float("inf")
    expected = []
    for episode, value in trainer.validations:
        if value > running:
            running = value
            expected.append(episode)
    assert best == expected and trainer.best_episode == expected[-1] and returns[expected[-1]] == trainer.best_return


@pytest.mark.parametrize(
    "method, overlap",
    [("sac_gems", True), ("sac_topk_ideal", False), ("sac_wknn", True), ("slateq", True), ("reinforce_softmax", True)],
)
def test_resume_reproduces_the_uninterrupted_run(method, overlap):
    protocol = small_protocol(
        episodes=60, warmup_episodes=20, val_every=20, save_every=30, parallel_episodes=5, overlap_collection=overlap
    )

    def hooks(store):
        return Hooks(
            on_metrics=lambda e, m: store["metrics"].append(
                (e, {k: v for k, v in m.items() if k.startswith("train/")})
            ),
            on_validation=lambda e, r: store["val"].append((e, r.clone())),
            on_checkpoint=lambda kind, e, s: store["ckpt"].append((kind, e, round_trip(s))),
        )

    full = {"metrics": [], "val": [], "ckpt": []}
    trainer = run(method, protocol, hooks=hooks(full))
    trainer.fit()
    full_test = trainer.test()

    periodic = next(state for kind, e, state in full["ckpt"] if kind == "periodic" and e == 30)
    resumed = {"metrics": [], "val": [], "ckpt": []}
    trainer2 = run(method, protocol, seed=999, hooks=hooks(resumed))  # another seed: all must come from the state
    trainer2.load_state_dict(periodic)
    trainer2.fit()
    resumed_test = trainer2.test()
    assert torch.equal(full_test, resumed_test)
    assert trainer2.validations == trainer.validations
    assert [e for e, _ in resumed["val"]] == [40, 60]
    for (e1, r1), (e2, r2) in zip(full["val"][-2:], resumed["val"], strict=False):
        assert e1 == e2 and torch.equal(r1, r2)
    assert full["metrics"][-2:] == resumed["metrics"]


def test_resume_refuses_another_protocol_or_method():
    trainer = run("reinforce_softmax", small_protocol(episodes=20))
    trainer.fit()
    state = trainer.state_dict()
    with pytest.raises(SlateRLError, match="protocol"):
        run("reinforce_softmax", small_protocol(episodes=40)).load_state_dict(state)
    with pytest.raises(SlateRLError, match="method"):
        run("slateq", small_protocol(episodes=20)).load_state_dict(state)


def test_common_random_numbers_across_methods():
    protocol = small_protocol(episodes=40, warmup_episodes=10, val_every=20, parallel_episodes=5)
    streams = {}
    for method, overlap in (
        ("sac_topk_ideal", True),
        ("sac_gems", False),
        ("reinforce_softmax", True),
        ("slateq", False),
    ):
        env = small_env()
        users = record_resets(env)
        trainer = run(method, dataclasses.replace(protocol, overlap_collection=overlap), env=env)
        trainer.fit()
        trainer.test()
        streams[method] = users
    reference = streams["sac_topk_ideal"]
    assert [u.shape[0] for u in reference] == [5] * 4 + [16] + [5] * 4 + [16] + [24]
    for users in streams.values():
        assert len(users) == len(reference) and all(torch.equal(a, b) for a, b in zip(users, reference, strict=True))
    # test-only methods meet the same test users
    for method in ("random", "short_term_oracle"):
        env = small_env()
        users = record_resets(env)
        run(method, protocol, env=env).test()
        assert len(users) == 1 and torch.equal(users[0], reference[-1])


def test_a_failing_update_waits_for_the_background_collection():
    """An update that raises while the next block is being collected on the side must not leave that thread
    running (a thread still inside torch when the interpreter exits aborts the process)."""
    import threading
    import time

    from slate_rl.agents.training import _Collector

    protocol = small_protocol(
        episodes=60, warmup_episodes=20, val_every=20, parallel_episodes=5, overlap_collection=True
    )
    trainer = run("sac_topk_ideal", protocol)
    collect = trainer._collect

    def slow_collect(start, actor):
        time.sleep(0.3)  # still collecting when the update fails
        return collect(start, actor)

    def failing_update(batch):
        raise RuntimeError("update failed")

    trainer._collect = slow_collect
    trainer.agent.update = failing_update
    with pytest.raises(RuntimeError, match="update failed"):
        trainer.fit()
    assert trainer.episode == 20  # the failure came in the first block with updates
    assert not [t for t in threading.enumerate() if isinstance(t, _Collector) and t.is_alive()]
