"""Everything of a run lives on the run's device: short trainings of every online method (updates, a validation,
a checkpoint saved and loaded, the test, the exported policy) with torch's default device set to 'meta' and the
run's device given explicitly. A tensor created without the run's device becomes a meta tensor, which holds no
values: mixing it with the run's tensors, or reading it, raises. On a machine with CUDA, the same run on the GPU
meets the same users and gets the same rewards as on the CPU."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from agents_helpers import gems_decoder, mf_table, single_thread  # noqa: F401 (autouse fixture)
from slate_rl import envs
from slate_rl.agents import Hooks, Trainer, build_agent
from slate_rl.agents.export import agent_from_payload, policy_payload
from slate_rl.devices import check_device, resolve_device
from slate_rl.errors import SlateRLError
from slate_rl.methods import ONLINE_FAMILIES, get_method, method_ids
from slate_rl.offline.training import OfflineData, OfflineTrainer, Schedule
from slate_rl.protocol import Protocol
from slate_rl.safe_load import torch_load

TINY = {"sac": {"hidden": 16, "batch_size": 3, "capacity": 40}, "slateq": {"hidden": 16, "batch_size": 3}}
PROTOCOL = Protocol(
    episodes=8, warmup_episodes=3, val_every=4, val_episodes=3, test_episodes=3, parallel_episodes=2, save_every=4
)


def overrides(method: str) -> dict | None:
    config = get_method(method).load_config()
    if config is None:
        return None
    if method == "slateq":
        return TINY["slateq"]
    if method == "reinforce_softmax":
        return {"hidden": 16}
    return TINY["sac"]


def make_env(device: str) -> envs.TopicRec:
    return envs.make("focused_topdown", episode_length=4, device=device)


def round_trip(state, device: str):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return torch_load(buffer.getvalue(), "resume state", map_location=device)


def short_run(method: str, device: str, upstream: dict) -> tuple[Trainer, torch.Tensor]:
    """Train half the protocol, save the trainer's state, load it into a new trainer, finish, test; the test
    returns. Also rebuilds the exported policy and plays it."""
    saved: list[dict] = []
    env = make_env(device)
    agent = build_agent(method, env, 3, overrides=overrides(method), **upstream)
    hooks = Hooks(on_checkpoint=lambda kind, episode, state: saved.append(state) if kind == "periodic" else None)
    trainer = Trainer(agent, env, PROTOCOL, hooks)
    trainer.fit(max_episodes=4)
    env = make_env(device)
    resumed = Trainer(build_agent(method, env, 3, overrides=overrides(method), **upstream), env, PROTOCOL)
    if agent.learns:
        resumed.load_state_dict(round_trip(saved[-1], device))
        resumed.fit()
    returns = resumed.test()
    payload = round_trip(
        policy_payload(resumed.agent, env, seed=3, overrides=overrides(method), **_mf(upstream)), device
    )
    policy, _ = agent_from_payload(payload, make_env(device))
    history = torch.zeros(2, 1, env.slate_size, dtype=torch.long, device=device)
    relevances = torch.ones(2, env.num_items, device=device)  # SlateQ's privileged input
    assert policy.recommend(history, history.float(), relevances=relevances).shape == (2, env.slate_size)
    return resumed, returns


def _mf(upstream: dict) -> dict:
    return {"mf_table": upstream["mf_table"]}


@pytest.fixture
def meta_default():
    torch.set_default_device("meta")
    yield
    torch.set_default_device(None)


def upstream_on(device: str) -> dict:
    """The GeMS decoder and MF table, built as the files they are read from hold them (CPU), moved to `device`."""
    env = make_env("cpu")
    return {"gems_decoder": gems_decoder(env).to(device), "mf_table": mf_table(env).to(device)}


@pytest.mark.parametrize("method", method_ids(ONLINE_FAMILIES))
def test_a_short_run_creates_nothing_off_its_device(method, meta_default):
    torch.set_default_device(None)
    upstream = upstream_on("cpu")
    torch.set_default_device("meta")
    trainer, returns = short_run(method, "cpu", upstream)
    assert returns.device == torch.device("cpu") and returns.shape == (3,) and bool(torch.isfinite(returns).all())
    assert trainer.episode == (PROTOCOL.episodes if trainer.agent.learns else 0)


@pytest.mark.parametrize("algorithm", method_ids("offline"))
def test_a_short_offline_run_creates_nothing_off_its_device(algorithm, meta_default):
    env = make_env("cpu")
    agent = build_agent(algorithm, env, 3, overrides={"hidden": 16, "batch_episodes": 4})
    rng = np.random.default_rng(0)  # a logged dataset, as read from its files (numpy)
    shape = (10, env.episode_length + 1, env.slate_size)
    slates, clicks = rng.integers(0, env.num_items, size=shape), rng.integers(0, 2, size=shape).astype(np.uint8)
    labels = torch.zeros(10, env.episode_length, agent.action_dim, device="cpu")
    data = OfflineData(slates, clicks, labels, device="cpu")
    schedule = Schedule(steps=4, eval_every=2, save_every=2, val_episodes=3, test_episodes=3)
    saved: list[dict] = []
    trainer = OfflineTrainer(agent, data, make_env("cpu"), env, schedule, on_checkpoint=lambda s, st: saved.append(st))
    trainer.fit(2)
    resumed = OfflineTrainer(
        build_agent(algorithm, env, 3, overrides={"hidden": 16, "batch_episodes": 4}),
        data,
        make_env("cpu"),
        env,
        schedule,
    )
    resumed.load_state_dict(round_trip(saved[-1], "cpu"))
    resumed.fit()
    returns, test_slates, _ = resumed.test()
    assert resumed.step == 4 and returns.shape == (3,) and test_slates.device == torch.device("cpu")


@pytest.mark.parametrize("method", ["sac_topk_ideal", "slateq", "reinforce_softmax"])
def test_the_fused_updates_create_nothing_off_the_cpu(method, meta_default):
    env = make_env("cpu")
    agent = build_agent(method, env, 3, overrides={**(overrides(method) or {}), "fused_update": True})
    trainer = Trainer(agent, env, PROTOCOL)
    trainer.fit()
    assert trainer.validations and trainer.episode == PROTOCOL.episodes


def test_fused_updates_are_refused_off_the_cpu():
    env = envs.make("focused_topdown", episode_length=4, device="meta")  # a device other than the CPU
    with pytest.raises(SlateRLError, match="fused_update=true runs fused CPU kernels, but this run is on meta"):
        build_agent("slateq", env, 3, overrides={"fused_update": True})


def test_device_names_are_checked():
    assert check_device(" CUDA:1 ") == "cuda:1" and resolve_device("cpu") == torch.device("cpu")
    for bad in ("gpu", "cuda:", "cuda:x", "cpu:0", "tpu", ""):
        with pytest.raises(SlateRLError, match="device must be cpu, cuda or cuda:K"):
            check_device(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_cuda_is_a_clear_error(name):
    with pytest.raises(SlateRLError, match="CUDA is not available on this machine; use --device cpu"):
        resolve_device(name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_gpu_number_the_machine_lacks_is_a_clear_error():
    count = torch.cuda.device_count()
    with pytest.raises(SlateRLError, match=f"this machine has {count} GPU"):
        resolve_device(f"cuda:{count}")


def trace(method: str, device: str) -> dict[str, torch.Tensor]:
    """A short run on `device`: the warm-up episodes it stored (users' clicks on the slates shown, before any update
    could make the devices' float rounding matter) and the test returns, on the CPU."""
    env = make_env(device)
    agent = build_agent(method, env, 3, overrides=overrides(method), **upstream_on(device))
    trainer = Trainer(agent, env, PROTOCOL)
    trainer.fit()
    out = {"returns": trainer.test().cpu()}
    if trainer.buffer is not None and trainer.buffer.capacity >= PROTOCOL.episodes:  # REINFORCE keeps one block
        stored = trainer.buffer.get(torch.arange(PROTOCOL.warmup_episodes, device=device))
        out.update(slates=stored.slates.cpu(), clicks=stored.clicks.cpu())
    return out


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", method_ids(ONLINE_FAMILIES))
def test_a_run_on_cuda_meets_the_same_users_and_rewards_as_on_the_cpu(method):
    """The warm-up (random actions, drawn on the CPU) is the same on both devices, slate for slate and click for
    click; a policy that learns nothing (Random, the oracle) gets the same test returns. After updates, GPU and CPU
    arithmetic round differently, so learned policies may then choose differently: only finite returns are asked."""
    cpu, cuda = trace(method, "cpu"), trace(method, "cuda")
    assert cpu.keys() == cuda.keys()
    for key in cpu.keys() - {"returns"}:
        assert torch.equal(cpu[key], cuda[key]), key
    if get_method(method).family == "baseline":
        assert torch.equal(cpu["returns"], cuda["returns"])
    assert torch.isfinite(cuda["returns"]).all()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("stage", ["train-online", "collect", "pretrain-gems", "train-mf", "train-offline"])
def test_the_stages_refuse_cuda_without_cuda_before_creating_a_run(stage, tracking_store):
    from click.testing import CliRunner
    from mlflow.tracking import MlflowClient

    from slate_rl.cli import main

    result = CliRunner().invoke(main, [stage, "--env", "focused_topdown", "--preset", "quick", "--device", "cuda"])
    assert result.exit_code == 1
    assert "CUDA is not available on this machine; use --device cpu (got --device cuda)" in result.output
    client = MlflowClient()
    assert not client.search_runs([e.experiment_id for e in client.search_experiments()])


def test_a_malformed_device_is_a_usage_error():
    from click.testing import CliRunner

    from slate_rl.cli import main

    result = CliRunner().invoke(main, ["train-online", "--device", "gpu0"])
    assert result.exit_code == 2 and "device must be cpu, cuda or cuda:K" in result.output
