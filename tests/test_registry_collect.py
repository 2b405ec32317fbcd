"""Registry aliases choose the collection policies: train -> register -> promote -> collect -> load."""

from __future__ import annotations

import csv

import minari
import mlflow
import numpy as np
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from slate_rl.cli import main
from slate_rl.data import load_offline, minari_root
from slate_rl.stage_configs import CollectConfig, TrainOnlineConfig
from slate_rl.stages import collect, registry, train_online
from slate_rl.tracking.lineage import artifact_dir

ENV = "focused_mix"
TINY = dict(episodes=60, warmup_episodes=20, val_every=20, val_episodes=20, test_episodes=200, save_every=20)


@pytest.fixture(scope="module")
def registered(module_store):
    """Versions 1 (trained, best), 2 (built-in random), 3 (episode 20 of the same run), with aliases."""
    run_id = train_online.run(TrainOnlineConfig.resolve(ENV, "quick", method="sac_topk_ideal", **TINY))
    assert registry.register_random(ENV, seed=0) == "2"
    assert registry.register_checkpoint(run_id, "episode_000020") == "3"
    runner = CliRunner()
    for version, alias in (("1", "expert"), ("3", "medium"), ("2", "random")):
        result = runner.invoke(main, ["registry", "promote", ENV, version, "--as", alias])
        assert result.exit_code == 0, result.output
    return run_id


def _collect(**values):
    return collect.run(
        CollectConfig.resolve(
            ENV, "quick", **{"episodes": 100, "seed": 1, "batch_size": 50, "reference_episodes": 50, **values}
        )
    )


def test_collect_by_alias_gives_consistent_datasets_in_both_formats(registered):
    run_id = _collect(quality="expert")
    episodes = load_offline(run_id)
    assert episodes.slates.shape == (100, 101, 10) and episodes.source_names == ("expert",)
    np.testing.assert_array_equal(episodes.rewards, episodes.clicks[:, 1:].sum(axis=2))
    transitions = load_offline(f"runs:/{run_id}", kind="transitions")
    assert len(transitions) == 100 * 100
    same_episode = transitions["episode_ids"][1:] == transitions["episode_ids"][:-1]
    np.testing.assert_array_equal(
        transitions["next_slates"][:-1][same_episode], transitions["slates"][1:][same_episode]
    )
    assert (transitions["timeouts"] == (transitions["timesteps"] == 99)).all() and not transitions["terminals"].any()
    # Minari: the canonical format, loadable with Minari itself
    folder = artifact_dir(MlflowClient().get_run(run_id), "dataset/minari")
    with minari_root(folder):
        dataset = minari.load_dataset(f"slate-rl/{ENV}/expert-v0")
        first = next(dataset.iterate_episodes())
    assert dataset.total_episodes == 100 and first.truncations[-1] and not first.terminations.any()
    np.testing.assert_array_equal(first.observations["slate"][0], episodes.slates[0, 0])
    # the dataset's mean return agrees with the policy's test return (independent users): 3 standard errors
    with open(artifact_dir(MlflowClient().get_run(registered), "test/test_returns.csv")) as handle:
        test = np.array([float(row["return"]) for row in csv.DictReader(handle)])
    returns = episodes.rewards.sum(axis=1)
    stderr = np.sqrt(returns.var(ddof=1) / len(returns) + test.var(ddof=1) / len(test))
    assert abs(returns.mean() - test.mean()) < 3 * stderr
    meta = episodes.metadata
    assert meta["sources"]["expert"]["model_version"] == "1"
    assert set(meta["reference_scores"]) == {"random", "expert"}


def test_moving_an_alias_changes_the_next_collection(registered):
    CliRunner().invoke(main, ["registry", "promote", ENV, "3", "--as", "expert"])
    try:
        episodes = load_offline(_collect(quality="expert", format="npz"))
    finally:
        CliRunner().invoke(main, ["registry", "promote", ENV, "1", "--as", "expert"])
    assert episodes.metadata["sources"]["expert"]["model_version"] == "3"


def test_mix_labels_every_episode_with_its_source(registered):
    episodes = load_offline(_collect(mix="expert:40,expert:30:0.5,random:30", format="npz"))
    counts = {name: int((episodes.sources == code).sum()) for code, name in enumerate(episodes.source_names)}
    assert counts == {"expert": 40, "expert_noisy": 30, "random": 30}


def test_registered_policy_serves_through_pyfunc(registered):
    model = mlflow.pyfunc.load_model(f"models:/slate-rl.{ENV}@expert")
    slates = model.predict({"slates": np.full((3, 2, 10), 5), "clicks": np.zeros((3, 2, 10), dtype=np.int64)})
    assert slates.shape == (3, 10) and (np.sort(slates, axis=1)[:, 1:] != np.sort(slates, axis=1)[:, :-1]).all()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--quality", "medium"], "has no alias 'medium' (aliases set: expert -> v1, random -> v2"),
        (["--policy", "models:/slate-rl.focused_mix/9"], "has no version 9"),
        (["--policy", "models:/slate-rl.diffuse_mix@expert"], "is a policy of 'diffuse_mix', but env = 'focused_mix'"),
        (["--quality", "expert", "--episodes", "0"], "episodes must be >= 1"),
        (["--quality", "expert", "--epsilon-noise", "1.5"], "must lie in [0, 1]"),
        (["--mix", "expert:100,random:50"], "add up to 150 episodes, not episodes = 100"),
        (["--quality", "random", "--epsilon-noise", "0.2"], "needs a policy acting in a latent space"),
    ],
)
def test_bad_collect_input(registered, args, message):
    CliRunner().invoke(main, ["registry", "demote", ENV, "--alias", "medium"])
    try:
        result = CliRunner().invoke(main, ["collect", "--env", ENV, "--preset", "quick", "--episodes", "100", *args])
    finally:
        CliRunner().invoke(main, ["registry", "promote", ENV, "3", "--as", "medium"])
    assert result.exit_code == 1 and message in result.output, result.output
    for run in MlflowClient().search_runs(["0"], "tags.stage = 'collect' and attributes.status != 'FINISHED'"):
        assert run.info.status == "FAILED"
        assert not [f for f in MlflowClient().list_artifacts(run.info.run_id) if f.path == "dataset"]
