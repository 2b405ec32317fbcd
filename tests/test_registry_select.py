"""`registry select`: expert, medium and random chosen by rule from a tiny real training run, and its refusals."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST
from mlflow.tracking import MlflowClient

from slate_rl import envs
from slate_rl.cli import main
from slate_rl.envs.spec import EnvSpec
from slate_rl.stage_configs import TrainOnlineConfig
from slate_rl.stages import registry, train_online
from slate_rl.tracking import models
from slate_rl.tracking.results import metric_curve
from synthetic_runs import add_train_online_run

ENV = "focused_mix"
TINY = dict(episodes=80, warmup_episodes=20, val_every=20, val_episodes=20, test_episodes=20, save_every=20)


@pytest.fixture(scope="module")
def trained(module_store):
    """A finished run with validations and periodic checkpoints at episodes 20, 40, 60, 80 (registered as v1)."""
    return train_online.run(TrainOnlineConfig.resolve(ENV, "quick", method="sac_topk_ideal", **TINY))


def _expected_medium(run_id: str, fraction: float) -> tuple[int, float]:
    """By hand: the checkpoint episode whose validation return is nearest fraction x best (earliest on a tie),
    among those after the warm-up (SAC makes no update before it, so earlier checkpoints hold the initial network)."""
    curve = metric_curve(run_id, "val_return")
    best = max(value for _, value in curve)
    trained = [(episode, value) for episode, value in curve if episode > TINY["warmup_episodes"]]
    episode, _ = min(trained, key=lambda item: (abs(item[1] - fraction * best), item[0]))
    return episode, best


def test_select_registers_and_aliases_by_the_rule(trained):
    episode, best = _expected_medium(trained, 0.5)
    result = CliRunner().invoke(main, ["registry", "select", "--run", f"runs:/{trained}", "--medium", "0.5"])
    assert result.exit_code == 0, result.output
    aliases = models.aliases(ENV)
    expert, medium, random = (models.get_version(ENV, aliases[a]) for a in ("expert", "medium", "random"))
    assert expert.version == 1  # the run's own registration of its best checkpoint, reused
    assert (medium.tags["run_id"], medium.tags["checkpoint"]) == (trained, f"episode_{episode:06d}")
    assert float(medium.tags["val_return"]) == pytest.approx(dict(metric_curve(trained, "val_return"))[episode])
    assert (random.tags["method"], random.tags["checkpoint"]) == ("random", "builtin")
    assert f"best validation return {best:.2f}" in result.output
    assert f"closest to 0.5 x {best:.2f} = {0.5 * best:.2f}: episode {episode} " in result.output
    assert "40: " in result.output and "80: " in result.output  # every candidate with its validation return
    assert "20: " not in result.output  # the warm-up's checkpoint: no update yet
    assert "left out, taken before the first update (the initial network): 20" in result.output


def test_select_again_reuses_versions_and_keeps_a_set_random_alias(trained):
    registry.select_policies(trained, 0.5)
    random_before = models.aliases(ENV)["random"]
    selection = registry.select_policies(trained, 0.99)
    expected, _ = _expected_medium(trained, 0.99)
    assert selection.medium_episode == expected and selection.random_version is None
    assert models.aliases(ENV)["random"] == random_before
    assert models.aliases(ENV)["medium"] == selection.medium_version
    registry.select_policies(trained, 0.99)  # a checkpoint registered before is reused: one version per checkpoint
    assert len(models.versions(ENV)) == len({(v.tags["run_id"], v.tags["checkpoint"]) for v in models.versions(ENV)})


def test_select_moves_a_random_alias_that_plays_another_simulator(trained):
    other = registry.register_random(ENV, seed=0, preset="quick", simulator=envs.make(ENV, boredom_threshold=7))
    models.set_alias(ENV, other, "random")
    selection = registry.select_policies(trained, 0.5)
    moved = models.get_version(ENV, models.aliases(ENV)["random"])
    assert selection.random_version == str(moved.version) != other
    assert (moved.tags["method"], moved.tags["checkpoint"]) == ("random", "builtin")
    expert_simulator = registry.load_policy(ENV, selection.expert_version)[1]
    assert not EnvSpec.of(registry.load_policy(ENV, "random")[1]).differences(EnvSpec.of(expert_simulator))
    assert f"version {other}, which the alias held, plays another simulator: boredom_threshold 7" in (
        selection.describe()
    )
    assert registry.select_policies(trained, 0.5).random_version is None  # now on the run's simulator: kept


@pytest.mark.parametrize("fraction", ["0", "1", "1.5", "-0.2"])
def test_select_refuses_a_fraction_outside_0_1(trained, fraction):
    result = CliRunner().invoke(main, ["registry", "select", "--run", trained, "--medium", fraction])
    assert result.exit_code == 1 and "must lie strictly between 0 and 1" in result.output, result.output


def test_select_refuses_runs_it_cannot_choose_from(trained):
    registry.select_policies(trained, 0.5)  # sets the alias random (a builtin_policy run)
    client = MlflowClient()
    failed = add_train_online_run("sac_topk_ideal", ENV, 0, 100.0, preset="quick", status="FAILED")
    no_checkpoints = add_train_online_run("sac_topk_ideal", ENV, 0, 100.0, preset="quick", val_curve=[(20, 50.0)])
    client.log_metric(no_checkpoints, "best_val_return", 50.0)
    client.log_metric(no_checkpoints, "best_episode", 20)
    never_validated = add_train_online_run("random", ENV, 0, 30.0, preset="quick")
    builtin = models.get_version(ENV, "random").run_id
    cases = {
        failed: "is FAILED: only FINISHED runs",
        builtin: "is a 'builtin_policy' run, not a 'train_online' run",
        no_checkpoints: "has no periodic checkpoints",
        never_validated: "never validated",
    }
    versions = len(models.versions(ENV))
    for run_id, message in cases.items():
        result = CliRunner().invoke(main, ["registry", "select", "--run", run_id])
        assert result.exit_code == 1 and message in result.output, result.output
    assert len(models.versions(ENV)) == versions  # nothing registered


def test_jobs_registering_at_the_same_moment_all_get_their_version(tracking_store, monkeypatch):
    registry.register_random(ENV, seed=0)  # the registered model exists now

    def not_yet(self, name):  # a job that looked before the model above was created
        raise MlflowException(f"Registered Model with name={name} not found", RESOURCE_DOES_NOT_EXIST)

    monkeypatch.setattr(MlflowClient, "get_registered_model", not_yet)
    registry.register_random(ENV, seed=1)  # creating it again fails: the job goes on with the existing one
    monkeypatch.undo()
    assert sorted(int(v.version) for v in models.versions(ENV)) == [1, 2]
