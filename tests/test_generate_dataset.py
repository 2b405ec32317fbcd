"""The generate_dataset stage: run contents, lineage reuse, and bad input (clear message, FAILED run, no dataset)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from slate_rl.cli import main
from slate_rl.errors import SlateRLError
from slate_rl.stage_configs import GenerateDatasetConfig
from slate_rl.stages import generate_dataset as stage


def _config(**overrides):
    values = {"n_sessions": 50, "chunk_size": 20, **overrides}
    return GenerateDatasetConfig.resolve("focused_mix", "quick", **values)


def _artifacts(client, run_id, path=""):
    return {f.path for f in client.list_artifacts(run_id, path)}


def test_run_logs_config_metrics_and_a_loadable_dataset(tracking_store):
    run_id = stage.run(_config())
    client = MlflowClient()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["stage"] == "generate_dataset" and run.data.tags["env"] == "focused_mix"
    assert run.data.params["n_sessions"] == "50" and run.data.params["epsilon"] == "0.5"
    assert run.data.params["sim.click_model"] == "mixPBM" and run.data.params["sim.diversity_penalty"] == "1.0"
    assert {"console.log", "dataset"} <= _artifacts(client, run_id)
    experiment = client.get_experiment(run.info.experiment_id)  # the UI opens it on runs, not GenAI traces
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"

    data = stage.load_from_run(f"runs:/{run_id}/dataset")
    assert data.n_sessions == 50 and data.slates.shape == (50, 100, 10)
    assert data.slates.min() >= 0 and data.slates.max() < 1000  # oracle slots filled
    returns = data.clicks().sum(axis=(1, 2))
    assert run.data.metrics["mean_return"] == pytest.approx(returns.mean())
    assert run.data.metrics["clicks_per_step"] == pytest.approx(returns.mean() / 100)
    assert 0.0 < run.data.metrics["bored_step_share"] < 1.0


def test_dataset_does_not_depend_on_chunking_of_the_writer_but_on_the_stream(tracking_store):
    a = stage.load_from_run(stage.run(_config()))
    b = stage.load_from_run(stage.run(_config()))
    np.testing.assert_array_equal(a.slates, b.slates)  # same seeds -> same sessions
    c = stage.load_from_run(stage.run(_config(seed=1)))
    assert not np.array_equal(a.slates, c.slates)


def test_find_or_generate_reuses_the_finished_run(tracking_store):
    config = _config()
    first = stage.find_or_generate(config, parent=None)
    assert stage.find_or_generate(config, parent=None) == first
    assert stage.find_or_generate(_config(epsilon=0.4), parent=None) != first


def test_generated_logging_policy_matches_epsilon(tracking_store):
    data = stage.load_from_run(stage.run(_config(epsilon=1.0, n_sessions=40)))
    # epsilon = 1: every slot random, ten distinct items per slate
    sorted_slates = np.sort(data.slates.reshape(-1, 10), axis=1)
    assert (np.diff(sorted_slates, axis=1) > 0).all()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--env", "nowhere"], "unknown environment 'nowhere'; choose one of: focused_topdown"),
        (["--n-sessions", "0"], "n_sessions must be a positive"),
        (["--epsilon", "1.5"], "epsilon is the probability of a random slot and must lie in [0, 1]"),
        (["--seed", "-1"], "seed must lie in [0, 2**63) (got -1)"),
        (["--env-param", "boredom_treshold=3"], "unknown simulator parameter(s) boredom_treshold"),
    ],
)
def test_cli_rejects_bad_parameters_before_any_run(tracking_store, args, message):
    result = CliRunner().invoke(main, ["generate-dataset", "--preset", "quick", *args])
    assert result.exit_code == 1
    assert message in result.output
    assert MlflowClient().search_runs(["0"]) == []


@pytest.mark.parametrize(
    "table, message",
    [
        (torch.full((1000, 20), float("nan")), "contain NaN"),
        (-torch.rand(1000, 20), "negative entries"),
        (torch.rand(999, 20), "expected shape (1000, 20)"),
        (torch.randint(0, 5, (1000, 20)), "floating-point"),
    ],
)
def test_malformed_embeddings_fail_the_run_without_a_dataset(tracking_store, table, message):
    path = tracking_store / "bad.pt"
    torch.save(table, path)
    result = CliRunner().invoke(
        main, ["generate-dataset", "--preset", "quick", "--n-sessions", "5", "--item-embeddings", str(path)]
    )
    assert result.exit_code == 1 and message in result.output
    (run,) = MlflowClient().search_runs(["0"])
    assert run.info.status == "FAILED"
    assert "dataset" not in _artifacts(MlflowClient(), run.info.run_id)
    with pytest.raises(SlateRLError, match="is FAILED: only FINISHED runs"):
        stage.load_from_run(run.info.run_id)


def test_wrong_kind_of_run_is_refused(tracking_store):
    client = MlflowClient()
    other = client.create_run("0", tags={"stage": "train_mf"}).info.run_id
    client.set_terminated(other)
    with pytest.raises(SlateRLError, match="is a 'train_mf' run, not a 'generate_dataset' or 'collect' run"):
        stage.load_from_run(f"runs:/{other}/dataset")
    with pytest.raises(SlateRLError, match="not a run reference"):
        stage.load_from_run("dataset.pt")
