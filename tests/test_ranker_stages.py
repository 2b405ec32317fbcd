"""pretrain_gems and train_mf as stages: what their runs hold, lineage reuse, bad input."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch
from mlflow.tracking import MlflowClient

from slate_rl.errors import SlateRLError
from slate_rl.rankers.mf import topic_alignment
from slate_rl.stage_configs import GenerateDatasetConfig, PretrainGemsConfig, TrainMFConfig
from slate_rl.stages import generate_dataset, pretrain_gems, train_mf
from slate_rl.stages.environment import make_env
from test_mlflow_project import mlflow_run


@pytest.fixture
def small_dataset(tracking_store) -> str:
    config = GenerateDatasetConfig.resolve("focused_mix", "quick", n_sessions=120, chunk_size=120)
    return f"runs:/{generate_dataset.run(config)}/dataset"


@pytest.mark.slow
def test_pretrain_gems_entry_point_logs_model_and_reuses_the_dataset(tracking_store):
    params = {"env": "diffuse_mix", "preset": "quick", "epochs": "1", "latent_dim": "16"}
    first = mlflow_run(tracking_store, "pretrain_gems", **params)
    assert first.returncode == 0, first.stderr[-3000:]
    client = MlflowClient()
    (gems,) = client.search_runs(["0"], "tags.stage = 'pretrain_gems'")
    assert gems.info.status == "FINISHED" and gems.data.params["latent_dim"] == "16"
    for name in ("loss", "slate_loss", "click_loss", "kl_loss", "slot_accuracy", "click_accuracy"):
        assert len(client.get_metric_history(gems.info.run_id, f"val/{name}")) == 1, name  # one per epoch
    assert gems.data.metrics["val/slot_accuracy"] > 0.01  # chance is 0.001
    assert {"gems", "checkpoint", "console.log"} <= {f.path for f in client.list_artifacts(gems.info.run_id)}
    decoder = pretrain_gems.load_decoder(gems.info.run_id)
    assert decoder.action_dim == 16 and bool((decoder.action_scale > 0).all())
    assert decoder.decode(decoder.action_center.repeat(4, 1)).shape == (4, 10)

    second = mlflow_run(tracking_store, "pretrain_gems", **params)
    assert second.returncode == 0, second.stderr[-3000:]
    datasets = client.search_runs(["0"], "tags.stage = 'generate_dataset'")
    assert len(datasets) == 1  # generated once, as a child of the first call, then reused
    assert "reusing finished run" in second.stderr
    runs = client.search_runs(["0"], "tags.stage = 'pretrain_gems'")
    assert {r.data.tags["upstream.dataset"] for r in runs} == {f"runs:/{datasets[0].info.run_id}/dataset"}


def test_train_mf_stage_logs_an_item_table_that_tracks_popularity(small_dataset):
    cfg = TrainMFConfig.resolve("focused_mix", "quick", dataset=small_dataset, eval_every=50, max_seconds=20)
    run_id = train_mf.run(cfg)
    run = MlflowClient().get_run(run_id)
    table = train_mf.load_item_table(run_id)
    assert table.shape == (1000, 20) and torch.isfinite(table).all()
    assert abs(run.data.metrics["popularity_correlation"]) > 0.3
    simulator = make_env(cfg)
    expected = topic_alignment(table, simulator.item_embeddings, simulator.item_topics)
    assert (run.data.metrics["topic_r2"], run.data.metrics["neighbour_same_topic"]) == pytest.approx(expected)
    assert MlflowClient().get_metric_history(run_id, "val/bpr_loss")
    assert train_mf.find_or_train(cfg, small_dataset.split("/")[1], None) == run_id  # found by lineage
    reference = dataclasses.replace(cfg, reference_validation=True, max_seconds=2)  # another model: not reused
    reference_run = train_mf.find_or_train(reference, small_dataset.split("/")[1], None)
    assert reference_run != run_id
    assert MlflowClient().get_run(reference_run).data.params["reference_validation"] == "true"


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("latent_dim", 0, "latent_dim must be >= 1"),
        ("lambda_kl", -1.0, "lambda_kl is a loss weight and must be >= 0"),
        ("loss_convention", "other", "loss_convention must be 'reference' or 'standard'"),
    ],
)
def test_bad_gems_parameters(field, value, message):
    with pytest.raises(SlateRLError, match=message):
        PretrainGemsConfig.resolve("focused_mix", "quick", **{field: value})


def test_dataset_of_another_environment_or_kind_is_refused(small_dataset):
    with pytest.raises(
        SlateRLError,
        match="made on another simulator: environment = 'focused_mix' there, "
        "'diffuse_mix' here; item table fingerprint = ",
    ):
        pretrain_gems.run(PretrainGemsConfig.resolve("diffuse_mix", "quick", dataset=small_dataset, epochs=1))
    other = train_mf.run(TrainMFConfig.resolve("focused_mix", "quick", dataset=small_dataset, max_steps=5))
    with pytest.raises(SlateRLError, match="is a 'train_mf' run, not a 'generate_dataset' or 'collect' run"):
        pretrain_gems.run(PretrainGemsConfig.resolve("focused_mix", "quick", dataset=f"runs:/{other}", epochs=1))
    with pytest.raises(SlateRLError, match="no run 0123456789abcdef0123456789abcdef"):
        pretrain_gems.run(
            PretrainGemsConfig.resolve(
                "focused_mix", "quick", epochs=1, dataset="runs:/0123456789abcdef0123456789abcdef"
            )
        )
    with pytest.raises(
        SlateRLError,
        match=r"'runs:/deadbeef': a run id has 32 lower-case hexadecimal characters "
        r"\('deadbeef' has 8\)",
    ):
        pretrain_gems.run(PretrainGemsConfig.resolve("focused_mix", "quick", epochs=1, dataset="runs:/deadbeef"))
    with pytest.raises(SlateRLError, match=r"'gems\.ckpt' is not a run reference"):
        pretrain_gems.run(PretrainGemsConfig.resolve("focused_mix", "quick", epochs=1, dataset="gems.ckpt"))
    failed = MlflowClient().search_runs(["0"], "tags.stage = 'pretrain_gems'")
    assert failed and all(r.info.status == "FAILED" for r in failed)
    assert all(not MlflowClient().list_artifacts(r.info.run_id, "gems") for r in failed)


class _MetricsRecorder:
    """Stands in for the stage's MLflow run: the metrics it was given, with their steps."""

    def __init__(self) -> None:
        self.logged: list[tuple[int, dict[str, float]]] = []

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        self.logged.append((step, metrics))


def test_mf_evaluations_are_logged_while_it_trains_with_a_line_at_most_every_interval(caplog):
    recorder, quiet = _MetricsRecorder(), _MetricsRecorder()
    every, seldom = train_mf._EvaluationLog(recorder, interval=0.0), train_mf._EvaluationLog(quiet, interval=3600.0)
    with caplog.at_level(logging.INFO, logger="slate_rl"):
        for step, loss in [(1, 0.69), (1000, 0.42), (2000, 0.45)]:
            every(step, loss)
            seldom(step, loss)
    assert (
        recorder.logged
        == quiet.logged
        == [
            (1, {"val/bpr_loss": 0.69}),
            (1000, {"val/bpr_loss": 0.42}),
            (2000, {"val/bpr_loss": 0.45}),
        ]
    )
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("train_mf: step")]
    assert len(lines) == 3  # none from the run with an hour between lines
    assert lines[-1] == "train_mf: step 2000, held-out BPR loss 0.4500 (best 0.4200)"
