"""`pipeline --backend ray` on a two-node Ray cluster started on this machine (a head node and a second node, one CPU
each, contacting nothing else): a tiny grid as child runs on both nodes, a job whose worker is killed mid-training
retried and resumed in its run, `pipeline status`, and the clusters that cannot be used refused."""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from conftest import REPO_ROOT
from slate_rl.cli import main

pytestmark = pytest.mark.slow
SIZES = "episodes=80,warmup_episodes=20,val_every=20,save_every=20,val_episodes=20,test_episodes=20"
GRID = ["--envs", "focused_mix", "--methods", "random,sac_topk_ideal", "--seeds", "2", "--preset", "quick"]
GRID += ["--set", SIZES]
ONE_JOB = ["--envs", "focused_mix", "--methods", "sac_topk_ideal", "--seeds", "2", "--preset", "quick"]  # a group
ONE_JOB += ["--set", SIZES]
BIN = Path(sys.executable).parent


def _environment() -> dict[str, str]:
    """What the cluster's processes and the pipeline see: this checkout first, no usage reports, 1 s heartbeats."""
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
        "RAY_USAGE_STATS_ENABLED": "0",
        "SLATE_RL_HEARTBEAT_S": "1",
    }


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A head node and a second node (1 CPU each) on 127.0.0.1; each `ray start --block` leads its own process
    group, ended at the end of the module."""
    logs = tmp_path_factory.mktemp("ray")
    address = f"127.0.0.1:{_free_port()}"
    common = ["--num-cpus", "1", "--object-store-memory", str(100 * 2**20), "--node-ip-address", "127.0.0.1"]
    common += ["--disable-usage-stats", "--block"]
    nodes = []
    try:
        for name, args in (
            ("head", ["--head", "--port", address.split(":")[1], "--include-dashboard", "false"]),
            ("node2", ["--address", address]),
        ):
            with open(logs / f"{name}.log", "w") as log:
                nodes.append(
                    subprocess.Popen(
                        [str(BIN / "ray"), "start", *args, *common],
                        env=_environment(),
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
            if name == "head":
                _wait_for_port(address, nodes[0], logs / "head.log")
        ray.init(address=address, logging_level="WARNING")
        try:
            deadline = time.monotonic() + 120
            while len([n for n in ray.nodes() if n["Alive"]]) < 2:
                assert time.monotonic() < deadline, (logs / "node2.log").read_text()[-3000:]
                time.sleep(1)
        finally:
            ray.shutdown()
        yield address
    finally:
        for node in reversed(nodes):  # `ray start --block` ends its node's processes on SIGTERM; the rest after
            os.killpg(node.pid, signal.SIGTERM)
        time.sleep(5)
        for node in nodes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.pid, signal.SIGKILL)
            node.wait()


def _wait_for_port(address: str, process: subprocess.Popen, log: Path) -> None:
    host, port = address.split(":")
    deadline = time.monotonic() + 120
    while True:
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            return
        except OSError:
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)


def _pipeline(store: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "slate_rl.cli", "pipeline", *args],
        cwd=store,
        env=_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _curve(client: MlflowClient, run_id: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client.get_metric_history(run_id, "val_return")]


@pytest.fixture(scope="module")
def grid(cluster: str, module_store: Path) -> tuple[Path, str]:
    """The tiny grid run once with --backend ray: (its store, its output)."""
    output, _ = _pipeline(module_store, *GRID, "--backend", "ray", "--address", cluster).communicate(timeout=900)
    return module_store, output


def test_a_tiny_grid_runs_as_child_runs_on_both_nodes(grid):
    store, output = grid
    assert "2 nodes, 2 jobs at once (1.0 CPU, 0.0 GPU each)" in output, output
    assert "[3/3]" in output and "all jobs finished" in output, output  # the SAC seeds: one group job
    client = MlflowClient()
    (parent,) = client.search_runs(["0"], "tags.stage = 'pipeline'")
    assert (parent.info.status, parent.data.params["backend"]) == ("FINISHED", "ray")
    jobs = client.search_runs(["0"], "tags.stage = 'train_online'")
    assert len(jobs) == 4 and all(run.info.status == "FINISHED" for run in jobs)
    parents = {run.data.tags["method"]: run.data.tags["mlflow.parentRunId"] for run in jobs}
    group = client.get_run(parents["sac_topk_ideal"])
    assert group.data.tags["stage"] == "train_online_group"
    assert {parents["random"], group.data.tags["mlflow.parentRunId"]} == {parent.info.run_id}
    spans = sorted((run.info.start_time, run.info.end_time) for run in jobs)
    assert any(start < end for (_, end), (start, _) in itertools.pairwise(spans)), "never two jobs at once"
    rows = list(csv.DictReader(io.StringIO((store / "reports" / "pipeline" / "results.csv").read_text())))
    assert {(row["method"], row["n"]) for row in rows} == {("random", "2"), ("sac_topk_ideal", "2")}

    status = subprocess.run(
        [sys.executable, "-m", "slate_rl.cli", "pipeline", "status"],
        cwd=store,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert lines[0].startswith(f"pipeline run {parent.info.run_id} (FINISHED): started ") and "backend ray" in lines[0]
    assert lines[3] == "phase 3/3 (training): 3 jobs: 3 finished"
    shown = {word for line in lines[4:] for word in line.split() if re.fullmatch("[0-9a-f]{32}", word)}
    assert len(shown) == 3 and shown <= {run.info.run_id for run in jobs}  # a group shows one of its seeds' runs


def test_a_group_job_whose_worker_is_killed_is_retried_and_resumes_as_a_group(cluster, grid, tracking_store):
    client = MlflowClient()
    process = _pipeline(tracking_store, *ONE_JOB, "--backend", "ray", "--address", cluster)
    killed = None
    deadline = time.monotonic() + 400
    while killed is None and time.monotonic() < deadline and process.poll() is None:
        runs = client.search_runs(["0"], "tags.stage = 'train_online' and attributes.status = 'RUNNING'")
        saved = [
            r for r in runs if any(f.path == "resume/state.pt" for f in client.list_artifacts(r.info.run_id, "resume"))
        ]
        if len(saved) == 2:  # both seeds' first checkpoint
            stage_pid = int(saved[0].data.tags["pid"])
            worker = int(Path(f"/proc/{stage_pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            assert b"ray::" in Path(f"/proc/{worker}/cmdline").read_bytes()
            os.kill(worker, signal.SIGKILL)  # the Ray worker: its task is lost, the stage dies with it
            killed = saved[0].data.tags["mlflow.parentRunId"]
        time.sleep(0.2)
    assert killed is not None, "the group job never reached its first checkpoint"
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    assert "finished in" in output and f"(resumed run {killed} after a lost attempt)" in output, output

    assert client.get_run(killed).info.status == "FINISHED"
    runs = client.search_runs(["0"], "tags.stage = 'train_online'")
    assert len(runs) == 2 and {run.data.tags["mlflow.parentRunId"] for run in runs} == {killed}
    grid_store, _ = grid
    reference = MlflowClient(f"sqlite:///{grid_store / 'mlflow.db'}")
    for run in runs:
        assert run.info.status == "FINISHED" and "taken over" in run.data.tags["lost"]
        for key in run.data.metrics:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert len(steps) == len(set(steps)), f"{key} logged a step twice: {sorted(steps)}"
        (uninterrupted,) = reference.search_runs(
            ["0"],
            f"tags.stage = 'train_online' and tags.method = 'sac_topk_ideal' and tags.seed = '{run.data.tags['seed']}'",
        )
        assert _curve(client, run.info.run_id) == _curve(reference, uninterrupted.info.run_id)
        assert len(_curve(client, run.info.run_id)) == 4
        assert run.data.metrics["test_return"] == uninterrupted.data.metrics["test_return"]


def test_clusters_that_cannot_run_the_jobs_are_refused(cluster, tracking_store):
    closed = f"127.0.0.1:{_free_port()}"
    for args, message in (
        (["--address", closed], f"Error: no Ray cluster answers at {closed}"),
        (["--address", cluster, "--gpus-per-job", "1"], "Error: --gpus-per-job 1.0: the Ray cluster at"),
        (["--address", cluster, "--cpus-per-job", "2"], "Error: no node of the Ray cluster at"),
    ):
        result = CliRunner().invoke(main, ["pipeline", *ONE_JOB, "--backend", "ray", *args])
        assert result.exit_code == 1 and message in result.output, result.output
    assert not ray.is_initialized()  # the refused clusters were let go
    assert not MlflowClient().search_runs(["0"])  # refused before any run was created
