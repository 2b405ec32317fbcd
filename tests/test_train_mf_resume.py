"""train_mf resumed into the same run after a failure: the same item table and metrics as an uninterrupted run, no
metric step logged twice, and refusals of runs that cannot be resumed."""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest
import torch
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from slate_rl.cli import main
from slate_rl.errors import SlateRLError
from slate_rl.stage_configs import GenerateDatasetConfig, TrainMFConfig
from slate_rl.stages import generate_dataset, on_dataset, train_mf


@pytest.fixture(scope="module")
def dataset(module_store) -> str:
    config = GenerateDatasetConfig.resolve("focused_mix", "quick", n_sessions=60, chunk_size=60)
    return f"runs:/{generate_dataset.run(config)}/dataset"


def _config(dataset: str, **changes) -> TrainMFConfig:
    return TrainMFConfig.resolve(
        "focused_mix", "quick", **{"dataset": dataset, "eval_every": 5, "max_steps": 60, "save_every": 10, **changes}
    )


def _points(run_id: str) -> list[tuple[str, int, float]]:
    """Every (metric, step, value) the run holds, in a stable order."""
    client = MlflowClient()
    keys = client.get_run(run_id).data.metrics
    return sorted((m.key, m.step, m.value) for key in keys for m in client.get_metric_history(run_id, key))


def test_resumed_run_ends_as_the_uninterrupted_one(dataset, monkeypatch):
    uninterrupted = train_mf.run(_config(dataset))
    original = train_mf._EvaluationLog.__call__

    def fail_after_step_25(self, steps, loss):  # logs the evaluations up to step 25, then dies
        if steps > 25:
            raise RuntimeError("killed")
        original(self, steps, loss)

    monkeypatch.setattr(train_mf._EvaluationLog, "__call__", fail_after_step_25)
    with pytest.raises(RuntimeError, match="killed"):
        train_mf.run(_config(dataset))
    client = MlflowClient()
    (failed,) = client.search_runs(["0"], "tags.stage = 'train_mf' and attributes.status = 'FAILED'")
    run_id = failed.info.run_id
    assert train_mf.load_resume_state(failed)["training"]["steps"] == 20  # the last state before it died
    assert max(m.step for m in client.get_metric_history(run_id, "val/bpr_loss")) > 20  # logged after that state
    monkeypatch.setattr(train_mf._EvaluationLog, "__call__", original)
    with pytest.raises(SlateRLError, match="was started with another configuration"):
        train_mf.run(_config(dataset, max_steps=70), resume_run=run_id)
    assert train_mf.resumable(run_id) == _config(dataset)

    torch.manual_seed(12345)  # training draws from its own generator only
    result = CliRunner().invoke(main, ["train-mf", "--resume", run_id])
    assert result.exit_code == 0, result.output
    assert f"mf: runs:/{run_id}/mf" in result.output
    assert client.get_run(run_id).info.status == "FINISHED"
    assert torch.equal(train_mf.load_item_table(run_id), train_mf.load_item_table(uninterrupted))
    points = _points(run_id)
    assert points == _points(uninterrupted)  # the same values at the same steps
    assert not [pair for pair, n in Counter((key, step) for key, step, _ in points).items() if n > 1]
    assert {"console.log", "console-1.log", "mf", "resume"} <= {f.path for f in client.list_artifacts(run_id)}
    assert train_mf.find_or_train(_config(dataset), dataset.split("/")[1], None) in (uninterrupted, run_id)


def test_how_often_the_state_is_saved_is_not_part_of_the_model(dataset):
    dataset_run = dataset.split("/")[1]
    every_step = on_dataset.key(train_mf.STAGE, _config(dataset, save_every=1), dataset_run)
    assert every_step == on_dataset.key(train_mf.STAGE, _config(dataset), dataset_run)
    assert every_step != on_dataset.key(train_mf.STAGE, _config(dataset, max_steps=70), dataset_run)


def test_resume_refuses_runs_it_cannot_continue(dataset):
    finished = train_mf.run(_config(dataset, max_steps=3))
    with pytest.raises(SlateRLError, match="already finished; nothing to resume"):
        train_mf.resumable(finished)
    assert MlflowClient().get_run(finished).info.status == "FINISHED"  # left as it was
    with pytest.raises(SlateRLError, match="is not a train_mf run"):
        train_mf.resumable(dataset.split("/")[1])
    client = MlflowClient()
    bare = client.create_run("0", tags={"stage": "train_mf"}).info.run_id
    client.set_terminated(bare, "KILLED")
    result = CliRunner().invoke(main, ["train-mf", "--resume", bare])
    assert result.exit_code == 1, result.output
    assert "has no resume state (it stopped before saving one; one is saved every save_every training" in result.output
    assert client.get_run(bare).info.status == "KILLED"


def test_a_resume_state_saved_before_a_field_existed_gives_that_field_its_default():
    cfg = TrainMFConfig.resolve("focused_mix", "quick", dataset="runs:/0123/dataset", max_steps=60)
    older = {name: value for name, value in dataclasses.asdict(cfg).items() if name != "reference_validation"}
    assert train_mf.config_of({"config": older}) == cfg
    assert train_mf.config_of({"config": {**older, "max_steps": 61}}) != cfg
