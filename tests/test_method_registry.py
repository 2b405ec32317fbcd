"""The method registry: every consumer derives from it, a method registered at run time goes through train_online and
compare with no other change, and an unknown method gets one message everywhere."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from agents_helpers import single_thread, small_env, upstream  # noqa: F401 (autouse fixture)
from slate_rl.agents import build_agent, evaluate_policy
from slate_rl.agents.base import Agent, Observation, check_history
from slate_rl.agents.export import agent_from_payload, policy_payload
from slate_rl.cli import main
from slate_rl.errors import SlateRLError
from slate_rl.methods import (
    ONLINE_FAMILIES,
    MethodSpec,
    Need,
    get_method,
    method_ids,
    register_method,
    unregister_method,
)
from slate_rl.reporting import is_privileged, method_name
from slate_rl.stage_configs import TrainOnlineConfig
from slate_rl.stages import compare, environment, pipeline, train_online
from slate_rl.tracking import models
from synthetic_runs import add_train_online_run

PAPER = (
    "short_term_oracle",
    "sac_topk_ideal",
    "slateq",
    "random",
    "reinforce_softmax",
    "sac_wknn",
    "sac_topk_mf",
    "sac_gems",
)
OFFLINE = ("bc", "td3_bc", "iql", "cql")
TINY = dict(episodes=20, warmup_episodes=0, val_every=20, val_episodes=10, test_episodes=50, save_every=20)


class FirstItemsAgent(Agent):
    """A baseline that always recommends items 0..R-1."""

    method = "first_items"
    learns = False

    def _slates(self, num_users: int) -> torch.Tensor:
        return torch.arange(self.slate_size).expand(num_users, -1).clone()

    def act(self, obs: Observation, mode: str, episode: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self._slates(obs["slate"].shape[0]), None

    def recommend(self, slates: torch.Tensor, clicks: torch.Tensor, **privileged: torch.Tensor) -> torch.Tensor:
        check_history(slates, clicks)
        return self._slates(slates.shape[0])


def build_first_items(env, seed, config, inputs) -> Agent:
    return FirstItemsAgent(env.num_items, env.slate_size, seed)


@pytest.fixture
def first_items():
    """The trivial method, registered for one test."""
    spec = register_method(MethodSpec("first_items", "First items", "baseline", builder=build_first_items))
    yield spec
    unregister_method(spec.id)


def _one_line(text: str) -> str:
    return " ".join(text.split())


# ---------------------------------------------------------------- the registry and its consumers
def test_registry_holds_the_papers_methods_in_table_order():
    assert method_ids() == (*PAPER, *OFFLINE)
    assert method_ids("baseline") == ("short_term_oracle", "random")
    assert method_ids(ONLINE_FAMILIES) == PAPER and method_ids("offline") == OFFLINE
    assert [m for m in PAPER if is_privileged(m)] == ["short_term_oracle", "sac_topk_ideal", "slateq"]
    assert get_method("sac_gems").needs == (Need.GEMS,)
    assert [m for m in PAPER if get_method(m).needs == (Need.MF,)] == ["sac_wknn", "sac_topk_mf"]
    for fields in (dataclasses.fields(TrainOnlineConfig), dataclasses.fields(train_online.Upstream)):
        assert {need.value for need in Need} <= {field.name for field in fields}  # a need's run is given by name


def test_cli_help_lists_the_registered_methods():
    listing = ", ".join(method_ids(ONLINE_FAMILIES))
    assert f"Method: {listing}." in _one_line(CliRunner().invoke(main, ["train-online", "--help"]).output)
    for command in ("compare", "pipeline"):
        assert f"({listing}), or 'all'" in _one_line(CliRunner().invoke(main, [command, "--help"]).output)


@pytest.mark.parametrize("method", PAPER)
def test_every_consumer_accepts_a_registered_method(tracking_store, method):
    spec = get_method(method)
    assert TrainOnlineConfig.resolve("focused_mix", "quick", method=method).method == method
    assert compare.CompareConfig.resolve("focused_mix", method, reference=method).methods == [method]
    assert pipeline.PipelineConfig.resolve("focused_mix", method, "1", preset="quick").methods == [method]
    assert method_name(method) == spec.display and is_privileged(method) == spec.privileged
    env = small_env()
    agent = build_agent(method, env, 0, **upstream(env))
    assert agent.method == method
    config = spec.load_config()
    assert (config is None) == (not agent.learns)
    payload = policy_payload(agent, env, seed=0, mf_table=upstream(env)["mf_table"])
    assert ("gems_decoder" in payload, "mf_table" in payload) == (Need.GEMS in spec.needs, Need.MF in spec.needs)
    assert agent_from_payload(payload, env)[0].method == method
    datasets, upstream_jobs, training = pipeline.plan(
        pipeline.PipelineConfig.resolve("focused_mix", method, "1", preset="quick")
    )
    assert len(datasets) == (1 if spec.needs else 0)
    assert [job.stage for job in upstream_jobs] == [
        {Need.GEMS: "pretrain_gems", Need.MF: "train_mf"}[need] for need in spec.needs
    ]
    assert [job.name for job in training] == [f"{method}/focused_mix/seed58407201"]


def test_all_means_every_method_train_online_runs(first_items):
    assert compare.CompareConfig.resolve("focused_mix", "all").methods == [*PAPER, "first_items"]
    assert pipeline.PipelineConfig.resolve("focused_mix", "all", "1").methods == [*PAPER, "first_items"]


# ---------------------------------------------------------------- a method registered at run time
def test_a_registered_method_trains_tests_registers_and_is_compared(tracking_store, first_items):
    cfg = TrainOnlineConfig.resolve("focused_mix", "quick", method="first_items", **TINY)
    run_id = train_online.run(cfg)
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["method"] == "first_items"
    assert not any(tag.startswith("upstream.") for tag in run.data.tags)  # it needs no upstream run
    assert len(MlflowClient().search_runs(["0"])) == 1  # so no dataset, GeMS or MF run was made either
    env = environment.make_env(cfg)
    expected = evaluate_policy(env, build_first_items(env, 0, None, {}), 50)
    assert run.data.metrics["test_return"] == pytest.approx(float(expected.mean()))
    (version,) = models.versions("focused_mix")
    assert version.tags["method"] == "first_items"

    add_train_online_run("random", "focused_mix", 0, 1.0, preset="quick")
    out = tracking_store / "report"
    compare.run(compare.CompareConfig.resolve("focused_mix", "random,first_items", preset="quick", out=str(out)))
    rows = [
        line.split(" | ")[0][2:] for line in (out / "results.md").read_text().splitlines() if line.startswith("| ")
    ][1:]
    assert rows == ["Random", "First items"]  # display name from the registry, after the paper's methods


def test_registration_refuses_bad_entries(first_items):
    with pytest.raises(SlateRLError, match="'first_items' is already registered"):
        register_method(first_items)
    with pytest.raises(SlateRLError, match="family must be one of online, offline, baseline"):
        MethodSpec("x", "X", "bandit", builder=build_first_items)
    with pytest.raises(SlateRLError, match="needs must be Need members"):
        MethodSpec("x", "X", "online", builder=build_first_items, needs=("mf",))
    with pytest.raises(SlateRLError, match=r"builder must look like 'package.module:name'"):
        MethodSpec("x", "X", "online", builder="my_module.build")
    with pytest.raises(SlateRLError, match="method id 'Sac-X'"):
        MethodSpec("Sac-X", "X", "online", builder=build_first_items)


def test_an_offline_method_is_refused_where_train_online_runs():
    register_method(MethodSpec("offline_bc", "BC", "offline", builder=build_first_items))
    try:
        message = "method 'offline_bc' is of the offline family, which does not run here; choose one of: " + ", ".join(
            PAPER
        )
        for entry in (
            lambda: TrainOnlineConfig.resolve("focused_mix", "quick", method="offline_bc"),
            lambda: compare.CompareConfig.resolve("focused_mix", "offline_bc"),
            lambda: pipeline.PipelineConfig.resolve("focused_mix", "offline_bc", "1"),
        ):
            with pytest.raises(SlateRLError) as caught:
                entry()
            assert str(caught.value) == message
        assert method_ids() == (*PAPER, *OFFLINE, "offline_bc") and method_name("offline_bc") == "BC"
    finally:
        unregister_method("offline_bc")
    assert method_ids() == (*PAPER, *OFFLINE)


# ---------------------------------------------------------------- unknown methods
def test_an_unknown_method_gets_one_message_everywhere(tracking_store, first_items):
    every = f"unknown method 'ddpg'; choose one of: {', '.join((*PAPER, *OFFLINE))}, first_items"
    online = f"unknown method 'ddpg'; choose one of: {', '.join(PAPER)}, first_items"  # what these stages take
    entries = {
        "config": (lambda: TrainOnlineConfig.resolve("focused_mix", "quick", method="ddpg"), online),
        "compare": (lambda: compare.CompareConfig.resolve("focused_mix", "random,ddpg"), online),
        "compare reference": (
            lambda: compare.CompareConfig.resolve("focused_mix", "random", reference="ddpg"),
            online,
        ),
        "pipeline": (lambda: pipeline.PipelineConfig.resolve("focused_mix", "ddpg", "1"), online),
        "agent": (lambda: build_agent("ddpg", small_env(), 0), every),
        "unregister": (lambda: unregister_method("ddpg"), every),
    }
    for name, (entry, expected) in entries.items():
        with pytest.raises(SlateRLError) as caught:
            entry()
        assert str(caught.value) == expected, name
    for args in (
        ["train-online", "--method", "ddpg"],
        ["compare", "--methods", "ddpg"],
        ["pipeline", "--methods", "ddpg"],
    ):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 1 and result.output.strip() == f"Error: {online}", args
    assert method_name("ddpg") == "ddpg"  # a run of a method no longer registered keeps its id in tables
