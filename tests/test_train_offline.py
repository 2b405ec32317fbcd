"""The train_offline stage end to end on tiny sizes: online training -> promote -> collect -> each offline algorithm
(FINISHED runs, val / test metrics, normalised scores, a registered version that collect plays); reuse of the dataset
and the ranker; resume after a kill; bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from slate_rl.agents.runtime import usable_cores
from slate_rl.cli import main
from slate_rl.data import load_offline
from slate_rl.errors import SlateRLError
from slate_rl.stage_configs import (
    CollectConfig,
    GenerateDatasetConfig,
    PretrainGemsConfig,
    TrainOfflineConfig,
    TrainOnlineConfig,
)
from slate_rl.stages import collect, generate_dataset, pretrain_gems, registry, train_offline, train_online
from slate_rl.tracking import models

ENV = "focused_mix"
SCHEDULE = dict(steps=6, eval_every=3, save_every=3, val_episodes=10, test_episodes=20)
CLI_SCHEDULE = [f"--{k.replace('_', '-')}={v}" for k, v in SCHEDULE.items()]


@pytest.fixture(scope="module")
def workflow(module_store):
    """A SAC+GeMS policy (v1, expert) and the built-in random policy (v2, random); collected: the expert (40
    episodes, with its latent actions) and a mix of both (no common action space, so no stored actions)."""
    dataset = generate_dataset.run(GenerateDatasetConfig.resolve(ENV, "quick", n_sessions=100, chunk_size=100))
    gems = pretrain_gems.run(PretrainGemsConfig.resolve(ENV, "quick", dataset=f"runs:/{dataset}", epochs=1))
    online = train_online.run(
        TrainOnlineConfig.resolve(
            ENV,
            "quick",
            method="sac_gems",
            dataset=f"runs:/{dataset}",
            gems=f"runs:/{gems}",
            episodes=40,
            warmup_episodes=20,
            val_every=20,
            val_episodes=20,
            test_episodes=50,
            save_every=20,
        )
    )
    assert registry.register_random(ENV, seed=0) == "2"
    models.set_alias(ENV, "1", "expert")
    models.set_alias(ENV, "2", "random")
    sizes = dict(batch_size=40, reference_episodes=50, format="npz")
    expert = collect.run(CollectConfig.resolve(ENV, "quick", quality="expert", episodes=40, **sizes))
    mixed = collect.run(CollectConfig.resolve(ENV, "quick", mix="expert:20,random:20", episodes=40, **sizes))
    return {"gems": gems, "online": online, "expert": expert, "mix": mixed}


def offline(*args: str, threads: str | None = "1"):
    """The stage through its CLI, on one thread unless told (the CLI sets torch's thread count for the whole test
    process); threads=None leaves the option at its default."""
    given = [*args, *(("--threads", threads) if threads is not None else ())]
    return CliRunner().invoke(
        main, ["train-offline", "--env", ENV, "--preset", "quick", *CLI_SCHEDULE, "--set", "batch_episodes=4", *given]
    )


def newest_offline_run():
    return MlflowClient().search_runs(["0"], "tags.stage = 'train_offline'", order_by=["attributes.start_time DESC"])[0]


@pytest.mark.parametrize("algorithm", ["bc", "td3_bc", "iql", "cql"])
def test_each_algorithm_finishes_scored_and_registered(workflow, algorithm):
    result = offline("--algorithm", algorithm)
    assert result.exit_code == 0, result.output
    run = newest_offline_run()
    tags, metrics = run.data.tags, run.data.metrics
    assert run.info.status == "FINISHED"
    assert {k: tags[k] for k in ("stage", "env", "method", "algorithm", "family", "dataset_run", "ranker")} == {
        "stage": "train_offline",
        "env": ENV,
        "method": algorithm,
        "algorithm": algorithm,
        "family": "offline",
        "dataset_run": workflow["expert"],
        "ranker": "gems",
    }
    assert tags["dataset_quality"] == "expert" and tags["seed"] == "58407201" and tags["preset"] == "quick"
    assert tags["action_labels"] == "latent actions stored by the collecting policy"
    assert tags["upstream.gems"] == f"runs:/{workflow['gems']}/gems"
    client = MlflowClient()
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_return")] == [3, 6]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "diag/policy_to_label")] == [3, 6]
    random, expert = metrics["reference_return_random"], metrics["reference_return_expert"]
    assert load_offline(workflow["expert"]).metadata["reference_scores"] == {"random": random, "expert": expert}
    for kind in ("best", "last"):
        score = 100 * (metrics[f"test_return_{kind}"] - random) / (expert - random)
        assert metrics[f"normalised_score_{kind}"] == pytest.approx(score)
    assert metrics["test_return"] == metrics["test_return_best"]
    assert 0 < metrics["policy/catalogue_coverage"] <= 1 and metrics["policy/distinct_items_per_slate"] >= 1
    if algorithm != "bc":
        assert {"diag/q_data", "diag/q_policy", "diag/q_random", "train/q_mean", "train/target_beyond_bound"} <= set(
            metrics
        )
    version = models.get_version(ENV, tags["registered_version"])
    assert version.run_id == run.info.run_id
    assert {k: version.tags[k] for k in ("family", "algorithm", "dataset_run", "dataset_quality")} == {
        "family": "offline",
        "algorithm": algorithm,
        "dataset_run": workflow["expert"],
        "dataset_quality": "expert",
    }
    assert float(version.tags["normalised_score"]) == pytest.approx(metrics["normalised_score_best"])
    assert "normalised score " in result.output and f"registered as version {version.version}" in result.output
    # the offline policy is a policy like the others: collect plays it
    played = load_offline(
        collect.run(
            CollectConfig.resolve(
                ENV,
                "quick",
                policy=f"models:/slate-rl.{ENV}/{version.version}",
                episodes=10,
                batch_size=10,
                reference_episodes=10,
                format="npz",
            )
        )
    )
    assert played.num_episodes == 10 and played.actions is not None and played.actions.shape[-1] == 32


def test_a_mix_with_random_episodes_is_relabelled_and_the_ranker_is_reused(workflow):
    assert offline("--algorithm", "bc", "--quality", "mix", "--register", "false").exit_code == 0
    run = newest_offline_run()
    assert run.data.tags["dataset_run"] == workflow["mix"] and run.data.tags["dataset_quality"] == "mix"
    assert run.data.tags["action_labels"] == "GeMS encoder mean (real clicks)"
    assert run.data.tags["upstream.gems"] == f"runs:/{workflow['gems']}/gems"  # the expert's GeMS

    def gems_runs():
        return MlflowClient().search_runs(["0"], "tags.stage = 'pretrain_gems' and attributes.status = 'FINISHED'")

    before = len(gems_runs())
    first, second = (
        offline("--algorithm", "iql", "--ranker", "gems_offline", "--label-clicks", "zero", "--register", "false")
        for _ in range(2)
    )
    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    assert len(gems_runs()) == before + 1  # pretrained once on the collected dataset, then found by lineage
    runs = MlflowClient().search_runs(["0"], "tags.ranker = 'gems_offline'")
    assert {r.data.tags["upstream.gems"] for r in runs} == {f"runs:/{gems_runs()[0].info.run_id}/gems"}
    assert {r.data.tags["dataset_run"] for r in runs} == {workflow["expert"]}
    assert {r.data.tags["action_labels"] for r in runs} == {"GeMS encoder mean (zero clicks)"}


def test_topk_ideal_acts_through_the_true_item_embeddings(workflow):
    given = ("--dataset", workflow["mix"])
    threads = torch.get_num_threads()
    try:  # by default a run uses every core it may
        args = ("--algorithm", "td3_bc", "--ranker", "topk_ideal", *given, "--register", "false")
        assert offline(*args, threads=None).exit_code == 0
        assert torch.get_num_threads() == usable_cores()
    finally:
        torch.set_num_threads(threads)
    run = newest_offline_run()
    assert run.data.tags["threads"] == str(usable_cores())
    assert run.data.tags["action_labels"] == "mean item embedding of the slate" and "upstream.gems" not in run.data.tags
    # A given dataset's tags say what it collected, whatever the (unused) --quality default is.
    assert run.data.tags["dataset_run"] == workflow["mix"] and run.data.tags["dataset_quality"] == "mix"
    assert run.data.params["dataset"] == workflow["mix"]


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_resumed_run_ends_with_the_metrics_of_an_uninterrupted_one(workflow, monkeypatch, one_thread):
    cfg = TrainOfflineConfig.resolve(
        ENV, "quick", algorithm="td3_bc", register=False, agent={"batch_episodes": 4}, **SCHEDULE
    )
    uninterrupted = MlflowClient().get_run(train_offline.run(cfg))
    original = train_offline._Session.on_checkpoint

    def killed_after_the_first_checkpoint(self, step, state):
        original(self, step, state)
        raise KeyboardInterrupt

    monkeypatch.setattr(train_offline._Session, "on_checkpoint", killed_after_the_first_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        train_offline.run(cfg)
    (killed,) = MlflowClient().search_runs(["0"], "tags.stage = 'train_offline' and attributes.status = 'KILLED'")
    monkeypatch.setattr(train_offline._Session, "on_checkpoint", original)
    run_id = killed.info.run_id
    torch.set_num_threads(usable_cores())  # what a plain --resume would take, were it not for the run's tag
    assert CliRunner().invoke(main, ["train-offline", "--resume", run_id]).exit_code == 0
    assert torch.get_num_threads() == 1  # the killed run's count
    resumed = MlflowClient().get_run(run_id)
    assert resumed.info.status == "FINISHED" and resumed.data.tags["threads"] == "1"

    def curves(run):
        client = MlflowClient()
        return {
            key: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
            for key in run.data.metrics
        }

    assert curves(resumed) == curves(uninterrupted)
    with pytest.raises(SlateRLError, match="already finished"):
        train_offline.resumable(run_id)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--algorithm", "ddpg"], "unknown algorithm 'ddpg'; choose one of: bc, td3_bc, iql, cql"),
        (["--steps", "0"], "steps must be a positive number (got 0)"),
        (["--algorithm", "iql", "--set", "expectile=1.5"], "expectile must lie in (0, 1) (got 1.5)"),
        (
            ["--quality", "medium"],
            "no finished collect run of quality 'medium' on focused_mix; collected datasets on focused_mix: expert (",
        ),
        (
            ["--env-param", "boredom_threshold=3"],
            "the 1 finished collect run(s) of quality 'expert' on focused_mix were made on another simulator",
        ),
        (["--dataset", "EXPERT", "--env-param", "boredom_threshold=3"], "was made on another simulator"),
    ],
)
def test_bad_input_is_refused_with_no_registered_version(workflow, args, message):
    args = [workflow["expert"] if a == "EXPERT" else a for a in args]
    versions_before = len(models.versions(ENV))
    result = offline(*args)
    assert result.exit_code == 1 and message in result.output, result.output
    assert len(models.versions(ENV)) == versions_before
    for run in MlflowClient().search_runs(["0"], "tags.stage = 'train_offline' and attributes.status != 'FINISHED'"):
        assert run.info.status in ("FAILED", "KILLED")


def test_ranker_gems_needs_policies_that_acted_through_a_gems(workflow):
    sizes = dict(episodes=10, batch_size=10, reference_episodes=10, format="npz")
    collect.run(CollectConfig.resolve(ENV, "quick", quality="random", **sizes))
    result = offline("--quality", "random", "--ranker", "gems")
    assert result.exit_code == 1
    assert "its sources (random) are baselines that act through none; use --ranker gems_offline or topk_ideal" in (
        result.output
    )


def test_divergence_ends_the_run_failed(workflow, monkeypatch):
    from slate_rl.offline import training

    monkeypatch.setattr(training, "DIVERGENCE_PATIENCE", 2)
    monkeypatch.setattr(training, "DIVERGENCE_FACTOR", -1e9)  # any Q counts as diverged
    result = offline("--algorithm", "cql")
    assert result.exit_code == 1
    assert "training diverged: the mean Q of the dataset's actions stayed above" in result.output
    run = newest_offline_run()
    assert run.info.status == "FAILED" and "registered_version" not in run.data.tags
    assert np.isfinite(run.data.metrics["val_return"])
