"""End to end through `mlflow run` (the MLflow Project entry points) against a real SQLite store: every entry point
with its declared defaults (and tiny sizes), one after the other in one store, as the workflow runs them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from slate_rl.cli import main
from slate_rl.stages.generate_dataset import load_from_run

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def mlflow_run(store: Path, entry_point: str, **params: str) -> subprocess.CompletedProcess:
    """`mlflow run <repo> -e <entry_point> --env-manager local -P k=v ...` with the test's store."""
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "run",
        str(REPO),
        "-e",
        entry_point,
        "--env-manager",
        "local",
        "--storage-dir",
        str(store / "storage"),
    ]
    for key, value in params.items():
        command += ["-P", f"{key}={value}"]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(command, cwd=store, env=env, capture_output=True, text=True, timeout=600)


def test_generate_dataset_entry_point(tracking_store):
    result = mlflow_run(tracking_store, "generate_dataset", env="diffuse_divpen", preset="quick", n_sessions="30")
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = MlflowClient().search_runs(["0"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.project.entryPoint"] == "generate_dataset"
    assert run.data.tags["stage"] == "generate_dataset"
    params = run.data.params
    assert (params["env"], params["preset"], params["n_sessions"], params["chunk_size"]) == (
        "diffuse_divpen",
        "quick",
        "30",
        "2000",
    )
    assert params["sim.diversity_penalty"] == "3.0" and params["sim.click_model"] == "mixPBM"
    assert {"mean_return", "clicks_per_step", "bored_step_share"} <= set(run.data.metrics)
    data = load_from_run(run.info.run_id)
    assert data.n_sessions == 30 and data.meta["env"] == "diffuse_divpen"


def test_bad_input_fails_the_run_and_leaves_no_dataset(tracking_store):
    result = mlflow_run(tracking_store, "generate_dataset", preset="quick", n_sessions="5", epsilon="2")
    assert result.returncode != 0
    assert "epsilon is the probability of a random slot and must lie in [0, 1] (got 2.0)" in result.stderr
    (run,) = MlflowClient().search_runs(["0"])
    assert run.info.status == "FAILED"
    assert [f.path for f in MlflowClient().list_artifacts(run.info.run_id)] == []


@pytest.fixture(scope="module")
def workflow(module_store):
    """The store every entry point of the workflow writes to, and the run ids of those that ran (by entry point)."""
    return {"store": module_store}


def _run_entry_point(workflow: dict, entry_point: str, **params: str) -> str:
    """Run `entry_point` with `params` (on top of its declared defaults); returns the id of the run it created."""
    before = {r.info.run_id for r in MlflowClient().search_runs(["0"])}
    result = mlflow_run(workflow["store"], entry_point, **params)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    (run,) = [
        r
        for r in MlflowClient().search_runs(["0"], f"tags.`mlflow.project.entryPoint` = '{entry_point}'")
        if r.info.run_id not in before
    ]
    assert run.info.status == "FINISHED"
    workflow[entry_point] = run.info.run_id
    workflow[f"{entry_point}.output"] = result.stdout + result.stderr
    return run.info.run_id


def test_generate_dataset_with_its_defaults(workflow):
    run_id = _run_entry_point(workflow, "generate_dataset", n_sessions="200")
    params = MlflowClient().get_run(run_id).data.params
    assert (params["env"], params["preset"], params["epsilon"], params["seed"]) == (
        "focused_topdown",
        "paper",
        "0.5",
        "2754851",
    )


def test_train_mf_with_its_defaults(workflow):
    _run_entry_point(
        workflow, "train_mf", dataset=f"runs:/{workflow['generate_dataset']}/dataset", max_steps="20", eval_every="10"
    )


def test_pretrain_gems_with_its_defaults(workflow):
    _run_entry_point(
        workflow,
        "pretrain_gems",
        dataset=f"runs:/{workflow['generate_dataset']}/dataset",
        epochs="1",
        bound_sessions="100",
    )


def test_train_online_with_its_defaults(workflow):
    run_id = _run_entry_point(
        workflow,
        "train_online",
        gems=f"runs:/{workflow['pretrain_gems']}",
        episodes="20",
        warmup_episodes="10",
        val_every="10",
        val_episodes="10",
        test_episodes="20",
        save_every="20",
    )
    run = MlflowClient().get_run(run_id)
    assert (run.data.tags["method"], run.data.tags["seed"]) == ("sac_gems", "58407201")
    assert "test_return" in run.data.metrics and run.data.tags["registered_version"] == "1"


def test_collect_with_its_defaults_plays_the_expert(workflow):
    result = CliRunner().invoke(main, ["registry", "promote", "focused_topdown", "1", "--as", "expert"])
    assert result.exit_code == 0, result.output
    run_id = _run_entry_point(workflow, "collect", episodes="20", reference_episodes="10")
    assert MlflowClient().get_run(run_id).data.tags["quality"] == "expert"


def test_train_offline_with_its_defaults_learns_from_the_collected_expert(workflow):
    run_id = _run_entry_point(
        workflow,
        "train_offline",
        steps="4",
        eval_every="2",
        save_every="2",
        val_episodes="10",
        test_episodes="20",
        set="batch_episodes=4,gamma=0.9",
    )
    run = MlflowClient().get_run(run_id)
    tags = run.data.tags
    assert (tags["algorithm"], tags["ranker"], tags["dataset_quality"]) == ("bc", "gems", "expert")
    assert tags["dataset_run"] == workflow["collect"] and run.data.params["agent.gamma"] == "0.9"
    assert {"normalised_score_best", "normalised_score_last", "test_return"} <= set(run.data.metrics)
    assert tags["registered_version"] == "2"


def test_compare_with_its_defaults(workflow):
    out = workflow["store"] / "reports" / "latest"  # `mlflow run` works in the project folder: write elsewhere
    run_id = _run_entry_point(workflow, "compare", bootstrap="100", out=str(out))
    assert MlflowClient().get_run(run_id).data.metrics["runs"] == 1
    assert "| SAC+GeMS |" in (out / "results.md").read_text()


def test_pipeline_dry_run_with_all_its_defaults_prints_the_plan(workflow):
    _run_entry_point(workflow, "pipeline", dry_run="true")
    output = workflow["pipeline.output"]
    assert (
        "seeds: 10 -> 58407201,496912423,2465781,300029,215567,23437561,309081907,548260111,51941177,212407167"
        in output
    )
    assert "phase 3/3 (training): 264 jobs, 0 already finished, 264 to run, 0 to resume" in output
    assert not MlflowClient().search_runs(["0"], "tags.stage = 'pipeline'")  # planned, nothing run


def test_pipeline_offline_grid_parameters_reach_the_plan(workflow):
    output = mlflow_run(
        workflow["store"],
        "pipeline",
        envs="focused_topdown",
        methods="sac_topk_ideal",
        seeds="1",
        preset="quick",
        dry_run="true",
        select_policies="0.5",
        offline_algorithms="bc,iql",
        qualities="expert,half",
        offline_seeds="2",
        offline_set="ranker=topk_ideal",
        offline_mix="half=expert:0.5,random:0.5",
    )
    assert output.returncode == 0, output.stderr[-3000:]
    text = output.stdout + output.stderr
    assert "registry select --medium 0.5 on the sac_topk_ideal run" in text
    assert "phase 6/6 (offline training): 8 jobs" in text  # 2 algorithms x 2 datasets x 2 seeds
    assert "iql/focused_topdown/half/seed" in text


def test_pipeline_runs_one_seed_with_overrides(workflow):
    run_id = _run_entry_point(
        workflow,
        "pipeline",
        envs="focused_topdown",
        methods="random",
        seeds="58407201",
        preset="quick",
        set="test_episodes=20",
        out=str(workflow["store"] / "reports" / "pipeline"),
    )
    client = MlflowClient()
    params = client.get_run(run_id).data.params
    assert (params["seeds"], params["seeds_resolved"], params["set"]) == ("58407201", "58407201", "test_episodes=20")
    (job,) = client.search_runs(["0"], f"tags.`mlflow.parentRunId` = '{run_id}'")
    assert (job.data.params["method"], job.data.params["test_episodes"], job.info.status) == (
        "random",
        "20",
        "FINISHED",
    )


def test_every_declared_entry_point_ran(workflow):
    declared = set(yaml.safe_load((REPO / "MLproject").read_text())["entry_points"])
    assert declared <= set(workflow), f"not run through `mlflow run`: {', '.join(sorted(declared - set(workflow)))}"


def test_env_param_through_mlflow_run(tracking_store):
    result = mlflow_run(
        tracking_store,
        "generate_dataset",
        env="diffuse_mix",
        preset="quick",
        n_sessions="10",
        env_param="boredom_threshold=3,diversity_penalty=5.0",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = MlflowClient().search_runs(["0"])
    params = run.data.params
    assert (params["env.name"], params["env.boredom_threshold"], params["env.diversity_penalty"]) == (
        "diffuse_mix",
        "3",
        "5.0",
    )
    assert params["sim.boredom_threshold"] == "3" and params["env_param"] == "boredom_threshold=3,diversity_penalty=5.0"
    assert load_from_run(run.info.run_id).meta["env_params"]["diversity_penalty"] == 5.0


def test_seeds_through_mlflow_run(tracking_store):
    """-P seeds=2: the mlflow run is the group's parent run, the paper's first two seeds its child runs."""
    tiny = dict(episodes="10", warmup_episodes="5", val_every="5", val_episodes="5", test_episodes="5", save_every="10")
    result = mlflow_run(
        tracking_store, "train_online", method="sac_topk_ideal", preset="quick", seeds="2", register="false", **tiny
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (parent,) = MlflowClient().search_runs(["0"], "tags.stage = 'train_online_group'")
    assert parent.data.tags["mlflow.project.entryPoint"] == "train_online"
    assert parent.data.params["seeds_resolved"] == "58407201,496912423"
    children = MlflowClient().search_runs(["0"], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(run.data.tags["seed"] for run in children) == ["496912423", "58407201"]
    assert all(run.info.status == "FINISHED" and "test_return" in run.data.metrics for run in children)
