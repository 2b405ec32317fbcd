"""train-online --seeds: a parent run with one child run per seed; SAC seeds trained as one group log what their
single-seed runs log (same metric keys and steps, same validation and test returns); a diverging seed fails alone;
other methods run their seeds one after another; bad input."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from agents_helpers import single_thread  # noqa: F401 (autouse fixture: one intra-op thread, reproducible sums)
from slate_rl.agents.group_training import GroupTrainer
from slate_rl.cli import main
from slate_rl.errors import SlateRLError
from slate_rl.stage_configs import TrainOnlineConfig
from slate_rl.stages import train_online
from slate_rl.tracking import models

TINY = dict(
    episodes=40, warmup_episodes=10, val_every=10, val_episodes=10, test_episodes=20, save_every=20, parallel_episodes=5
)
SEEDS = [58407201, 496912423]
SMALL = {"hidden": 32, "batch_size": 4}


def _config(method="sac_topk_ideal", **values):
    agent = SMALL if method.startswith("sac") else None
    values = {**TINY, "env_params": {"episode_length": 10}, "agent": agent, **values}
    return TrainOnlineConfig.resolve("focused_mix", "quick", method=method, **values)


def _history(run_id: str) -> dict[str, list[tuple[int, float]]]:
    client = MlflowClient()
    keys = client.get_run(run_id).data.metrics
    return {key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)] for key in keys}


def _paths(run_id, path=""):
    found = []
    for item in MlflowClient().list_artifacts(run_id, path):
        found += _paths(run_id, item.path) if item.is_dir else [item.path]
    return set(found)


def test_a_group_logs_for_each_seed_what_its_single_seed_run_logs(tracking_store):
    result = train_online.run_seeds(_config(), SEEDS)
    client = MlflowClient()
    parent = client.get_run(result.group_run)
    assert parent.info.status == "FINISHED" and parent.data.tags["stage"] == "train_online_group"
    assert parent.data.params["seeds_resolved"] == "58407201,496912423" and result.failed == {}
    assert [parent.data.tags[f"run.{seed}"] for seed in SEEDS] == [f"runs:/{result.runs[seed]}" for seed in SEEDS]
    for seed in SEEDS:
        child = client.get_run(result.runs[seed])
        assert child.info.status == "FINISHED"
        assert child.data.tags["mlflow.parentRunId"] == result.group_run and child.data.tags["seed"] == str(seed)
    first, second = (_history(result.runs[seed]) for seed in SEEDS)
    assert {k: [s for s, _ in v] for k, v in first.items()} == {k: [s for s, _ in v] for k, v in second.items()}
    for seed in SEEDS[1:]:  # the second seed of the group against its single-seed run
        child = client.get_run(result.runs[seed])
        single_id = train_online.run(_config(seed=seed, register=False))
        single = client.get_run(single_id)
        assert {**child.data.params, "register": "false"} == single.data.params
        grouped, alone = _history(child.info.run_id), _history(single_id)
        assert sorted(grouped) == sorted(alone)
        for key, points in alone.items():
            assert [step for step, _ in grouped[key]] == [step for step, _ in points], key
            if key.startswith("train/"):
                assert [v for _, v in grouped[key]] == pytest.approx([v for _, v in points], rel=1e-4, abs=1e-5)
            elif key.startswith("val_") or key.startswith("test_") or key.startswith("best_"):
                assert grouped[key] == points, key
        logged = {path for path in _paths(child.info.run_id) if not path.startswith("policies/")}  # registered
        assert logged == _paths(single_id) and "policies/best/MLmodel" in _paths(child.info.run_id)
        assert "resume/state.pt" in _paths(single_id) and "checkpoints/episode_000040/policy.pt" in _paths(single_id)
    assert sorted(v.run_id for v in models.versions("focused_mix")) == sorted(result.runs.values())


def test_a_diverging_seed_fails_alone_and_is_not_registered(tracking_store, monkeypatch):
    block = GroupTrainer._block

    def poisoned(self):
        block(self)
        if self.episode == 20 and len(self.seeds) == 2:
            self.group.params["q.weight1"].data[1].fill_(float("nan"))

    monkeypatch.setattr(GroupTrainer, "_block", poisoned)
    result = train_online.run_seeds(_config(), SEEDS)
    assert list(result.failed) == [SEEDS[1]] and "diverged by episode 25: train/q_loss" in result.failed[SEEDS[1]]
    client = MlflowClient()
    failed, finished = (client.get_run(result.runs[seed]) for seed in (SEEDS[1], SEEDS[0]))
    assert failed.info.status == "FAILED" and finished.info.status == "FINISHED"
    assert [step for step, _ in _history(failed.info.run_id)["val_return"]] == [10, 20]
    assert client.get_run(result.group_run).data.tags["failed_seeds"] == str(SEEDS[1])
    assert [v.run_id for v in models.versions("focused_mix")] == [result.runs[SEEDS[0]]]


def test_cli_seeds_of_other_methods_run_one_after_another(tracking_store):
    args = ["train-online", "--env", "focused_mix", "--preset", "quick", "--method", "random", "--register", "false"]
    result = CliRunner().invoke(main, [*args, "--test-episodes", "20", "--seeds", "5,58407201"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("seed ")]
    assert [line.split(":")[0] for line in lines] == ["seed 5", "seed 58407201"]
    assert all("test return " in line for line in lines)
    parent_id = result.output.split("parent run: runs:/")[1].split()[0]
    children = MlflowClient().search_runs(["0"], f"tags.mlflow.parentRunId = '{parent_id}'")
    assert sorted(run.data.tags["seed"] for run in children) == ["5", "58407201"]
    assert {run.info.status for run in children} == {"FINISHED"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--seeds", "3,3"], "names seed 3 twice"),
        (["--seeds", "-3"], "neither a count in [1, 10] nor a seed above 10"),
        (["--seeds", "5,-3"], "-3 is not a seed"),
        (["--seeds", ","], "has an empty entry"),
        (["--seeds", "2", "--set", "fused_update=true"], "not fused_update; drop fused_update=true"),
        (["--seeds", "2", "--resume", "0123456789abcdef0123456789abcdef"], "resumed one by one"),
    ],
)
def test_cli_bad_seeds(tracking_store, args, message):
    result = CliRunner().invoke(
        main, ["train-online", "--env", "focused_mix", "--preset", "quick", "--method", "sac_topk_ideal", *args]
    )
    assert result.exit_code == 1, result.output
    assert message in result.output
    assert MlflowClient().search_runs(["0"]) == []  # refused before any run


def test_a_group_run_is_not_resumed_as_one(tracking_store):
    client = MlflowClient()
    group = client.create_run("0", tags={"stage": "train_online_group", "run.5": "runs:/abc"}).info.run_id
    client.set_terminated(group, "FAILED")
    with pytest.raises(SlateRLError, match=r"is a seed group.*resume each unfinished seed run alone.*abc"):
        train_online.resumable(group)


def test_a_killed_groups_seeds_resume_alone_to_the_single_seed_results(tracking_store, monkeypatch):
    block = GroupTrainer._block

    def dies_at_30(self):
        block(self)
        if self.episode == 30:
            raise SlateRLError("the machine went away")

    monkeypatch.setattr(GroupTrainer, "_block", dies_at_30)
    with pytest.raises(SlateRLError, match="went away"):
        train_online.run_seeds(_config(register=False), SEEDS)
    monkeypatch.setattr(GroupTrainer, "_block", block)
    client = MlflowClient()
    (parent,) = client.search_runs(["0"], "tags.stage = 'train_online_group'")
    assert parent.info.status == "FAILED"
    for seed in SEEDS:
        assert client.get_run(parent.data.tags[f"run.{seed}"].removeprefix("runs:/")).info.status == "FAILED"
    for seed in SEEDS[1:]:  # the second seed's run, resumed alone, against its single-seed run
        child_id = parent.data.tags[f"run.{seed}"].removeprefix("runs:/")
        train_online.run(train_online.resumable(child_id), resume_run=child_id)
        single_id = train_online.run(_config(seed=seed, register=False))
        resumed, alone = _history(child_id), _history(single_id)
        assert client.get_run(child_id).info.status == "FINISHED"
        assert [step for step, _ in resumed["val_return"]] == [10, 20, 30, 40]
        for key in ("val_return", "test_return", "best_val_return"):
            assert resumed[key] == alone[key], key


def test_a_failing_seed_of_a_sequential_method_fails_alone(tracking_store, monkeypatch):
    finish = train_online._Session.finish

    def fails_for_seed_5(self, trainer, test_returns):
        if self.cfg.seed == 5:
            raise SlateRLError("seed 5 broke")
        finish(self, trainer, test_returns)

    monkeypatch.setattr(train_online._Session, "finish", fails_for_seed_5)
    result = train_online.run_seeds(_config(method="random", register=False), [5, 58407201])
    assert result.failed == {5: "seed 5 broke"}
    client = MlflowClient()
    statuses = {seed: client.get_run(run_id).info.status for seed, run_id in result.runs.items()}
    assert statuses == {5: "FAILED", 58407201: "FINISHED"}
    assert client.get_run(result.runs[5]).data.tags["seed"] == "5"
    assert client.get_run(result.group_run).data.tags["failed_seeds"] == "5"
