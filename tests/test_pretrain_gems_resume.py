"""pretrain_gems resumed into the same run after a failure: the same model and metrics as an uninterrupted run,
no metric step logged twice, and refusals of runs that cannot be resumed."""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest
import torch
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from slate_rl.cli import main
from slate_rl.errors import SlateRLError
from slate_rl.safe_load import torch_load
from slate_rl.stage_configs import GenerateDatasetConfig, PretrainGemsConfig
from slate_rl.stages import generate_dataset, pretrain_gems
from slate_rl.tracking.lightning import EpochState


@pytest.fixture(scope="module")
def dataset(module_store) -> str:
    config = GenerateDatasetConfig.resolve("focused_mix", "quick", n_sessions=60, chunk_size=60)
    return f"runs:/{generate_dataset.run(config)}/dataset"


def _config(dataset: str) -> PretrainGemsConfig:
    return PretrainGemsConfig.resolve(
        "focused_mix", "quick", dataset=dataset, epochs=3, latent_dim=8, batch_size=128, bound_sessions=20
    )


def _points(run_id: str) -> list[tuple[str, int, float]]:
    """Every (metric, step, value) the run holds, in a stable order."""
    client = MlflowClient()
    keys = client.get_run(run_id).data.metrics
    return sorted((m.key, m.step, m.value) for key in keys for m in client.get_metric_history(run_id, key))


def _weights(run_id: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(best-validation VAE in the 'gems' artifact, VAE after the last epoch in the resume state)."""
    state = pretrain_gems.load_resume_state(MlflowClient().get_run(run_id))
    last = torch_load(state["checkpoint"], "Lightning checkpoint")["state_dict"]
    return pretrain_gems.load_payload(run_id)["vae"], last


def test_resumed_run_ends_as_the_uninterrupted_one(dataset, monkeypatch):
    uninterrupted = pretrain_gems.run(_config(dataset))
    val_losses = [m.value for m in MlflowClient().get_metric_history(uninterrupted, "val/loss")]
    best_epoch = 1 + val_losses.index(min(val_losses))
    assert best_epoch < 3, "the check of the restored best checkpoint needs a later epoch worse than the best"

    original = EpochState._publish

    def fail_after_best_epoch(self):  # the next epoch's metrics are logged, but not its resume state
        if self._pending is not None and self._pending["epoch"] == best_epoch + 1:
            raise RuntimeError("killed")
        original(self)

    monkeypatch.setattr(EpochState, "_publish", fail_after_best_epoch)
    with pytest.raises(RuntimeError, match="killed"):
        pretrain_gems.run(_config(dataset))
    (failed,) = MlflowClient().search_runs(["0"], "tags.stage = 'pretrain_gems' and attributes.status = 'FAILED'")
    run_id = failed.info.run_id
    assert len(MlflowClient().get_metric_history(run_id, "val/loss")) == best_epoch + 1
    assert pretrain_gems.load_resume_state(failed)["epoch"] == best_epoch
    monkeypatch.setattr(EpochState, "_publish", original)
    with pytest.raises(SlateRLError, match="was started with another configuration"):
        pretrain_gems.run(
            PretrainGemsConfig.resolve("focused_mix", "quick", dataset=dataset, epochs=4), resume_run=run_id
        )

    torch.manual_seed(12345)  # training draws from its own generators only
    assert pretrain_gems.run(pretrain_gems.resumable(run_id), resume_run=run_id) == run_id
    client = MlflowClient()
    assert client.get_run(run_id).info.status == "FINISHED"
    for resumed, expected in zip(_weights(run_id), _weights(uninterrupted), strict=True):
        assert resumed.keys() == expected.keys()
        assert all(torch.equal(resumed[k], expected[k]) for k in expected)
    points = _points(run_id)
    assert points == _points(uninterrupted)  # the same values at the same steps
    assert not [pair for pair, n in Counter((key, step) for key, step, _ in points).items() if n > 1]  # so in both
    assert len(client.get_metric_history(run_id, "val/loss")) == 3
    assert {"console.log", "console-1.log", "gems", "checkpoint", "resume"} <= {
        f.path for f in client.list_artifacts(run_id)
    }


def test_resume_refuses_runs_it_cannot_continue(dataset):
    finished = pretrain_gems.run(
        PretrainGemsConfig.resolve("focused_mix", "quick", dataset=dataset, epochs=1, latent_dim=8, bound_sessions=20)
    )
    with pytest.raises(SlateRLError, match="already finished; nothing to resume"):
        pretrain_gems.resumable(finished)
    with pytest.raises(SlateRLError, match="already finished"):
        pretrain_gems.run(_config(dataset), resume_run=finished)
    assert MlflowClient().get_run(finished).info.status == "FINISHED"  # left as it was
    with pytest.raises(SlateRLError, match="is not a pretrain_gems run"):
        pretrain_gems.resumable(dataset.split("/")[1])
    client = MlflowClient()
    bare = client.create_run("0", tags={"stage": "pretrain_gems"}).info.run_id
    client.set_terminated(bare, "FAILED")
    with pytest.raises(SlateRLError, match=r"has no resume state .* start a new run"):
        pretrain_gems.resumable(bare)


def test_cli_resume_of_an_unknown_run(tracking_store):
    result = CliRunner().invoke(main, ["pretrain-gems", "--resume", "0123456789abcdef0123456789abcdef"])
    assert result.exit_code == 1, result.output
    assert "no run 0123456789abcdef0123456789abcdef to resume" in result.output


def test_a_resume_state_saved_before_a_field_existed_gives_that_field_its_default():
    cfg = PretrainGemsConfig.resolve("focused_mix", "quick", dataset="runs:/0123/dataset", epochs=3)
    older = {name: value for name, value in dataclasses.asdict(cfg).items() if name != "precision"}
    assert pretrain_gems.config_of({"config": older}) == cfg
    changed = {**older, "epochs": 4}
    assert pretrain_gems.config_of({"config": changed}) != cfg
