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
        (["--seeds", "2", "--resume", "0123456789abcdef0123456789abcdef"], "for a seed group's parent run"),
    ],
)
def test_cli_bad_seeds(tracking_store, args, message):
    result = CliRunner().invoke(
        main, ["train-online", "--env", "focused_mix", "--preset", "quick", "--method", "sac_topk_ideal", *args]
    )
    assert result.exit_code == 1, result.output
    assert message in result.output
    assert MlflowClient().search_runs(["0"]) == []  # refused before any run


def _kill_group_at(monkeypatch, episode, seeds=SEEDS, **values):
    """Run a group that dies after `episode` (its runs left FAILED, as an exception leaves them); its parent run."""
    block = GroupTrainer._block

    def dies(self):
        block(self)
        if self.episode == episode:
            raise SlateRLError("the machine went away")

    monkeypatch.setattr(GroupTrainer, "_block", dies)
    with pytest.raises(SlateRLError, match="went away"):
        train_online.run_seeds(_config(register=False, **values), seeds)
    monkeypatch.setattr(GroupTrainer, "_block", block)
    (parent,) = MlflowClient().search_runs(["0"], "tags.stage = 'train_online_group'")
    return parent


def _child(parent, seed):
    return parent.data.tags[f"run.{seed}"].removeprefix("runs:/")


def test_a_killed_group_resumes_as_a_group_to_the_uninterrupted_results(tracking_store, monkeypatch):
    parent = _kill_group_at(monkeypatch, 30)  # its last checkpoint: episode 20
    result = CliRunner().invoke(main, ["train-online", "--resume", parent.info.run_id])
    assert result.exit_code == 0, result.output
    assert [line.split(":")[0] for line in result.output.splitlines() if line.startswith("seed ")] == [
        f"seed {seed}" for seed in SEEDS
    ]
    client = MlflowClient()
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"
    resumed = {seed: _history(_child(parent, seed)) for seed in SEEDS}
    uninterrupted = train_online.run_seeds(_config(register=False), SEEDS)
    for seed in SEEDS:
        assert client.get_run(_child(parent, seed)).info.status == "FINISHED"
        alone = _history(uninterrupted.runs[seed])
        assert [step for step, _ in resumed[seed]["val_return"]] == [10, 20, 30, 40]
        for key in ("val_return", "test_return", "test_return_std", "best_val_return", "train/q_loss"):
            assert resumed[seed][key] == alone[key], (seed, key)


def test_a_resumed_group_keeps_finished_and_failed_seeds(tracking_store, monkeypatch):
    seeds = [*SEEDS, 5]
    parent = _kill_group_at(monkeypatch, 30, seeds)
    client = MlflowClient()
    finished = _child(parent, seeds[0])
    client.set_terminated(finished, "FINISHED")  # as if it had finished (its test logged) before the others
    client.set_tag(parent.info.run_id, "failed_seeds", str(seeds[1]))  # as a diverged seed leaves it
    with pytest.raises(
        SlateRLError, match=f"seed group of seeds {seeds[0]},{seeds[1]},5; it resumes with those seeds only"
    ):
        train_online.resume_group(parent.info.run_id, [seeds[0], 5])
    result = train_online.resume_group(parent.info.run_id, seeds)
    assert result.runs == {seed: _child(parent, seed) for seed in seeds}
    assert list(result.failed) == [seeds[1]] and "failed before the group was resumed" in result.failed[seeds[1]]
    statuses = {seed: client.get_run(_child(parent, seed)).info.status for seed in seeds}
    assert statuses == {seeds[0]: "FINISHED", seeds[1]: "FAILED", 5: "FINISHED"}
    assert "test_return" not in client.get_run(finished).data.metrics  # not retrained
    assert "test_return" in client.get_run(_child(parent, 5)).data.metrics
    assert client.get_run(parent.info.run_id).data.tags["failed_seeds"] == str(seeds[1])


def test_a_group_whose_seeds_stopped_at_different_checkpoints_is_refused(tracking_store, monkeypatch):
    parent = _kill_group_at(monkeypatch, 30)
    first, second = (_child(parent, seed) for seed in SEEDS)
    # the second seed's run, resumed alone up to its episode-40 checkpoint, and killed there
    monkeypatch.setattr(train_online._Session, "finish", lambda *args: (_ for _ in ()).throw(SlateRLError("killed")))
    with pytest.raises(SlateRLError, match="killed"):
        train_online.run(train_online.resumable(second), resume_run=second)
    with pytest.raises(
        SlateRLError,
        match=rf"different checkpoints \(seed {SEEDS[0]} at episode 20 \(run {first}\); "
        rf"seed {SEEDS[1]} at episode 40 \(run {second}\)\).*train-online --resume {first}",
    ):
        train_online.resume_group(parent.info.run_id)


def test_a_group_killed_before_its_first_checkpoint_starts_again_in_its_runs(tracking_store, monkeypatch):
    parent = _kill_group_at(monkeypatch, 10)
    result = train_online.resume_group(parent.info.run_id)
    assert result.failed == {} and result.runs == {seed: _child(parent, seed) for seed in SEEDS}
    val = [step for step, _ in _history(result.runs[SEEDS[0]])["val_return"]]
    assert val == [10, 20, 30, 40]  # the points logged before the kill are not logged twice


def test_a_group_that_would_not_fit_in_memory_is_refused_before_any_run(tracking_store, monkeypatch):
    monkeypatch.setattr(train_online, "available_memory", lambda device: 20 * 2**20)
    cfg = _config()  # capacity 10000 trajectories of 11 x 10 ids and clicks (3 bytes) and 10 x 20-dim actions
    per_seed = 1.25 * 10_000 * (11 * 10 * 3 + 10 * 20 * 4)  # 14.1 MB, a quarter more than the buffer
    assert train_online.group_memory(cfg, 2) == 2 * per_seed
    message = r"needs about 27 MiB \(13 MiB per seed.*cpu has 20 MiB free; train at most 1 seeds per group"
    with pytest.raises(SlateRLError, match=message):
        train_online.run_seeds(cfg, SEEDS)
    assert MlflowClient().search_runs(["0"]) == []
    assert train_online.run_seeds(_config(method="random", register=False, test_episodes=5), SEEDS).failed == {}
