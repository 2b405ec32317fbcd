"""`slate-rl ui`: the address it prints, and the runs page of the experiment written last."""

from __future__ import annotations

import os

from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from slate_rl.cli import main
from slate_rl.tracking.runs import latest_runs_page


def test_runs_page_of_the_experiment_whose_run_started_last(tracking_store):
    assert latest_runs_page("http://127.0.0.1:5000") is None  # no run yet
    client = MlflowClient()
    first = client.create_experiment("first")
    second = client.create_experiment("second")
    client.create_run(second, start_time=1_000)
    client.create_run(first, start_time=2_000)
    assert latest_runs_page("http://127.0.0.1:5000/") == f"http://127.0.0.1:5000/#/experiments/{first}/runs"


def test_ui_command_prints_the_address_and_the_runs_page(tracking_store, monkeypatch):
    experiment = MlflowClient().create_experiment("policies")
    MlflowClient().create_run(experiment)
    launched = []
    monkeypatch.setattr(os, "execvp", lambda file, args: launched.append(args))
    result = CliRunner().invoke(main, ["ui", "--port", "5077"])
    assert result.exit_code == 0, result.output
    assert "at http://127.0.0.1:5077\n" in result.output
    assert f"http://127.0.0.1:5077/#/experiments/{experiment}/runs" in result.output
    (args,) = launched
    assert args[2:] == ["mlflow", "ui", "--backend-store-uri", os.environ["MLFLOW_TRACKING_URI"], "--port", "5077"]
