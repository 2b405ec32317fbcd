"""Concurrency soak: 8 processes log runs (params, batched metric histories, artifacts) into one tracking store at
once for a bounded time -- the PostgreSQL-backed server and a SQLite file -- and the store holds exactly what each
process logged, with no process failing."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from slate_rl.tracking.lineage import artifact_dir

pytestmark = pytest.mark.slow
PROCESSES = 8
SECONDS = 6  # of logging per process, after its start-up
WORKER = Path(__file__).with_name("soak_worker.py")


def _soak(uri: str, folder: Path) -> list[dict]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_RUN_ID", None)
    workers = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(SECONDS), f"w{i}", str(folder / f"w{i}.json")],
            cwd=folder,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(PROCESSES)
    ]
    for worker in workers:
        _, err = worker.communicate(timeout=600)
        assert worker.returncode == 0, err[-3000:]
        assert "Traceback" not in err and "locked" not in err, err[-3000:]
    return [json.loads((folder / f"w{i}.json").read_text()) for i in range(PROCESSES)]


def _check_store(manifests: list[dict]) -> int:
    """Every run of every manifest is in the store, FINISHED, with its params, every metric point and its artifact;
    returns the number of runs checked."""
    client = MlflowClient()
    runs = [run for manifest in manifests for run in manifest["runs"]]
    assert len({run["run_id"] for run in runs}) == len(runs)
    for expected in runs:
        stored = client.get_run(expected["run_id"])
        assert stored.info.status == "FINISHED"
        assert {k: v for k, v in stored.data.params.items() if k.startswith("p")} == expected["params"]
        for key, count in expected["points"].items():
            history = client.get_metric_history(expected["run_id"], key)
            assert sorted(m.step for m in history) == list(range(count)), key
        blob = artifact_dir(stored, "blobs") / "blob.bin"
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == expected["blob_sha256"]
    experiment = client.get_experiment_by_name("soak")
    assert len(client.search_runs([experiment.experiment_id], max_results=5000)) == len(runs)
    return len(runs)


def test_soak_against_the_server(server_store, tmp_path):
    assert MlflowClient().get_experiment_by_name("soak") is None  # nothing of another test counted
    assert _check_store(_soak(server_store.uri, tmp_path)) >= PROCESSES


def test_soak_against_sqlite(tracking_store):
    # the fixture creates the store first, as stage commands do under a lock (tests/test_sqlite_store.py): processes
    # that open a store that does not exist yet at the same moment each create it, and all but one fail
    assert _check_store(_soak(os.environ["MLFLOW_TRACKING_URI"], tracking_store)) >= PROCESSES
