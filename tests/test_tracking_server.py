"""The shared tracking server: stages, pipeline and compare against it unchanged; a local store moved onto it keeps
its run ids, so lineage, registry aliases and datasets are found there afterwards from an empty folder; moving it
again copies nothing twice; a registry that disagrees is refused before anything is written; bad input."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from slate_rl import config
from slate_rl.cli import main
from slate_rl.data import load_offline
from slate_rl.stage_configs import CollectConfig, TrainOnlineConfig
from slate_rl.stages import collect, registry, train_online
from slate_rl.tracking import models
from tracking_server import free_port

pytestmark = pytest.mark.slow
ENV = "focused_mix"
TINY = dict(episodes=40, warmup_episodes=20, val_every=20, val_episodes=20, test_episodes=50, save_every=20)
TINY_ARGS = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
COLLECT = dict(episodes=50, seed=1, batch_size=50, reference_episodes=20)


@pytest.fixture(scope="module", autouse=True)
def tiny_presets(tmp_path_factory):
    """A `quick` preset with a tiny dataset and one GeMS epoch, for every stage of this module."""
    folder = tmp_path_factory.mktemp("presets")
    quick = yaml.safe_load((Path(config.__file__).parent / "presets" / "quick.yaml").read_text())
    quick["generate_dataset"] = {**quick.get("generate_dataset", {}), "n_sessions": 100, "chunk_size": 100}
    quick["pretrain_gems"] = {**quick.get("pretrain_gems", {}), "epochs": 1}
    (folder / "quick.yaml").write_text(yaml.safe_dump(quick))
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv(config.OVERRIDE_VARIABLE, str(folder))
        yield


@pytest.fixture(scope="module")
def local_store(tmp_path_factory):
    """A SQLite store with lineage: dataset -> GeMS -> SAC+GeMS policy (registered, alias expert) -> collected
    dataset. Yields its folder, the ids and the collected dataset as loaded there."""
    from conftest import use_store

    folder = tmp_path_factory.mktemp("local")
    with pytest.MonkeyPatch.context() as monkeypatch:
        use_store(folder, monkeypatch)
        policy = train_online.run(TrainOnlineConfig.resolve(ENV, "quick", method="sac_gems", **TINY))
        models.set_alias(ENV, "1", "expert")
        dataset = collect.run(CollectConfig.resolve(ENV, "quick", quality="expert", **COLLECT))
        tags = MlflowClient().get_run(policy).data.tags
        ids = {"policy": policy, "collected": dataset, **{k: tags[f"upstream.{k}"][6:] for k in ("dataset", "gems")}}
        built = {"folder": folder, "ids": ids, "runs": len(_runs()), "episodes": load_offline(dataset)}
    return built


def _migrate(source: Path, server) -> object:
    args = ["migrate", "--source", f"sqlite:///{source / 'mlflow.db'}", "--server", server.uri]
    return CliRunner().invoke(main, [*args, "--database", server.database])


def _runs(stage: str | None = None) -> list:
    client = MlflowClient()
    experiments = [e.experiment_id for e in client.search_experiments()]
    found = client.search_runs(experiments, max_results=5000)
    return [run for run in found if stage is None or run.data.tags.get("stage") == stage]


def test_a_moved_store_keeps_its_lineage_on_the_server(local_store, tracking_server, tmp_path, monkeypatch):
    from conftest import use_store

    source, ids = local_store["folder"], local_store["ids"]
    result = _migrate(source, tracking_server)
    assert result.exit_code == 0, result.output
    assert f"runs: {local_store['runs']} copied, 0 already on the server" in result.output
    assert "aliases set: 1" in result.output
    use_store(tmp_path, monkeypatch, tracking_server.uri)
    moved = source.with_name(source.name + "-moved")  # nothing of the local store is reachable any more
    source.rename(moved)
    try:
        on_server = {run.info.run_id: run for run in _runs()}
        assert set(ids.values()) <= set(on_server)
        for run_id in ids.values():
            assert on_server[run_id].info.artifact_uri.startswith("mlflow-artifacts:/")
        # the collected dataset, by its old run id
        episodes = load_offline(ids["collected"])
        np.testing.assert_array_equal(episodes.slates, local_store["episodes"].slates)
        np.testing.assert_array_equal(episodes.rewards, local_store["episodes"].rewards)
        # metric histories came whole
        client = MlflowClient()
        assert [m.step for m in client.get_metric_history(ids["policy"], "val_return")] == [20, 40]
        # train-online finds its upstream by lineage: no new dataset or GeMS run
        args = ["train-online", "--env", ENV, "--preset", "quick", "--method", "sac_gems", *TINY_ARGS]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
        assert [r.info.run_id for r in _runs("pretrain_gems")] == [ids["gems"]]
        assert [r.info.run_id for r in _runs("generate_dataset")] == [ids["dataset"]]
        newest = max(_runs("train_online"), key=lambda run: run.info.start_time)
        assert newest.info.run_id != ids["policy"]
        assert newest.data.tags["upstream.gems"] == f"runs:/{ids['gems']}"
        assert newest.data.tags["registered_version"] == "2"  # the moved version 1 kept its number
        # collect --quality expert plays the moved version 1 through the server
        args = ["collect", "--env", ENV, "--preset", "quick", "--quality", "expert"]
        result = CliRunner().invoke(main, [*args, *[f"--{k.replace('_', '-')}={v}" for k, v in COLLECT.items()]])
        assert result.exit_code == 0, result.output
        collected = result.output.split("dataset: runs:/")[1].split("/")[0]
        assert load_offline(collected).metadata["sources"]["expert"]["model_version"] == "1"
        # moving the store again copies nothing twice
        before = len(_runs())
        moved.rename(source)
        result = _migrate(source, tracking_server)
        assert result.exit_code == 0, result.output
        assert f"runs: 0 copied, {local_store['runs']} already on the server" in result.output
        assert len(_runs()) == before
    finally:
        if moved.exists():
            moved.rename(source)


def test_a_registry_that_disagrees_is_refused_before_anything_is_written(
    local_store, tracking_server, tmp_path, monkeypatch
):
    from conftest import use_store

    use_store(local_store["folder"], monkeypatch)
    version = registry.register_random(ENV, seed=0)  # the local store's next version: another one on the server
    use_store(tmp_path, monkeypatch, tracking_server.uri)
    if not any(v.version == version for v in models.versions(ENV)):
        pytest.fail("the previous test leaves the server with versions 1 and 2 of the model")
    before = len(_runs())
    result = _migrate(local_store["folder"], tracking_server)
    assert result.exit_code == 1
    assert f"slate-rl.{ENV} version {version}" in result.output and "nothing was moved" in result.output
    assert len(_runs()) == before


def test_stages_pipeline_and_compare_run_unchanged_on_the_server(server_store):
    grid = ["--envs", ENV, "--methods", "random,short_term_oracle", "--seeds", "1", "--preset", "quick"]
    result = CliRunner().invoke(main, ["pipeline", *grid, "--experiment-name", "grid", "--out", "report"])
    assert result.exit_code == 0, result.output
    assert "Random" in Path("report/results.md").read_text()
    client = MlflowClient()
    experiment = client.get_experiment_by_name("grid")
    runs = client.search_runs([experiment.experiment_id])
    parent = [run for run in runs if run.data.tags.get("stage") == "pipeline"]
    jobs = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id]
    assert len(parent) == 1 and jobs and all(job.info.status == "FINISHED" for job in jobs)
    result = CliRunner().invoke(main, ["compare", *grid[:4], "--preset", "quick", "--out", "again"])
    assert result.exit_code == 0, result.output
    assert Path("again/results.md").read_text() == Path("report/results.md").read_text()


def test_a_server_that_does_not_answer_is_named_with_how_to_start_one(tracking_store, monkeypatch):
    uri = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    result = CliRunner().invoke(main, ["compare", "--envs", ENV])
    assert result.exit_code == 1
    assert f"tracking server {uri} (MLFLOW_TRACKING_URI) does not answer" in result.output
    assert "slate-rl server --database" in result.output


def test_a_database_driver_that_is_missing_names_the_extra(tracking_store, monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if the server extra were not installed
    result = CliRunner().invoke(main, ["server", "--database", "postgresql://me:secret@127.0.0.1:1/slate_rl"])
    assert result.exit_code == 1
    assert "needs the Python driver 'psycopg'" in result.output and "slate-rl[server]" in result.output
    assert "secret" not in result.output
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "postgresql://me@127.0.0.1:1/slate_rl")
    result = CliRunner().invoke(main, ["registry", "list"])
    assert result.exit_code == 1 and "slate-rl[server]" in result.output


def test_migrate_refuses_what_is_not_a_local_store(tracking_server, tmp_path):
    args = ["migrate", "--server", tracking_server.uri, "--database", tracking_server.database, "--source"]
    result = CliRunner().invoke(main, [*args, f"sqlite:///{tmp_path / 'none.db'}"])
    assert result.exit_code == 1 and "no SQLite store at" in result.output
    result = CliRunner().invoke(main, [*args, tracking_server.uri])
    assert result.exit_code == 1 and "must be a SQLite store" in result.output
