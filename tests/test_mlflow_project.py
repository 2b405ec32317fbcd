"""End to end through `mlflow run` (the MLflow Project entry points) against a real SQLite store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from slate_rl.stages.generate_dataset import load_from_run

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def mlflow_run(store: Path, entry_point: str, **params: str) -> subprocess.CompletedProcess:
    """`mlflow run <repo> -e <entry_point> --env-manager local -P k=v ...` with the test's store."""
    command = [sys.executable, "-m", "mlflow", "run", str(REPO), "-e", entry_point, "--env-manager", "local",
               "--storage-dir", str(store / "storage")]
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
    assert (params["env"], params["preset"], params["n_sessions"], params["chunk_size"]) == \
        ("diffuse_divpen", "quick", "30", "2000")
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


def test_env_param_through_mlflow_run(tracking_store):
    result = mlflow_run(tracking_store, "generate_dataset", env="diffuse_mix", preset="quick", n_sessions="10",
                        env_param="boredom_threshold=3,diversity_penalty=5.0")
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = MlflowClient().search_runs(["0"])
    params = run.data.params
    assert (params["env.name"], params["env.boredom_threshold"], params["env.diversity_penalty"]) == \
        ("diffuse_mix", "3", "5.0")
    assert params["sim.boredom_threshold"] == "3" and params["env_param"] == "boredom_threshold=3,diversity_penalty=5.0"
    assert load_from_run(run.info.run_id).meta["env_params"]["diversity_penalty"] == 5.0
