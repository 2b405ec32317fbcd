"""Reference parity: the reference protocol's ordering in the training loop, the reference_bugs / reference_parity
umbrellas of train_online (what they set, what they refuse), and how runs of them stay apart in lineage, the
pipeline and compare."""

from __future__ import annotations

import csv
import dataclasses
import io
import shlex
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from agents_helpers import single_thread, small_env  # noqa: F401 (autouse fixture)
from slate_rl.agents import Trainer, build_agent
from slate_rl.agents.buffer import Trajectories
from slate_rl.cli import main, train_online_command
from slate_rl.errors import SlateRLError
from slate_rl.methods import ONLINE_FAMILIES, get_method, method_ids
from slate_rl.protocol import Protocol
from slate_rl.stage_configs import TrainOnlineConfig, reference_switches
from slate_rl.stages import compare, pipeline, train_online
from synthetic_runs import add_train_online_run

REPO = Path(__file__).resolve().parents[1]
EPISODES = 7


def tiny_protocol(reference_protocol: bool) -> Protocol:
    return Protocol(
        episodes=EPISODES,
        warmup_episodes=2,
        val_every=EPISODES,
        val_episodes=2,
        test_episodes=2,
        parallel_episodes=1,
        overlap_collection=False,
        save_every=EPISODES,
        reference_protocol=reference_protocol,
    )


def recorded_run(method: str, reference_protocol: bool, overrides: dict) -> tuple[list[Trajectories], list]:
    """Train a tiny run; returns the episodes collected (in order) and, per update, (the episode just collected,
    the batch, the update's diagnostics)."""
    env = small_env(episode_length=6)
    agent = build_agent(method, env, seed=3, overrides={"hidden": 16, **overrides})
    trainer = Trainer(agent, env, tiny_protocol(reference_protocol))
    collected: list[Trajectories] = []
    updates: list[tuple[int, Trajectories, dict]] = []
    collect, update = trainer._collect, agent.update

    def record_collect(start, actor):
        collected.append(collect(start, actor))
        return collected[-1]

    def record_update(batch):
        diagnostics = update(batch)
        updates.append((trainer.episode, batch, diagnostics))  # trainer.episode: the block's first episode
        return diagnostics

    trainer._collect, agent.update = record_collect, record_update
    trainer.fit()
    return collected, updates


def episode_ids(batch: Trajectories, collected: list[Trajectories]) -> list[int]:
    """Which collected episode each trajectory of `batch` is (K = 1: block e holds episode e alone)."""
    ids = []
    for slates, clicks in zip(batch.slates, batch.clicks, strict=True):
        (match,) = [
            e
            for e, episode in enumerate(collected)
            if torch.equal(episode.slates[0], slates) and torch.equal(episode.clicks[0].float(), clicks)
        ]
        ids.append(match)
    return sorted(ids)


def test_reference_protocol_draws_the_replay_batch_before_the_episode_is_played():
    # a buffer of 2 and batches of 2: each batch is the whole buffer, so its content is known by hand
    sizes = {"capacity": 2, "batch_size": 2}
    collected, updates = recorded_run("sac_topk_ideal", reference_protocol=True, overrides=sizes)
    assert len(collected) == EPISODES
    # updates after the 2 warm-up episodes; the batch of episode e is the buffer before e was added: e-2, e-1
    assert [(e, episode_ids(batch, collected)) for e, batch, _ in updates] == [
        (e, [e - 2, e - 1]) for e in range(2, EPISODES)
    ]
    collected, updates = recorded_run("sac_topk_ideal", reference_protocol=False, overrides=sizes)
    # slate-rl's default: the batch is drawn once the episode is stored, so it holds it
    assert [(e, episode_ids(batch, collected)) for e, batch, _ in updates] == [
        (e, [e - 1, e]) for e in range(2, EPISODES)
    ]


def test_reference_protocol_trains_reinforce_on_the_previous_episode():
    collected, updates = recorded_run("reinforce_softmax", reference_protocol=True, overrides={})
    # REINFORCE updates from the first episode on (warm-up included), but at episode 0 nothing is stored yet
    assert [(e, episode_ids(batch, collected)) for e, batch, _ in updates] == [(e, [e - 1]) for e in range(1, EPISODES)]
    # the update's reported return is the total number of clicks of episode e - 1
    for e, _, diagnostics in updates:
        assert float(diagnostics["return"]) == float(collected[e - 1].returns[0])
    collected, updates = recorded_run("reinforce_softmax", reference_protocol=False, overrides={})
    assert [(e, episode_ids(batch, collected)) for e, batch, _ in updates] == [(e, [e]) for e in range(EPISODES)]


@pytest.mark.parametrize(
    "changes, named",
    [
        ({"parallel_episodes": 10}, "parallel_episodes = 10"),
        ({"overlap_collection": True}, "overlap_collection = True"),
    ],
)
def test_reference_protocol_refuses_blocks_and_overlap(changes, named):
    with pytest.raises(SlateRLError, match=f"reference_protocol plays one episode at a time.*{named}"):
        dataclasses.replace(tiny_protocol(True), **changes).validate()


def test_a_resume_state_saved_before_reference_protocol_existed_still_loads():
    env = small_env(episode_length=6)
    trainer = Trainer(build_agent("random", env, seed=3), env, tiny_protocol(False))
    state = trainer.state_dict()
    del state["protocol"]["reference_protocol"]
    trainer.load_state_dict(state)
    state["protocol"]["reference_protocol"] = True
    with pytest.raises(SlateRLError, match="resume with the same protocol"):
        trainer.load_state_dict(state)


# ------------------------------------------------------------------ the umbrellas


def resolve(method: str, **values) -> TrainOnlineConfig:
    return TrainOnlineConfig.resolve("focused_topdown", "quick", method=method, **values)


def test_every_reference_switch_is_a_bool_field_of_its_config():
    for method in method_ids(ONLINE_FAMILIES):
        config_class = get_method(method).load_config()
        if config_class is None:
            continue
        fields = {f.name: f for f in dataclasses.fields(config_class)}
        assert config_class.REFERENCE_SWITCHES, method
        for switch in config_class.REFERENCE_SWITCHES:
            assert isinstance(fields[switch].default, bool), (method, switch)
    assert reference_switches("slateq") == (
        "reference_relevances",
        "batch_divpen",
        "reference_pairing",
        "reference_terminal_end",
    )
    assert reference_switches("sac_wknn") == (
        "reference_temperature",
        "reference_terminal_end",
        "reference_pairing",
        "reference_item_table",
        "reference_knn_layout",
        "reference_refinement",
    )
    assert reference_switches("random") == ()


@pytest.mark.parametrize("method", method_ids(ONLINE_FAMILIES))
def test_reference_bugs_turns_on_the_agent_switches_and_keeps_the_protocol(method):
    default = resolve(method)
    bugs = resolve(method, reference_bugs=True)
    assert bugs.agent == {switch: True for switch in reference_switches(method)}
    assert bugs.protocol() == default.protocol()
    assert (bugs.parallel_episodes, bugs.overlap_collection, bugs.reference_protocol) == (10, True, False)
    parity = resolve(method, reference_parity=True)
    assert parity.agent == bugs.agent and parity.reference_bugs
    assert (parity.parallel_episodes, parity.overlap_collection, parity.reference_protocol) == (1, False, True)
    # explicit values that agree with the umbrellas are accepted and give the same configuration
    agreeing = resolve(method, reference_parity=True, reference_bugs=True, parallel_episodes=1)
    assert agreeing == parity


def test_reference_protocol_alone_sets_one_episode_without_overlap():
    cfg = resolve("sac_topk_ideal", reference_protocol=True)
    assert (cfg.parallel_episodes, cfg.overlap_collection, cfg.agent, cfg.reference_bugs) == (1, False, {}, False)


@pytest.mark.parametrize(
    "values, message",
    [
        (
            {"method": "sac_gems", "reference_parity": True, "parallel_episodes": 10},
            "parallel_episodes = 10 was given, reference_parity sets 1",
        ),
        (
            {"method": "sac_gems", "reference_parity": True, "overlap_collection": True},
            "overlap_collection = true was given, reference_parity sets false",
        ),
        (
            {"method": "sac_gems", "reference_protocol": True, "parallel_episodes": 5},
            "parallel_episodes = 5 was given, reference_protocol sets 1",
        ),
        (
            {"method": "slateq", "reference_bugs": True, "agent": {"batch_divpen": False}},
            "batch_divpen = false was given, reference_bugs sets true",
        ),
        (
            {"method": "reinforce_softmax", "reference_parity": True, "agent": {"reference_pairing": False}},
            "reference_pairing = false was given, reference_parity sets true",
        ),
        (
            {"method": "reinforce_softmax", "reference_parity": True, "reference_bugs": False},
            "reference_bugs = false was given, reference_parity sets true",
        ),
        (
            {"method": "sac_topk_ideal", "agent": {"reference_relevances": True}},
            "reference_relevances is a reference switch of slateq, not of sac_topk_ideal; sac_topk_ideal's "
            "reference switches: reference_temperature",
        ),
        (
            {"method": "random", "agent": {"reference_pairing": True}},
            "reference_pairing is a reference switch of slateq, reinforce_softmax, sac_wknn, not of random; "
            "random has none",
        ),
        (
            {"method": "sac_gems", "agent": {"reference_parity": True}},
            "reference_parity is a train_online option, not a hyper-parameter of sac_gems: give it as "
            "--reference-parity VALUE",
        ),
    ],
)
def test_conflicts_are_refused_naming_the_fields(values, message):
    with pytest.raises(SlateRLError) as error:
        TrainOnlineConfig.resolve("focused_topdown", "quick", **values)
    assert message in str(error.value)


def test_a_config_built_without_resolve_must_spell_out_what_the_umbrellas_set():
    cfg = TrainOnlineConfig(env="focused_topdown", preset="quick", method="slateq", reference_bugs=True)
    with pytest.raises(SlateRLError, match=r"set agent\.batch_divpen, agent\.reference_pairing, agent\.reference_rel"):
        cfg.validate()
    dataclasses.replace(cfg, agent={switch: True for switch in reference_switches("slateq")}).validate()


def test_methods_without_an_agent_config_take_the_umbrellas_as_protocol_only():
    for method in ("random", "short_term_oracle"):
        cfg = resolve(method, reference_parity=True)
        assert (cfg.agent, cfg.reference_bugs, cfg.parallel_episodes, cfg.overlap_collection) == ({}, True, 1, False)


def test_umbrellas_change_the_lineage_key_of_a_run():
    keys = {
        name: train_online.lookup_keys(resolve("reinforce_softmax", seed=7, **values))
        for name, values in {
            "default": {},
            "bugs": {"reference_bugs": True},
            "parity": {"reference_parity": True},
            "parity, spelled out": {"reference_parity": True, "reference_bugs": True, "reference_protocol": True},
        }.items()
    }
    assert len({keys["default"], keys["bugs"], keys["parity"]}) == 3
    assert keys["parity"] == keys["parity, spelled out"]
    assert len(keys["bugs"]) == 1  # slate-rl 0.1.0 had no such runs: no legacy key


def test_the_pipeline_keeps_a_default_and_a_reference_bugs_run_of_one_seed_apart(tracking_store):
    cfg = pipeline.PipelineConfig.resolve(
        "focused_mix", "reinforce_softmax", "7,", preset="quick", assignments=("reference_bugs=false,true",)
    )
    _, _, training = pipeline.plan(cfg)
    jobs = {job.name: job for job in training}
    assert set(jobs) == {
        "reinforce_softmax/focused_mix/seed7 [reference_bugs=false]",
        "reinforce_softmax/focused_mix/seed7 [reference_bugs=true]",
    }
    on = jobs["reinforce_softmax/focused_mix/seed7 [reference_bugs=true]"]
    assert on.args[-2:] == ["--reference-bugs", "true"]
    assert on.keys == train_online.lookup_keys(
        TrainOnlineConfig.resolve("focused_mix", "quick", method="reinforce_softmax", seed=7, reference_bugs=True)
    )
    assert len({job.keys for job in training}) == 2
    with pytest.raises(SlateRLError, match="reference_relevances: a reference switch of slateq, none of the grid's"):
        pipeline.PipelineConfig.resolve(
            "focused_mix", "sac_topk_ideal", "7,", assignments=("reference_relevances=true",)
        )


def test_train_online_logs_the_umbrellas_as_params_and_tags(tracking_store):
    result = CliRunner().invoke(
        main,
        [
            "train-online",
            "--env",
            "focused_mix",
            "--preset",
            "quick",
            "--method",
            "random",
            "--test-episodes",
            "4",
            "--register",
            "false",
            "--reference-parity",
            "true",
        ],
    )
    assert result.exit_code == 0, result.output
    (run,) = MlflowClient().search_runs(["0"])
    assert (run.data.tags["reference_parity"], run.data.tags["reference_bugs"]) == ("true", "true")
    params = run.data.params
    assert (params["reference_parity"], params["reference_bugs"], params["reference_protocol"]) == ("true",) * 3
    assert (params["parallel_episodes"], params["overlap_collection"]) == ("1", "false")


def test_the_mlflow_entry_point_passes_the_umbrellas():
    spec = yaml.safe_load((REPO / "MLproject").read_text())["entry_points"]["train_online"]
    values = {name: str(param["default"]) for name, param in spec["parameters"].items()}
    values["reference_parity"] = "true"  # -P reference_parity=true
    command = shlex.split(spec["command"].format(**{k: shlex.quote(v) for k, v in values.items()}))
    assert command[:2] == ["slate-rl", "train-online"]
    params = train_online_command.make_context("train-online", command[2:]).params
    assert (params["reference_parity"], params["reference_bugs"]) == (True, False)


# ------------------------------------------------------------------ compare


BUGS = {"reference_bugs": "true", "agent.reference_pairing": "true"}  # params as a run logs them
PARITY = {
    **BUGS,
    "reference_parity": "true",
    "reference_protocol": "true",
    "parallel_episodes": "1",
    "overlap_collection": "false",
}


def _fill(*variants: dict) -> None:
    """Two seeds of REINFORCE by default (return 100 + seed) and of each variant (return 80 + seed, 60 + seed, ...)."""
    for seed in range(2):
        for i, params in enumerate(({}, *variants)):
            add_train_online_run("reinforce_softmax", "focused_mix", seed, 100.0 - 20 * i + seed, params=params)


def _table(out, **values) -> dict[str, dict]:
    compare.run(
        compare.CompareConfig.resolve(
            "focused_mix", "reinforce_softmax", reference="reinforce_softmax", out=str(out), **values
        )
    )
    return {row["method_name"]: row for row in csv.DictReader(io.StringIO((out / "results.csv").read_text()))}


def test_compare_shows_the_umbrella_variants_as_rows_labelled_by_the_umbrellas(tracking_store):
    _fill(BUGS, PARITY)
    rows = _table(tracking_store / "all")
    assert {name: float(row["mean"]) for name, row in rows.items()} == {
        "REINFORCE+SoftMax": 100.5,
        "REINFORCE+SoftMax [reference_bugs=true, reference_parity=false]": 80.5,
        "REINFORCE+SoftMax [reference_bugs=true, reference_parity=true]": 60.5,
    }


def test_without_bugs_only_runs_the_parity_row_shows_reference_parity_alone(tracking_store):
    _fill(PARITY)
    rows = _table(tracking_store / "parity")
    assert {name: float(row["mean"]) for name, row in rows.items()} == {
        "REINFORCE+SoftMax": 100.5,
        "REINFORCE+SoftMax [reference_parity=true]": 80.5,
    }


def test_compare_filters_by_the_umbrellas(tracking_store):
    _fill(BUGS, PARITY)
    (only,) = _table(tracking_store / "parity", reference_parity=True).values()
    assert (only["method_name"], float(only["mean"]), only["variant"]) == ("REINFORCE+SoftMax", 60.5, "")
    rows = _table(tracking_store / "not_parity", reference_parity=False)
    assert {float(row["mean"]) for row in rows.values()} == {100.5, 80.5}
    rows = _table(tracking_store / "bugs", reference_bugs=True)
    assert {float(row["mean"]) for row in rows.values()} == {80.5, 60.5}
    rows = _table(tracking_store / "neither", reference_bugs=False, reference_parity=False)
    assert {float(row["mean"]) for row in rows.values()} == {100.5}
    result = CliRunner().invoke(
        main, ["compare", "--envs", "focused_mix", "--methods", "random", "--reference-parity", "true"]
    )
    assert result.exit_code == 1 and "reference_parity=true" in result.output
