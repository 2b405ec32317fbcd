"""The pipeline: a tiny grid with one job killed on purpose, re-run to completion; a run its dead pipeline left
RUNNING, marked KILLED by the next; a killed training job resumed by the next pipeline into the same run; the store
under concurrency; training jobs that need no upstream output running beside the upstream jobs; a pipeline paused
and continued."""

from __future__ import annotations

import csv
import io
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from slate_rl.errors import SlateRLError
from slate_rl.stages import pipeline, pipeline_pause, pipeline_status
from slate_rl.tracking.lineage import LINEAGE_TAG
from slate_rl.tracking.runs import HEARTBEAT_TAG, PAUSED_TAG

pytestmark = pytest.mark.slow
GRID = [
    "--envs",
    "focused_mix",
    "--methods",
    "random,short_term_oracle",
    "--seeds",
    "2",
    "--preset",
    "quick",
    "--workers",
    "2",
]


def _pipeline(store: Path, grid: list[str] = GRID) -> subprocess.Popen:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.Popen(
        [sys.executable, "-m", "slate_rl.cli", "pipeline", *grid],
        cwd=store,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                pass
    return found


def _training_jobs(pipeline_pid: int, method: str | None = None) -> list[int]:
    """The pipeline's `train-online` processes (of `method` if given), read from their argument lists. A process the
    pipeline has forked but not yet exec'd still shows the pipeline's own arguments, which name the methods too: only
    the `train-online` argument tells a job apart."""
    found = []
    for pid in _children(pipeline_pid):
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:  # it ended meanwhile
            continue
        if b"train-online" in args and (method is None or method.encode() in b" ".join(args)):
            found.append(pid)
    return found


def _has_running_run(client: MlflowClient, method: str) -> bool:
    try:
        runs = client.search_runs(["0"], f"tags.stage = 'train_online' and tags.method = '{method}'")
    except Exception:  # the store may not exist yet
        return False
    return any(r.info.status == "RUNNING" for r in runs)


def _kill_while_running(pid: int, method: str, timeout: float = 300) -> bool:
    """SIGKILL the job `pid` once its run of `method` is RUNNING in the store. The job is kept stopped (SIGSTOP)
    while the store is read and let go on in 50 ms slices, so it cannot finish between the check and the kill, however
    slowly a loaded machine answers the check. False if its run never became RUNNING."""
    client = MlflowClient()
    deadline = time.monotonic() + timeout
    os.kill(pid, signal.SIGSTOP)
    while time.monotonic() < deadline:
        if _has_running_run(client, method):
            os.kill(pid, signal.SIGKILL)
            return True
        os.kill(pid, signal.SIGCONT)
        time.sleep(0.05)
        os.kill(pid, signal.SIGSTOP)
    return False


def test_killed_job_is_reported_and_a_rerun_completes_the_table(tracking_store):
    grid = [*GRID, "--set", "test_episodes=5000"]  # the oracle then runs for seconds: killed mid-run
    process = _pipeline(tracking_store, grid)
    victim = None
    deadline = time.monotonic() + 300
    while victim is None and time.monotonic() < deadline and process.poll() is None:
        jobs = _training_jobs(process.pid, "short_term_oracle")
        victim = jobs[0] if jobs else None
        time.sleep(0.2)
    assert victim is not None, "the oracle job never started"
    assert _kill_while_running(victim, "short_term_oracle"), "the oracle job never created its run"
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 1
    assert "short_term_oracle/focused_mix/seed58407201 FAILED (killed by SIGKILL)" in output
    assert "[2/3]" in output or "[3/3]" in output  # the other jobs went on
    statuses = {
        r.data.tags.get("method"): r.info.status
        for r in MlflowClient().search_runs(["0"], "tags.stage = 'train_online'")
    }
    assert statuses.get("short_term_oracle") == "KILLED"

    rerun = _pipeline(tracking_store, grid)
    output, _ = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, output
    assert "3 jobs, 2 already finished, 1 to run" in output, output
    rows = list(csv.DictReader(io.StringIO((tracking_store / "reports" / "pipeline" / "results.csv").read_text())))
    assert {(row["method"], row["n"]) for row in rows} == {("random", "2"), ("short_term_oracle", "1")}


def test_a_run_left_running_when_its_pipeline_died_is_marked_killed_by_the_next_pipeline(tracking_store):
    """A session that ends stops the pipeline with its jobs: nothing marks their runs KILLED. The next pipeline
    does, as it replaces them (and the dead pipeline run itself), so that no status or later stage reads them as
    live."""
    cfg = pipeline.PipelineConfig.resolve("focused_mix", "random", "58407201", preset="quick")
    (job,) = pipeline.plan(cfg)[2]
    gone = subprocess.Popen(["true"])
    gone.wait()
    client = MlflowClient()
    lost = client.create_run(
        "0",
        tags={
            "stage": "train_online",
            LINEAGE_TAG: job.keys[0],
            "host": socket.gethostname(),
            "pid": str(gone.pid),
            "heartbeat": str(time.time() - 200),
            "heartbeat_interval": "30",
        },
    ).info.run_id
    assert pipeline.locate(job).state == "run"
    dead_pipeline, live_pipeline = (
        client.create_run(
            "0",
            tags={
                "stage": "pipeline",
                "host": "elsewhere",
                "heartbeat": str(time.time() - age),
                "heartbeat_interval": "30",
            },
        ).info.run_id
        for age in (200, 0)
    )

    process = _pipeline(
        tracking_store, ["--envs", "focused_mix", "--methods", "random", "--seeds", "58407201", "--preset", "quick"]
    )
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    replaced = client.get_run(lost)
    assert replaced.info.status == "KILLED", replaced.info
    assert replaced.data.tags["lost"].startswith("its process stopped; taken over by pipeline run ")
    (new,) = client.search_runs(["0"], "tags.stage = 'train_online' and attributes.status = 'FINISHED'")
    assert new.info.run_id != lost
    # the pipeline run that died with them is marked too; one whose process still sends heartbeats is left alone
    assert client.get_run(dead_pipeline).info.status == "KILLED"
    assert client.get_run(dead_pipeline).data.tags["lost"].startswith("its process stopped; found by pipeline run ")
    assert client.get_run(live_pipeline).info.status == "RUNNING"


SIZES = "episodes=160,warmup_episodes=20,val_every=40,save_every=40,val_episodes=20,test_episodes=50"
ONE_JOB = [
    "--envs",
    "focused_mix",
    "--methods",
    "sac_topk_ideal",
    "--seeds",
    "58407201",
    "--preset",
    "quick",
    "--set",
    SIZES,
]


def test_a_killed_training_job_resumes_in_its_run_and_ends_like_an_uninterrupted_one(tracking_store):
    client = MlflowClient()
    process = _pipeline(tracking_store, ONE_JOB)
    killed = None
    deadline = time.monotonic() + 300
    while killed is None and time.monotonic() < deadline and process.poll() is None:
        for run in client.search_runs(["0"], "tags.stage = 'train_online' and attributes.status = 'RUNNING'"):
            if [f for f in client.list_artifacts(run.info.run_id, "resume") if f.path == "resume/state.pt"]:
                (job,) = _training_jobs(process.pid)
                os.kill(job, signal.SIGKILL)
                killed = run.info.run_id
        time.sleep(0.2)
    assert killed is not None, "the training job never reached its first checkpoint"
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 1 and "FAILED (killed by SIGKILL)" in output
    run = client.get_run(killed)
    assert (run.info.status, run.data.tags["exit_signal"]) == ("KILLED", "SIGKILL")

    plan = _pipeline(tracking_store, [*ONE_JOB, "--dry-run"]).communicate(timeout=300)[0]
    assert f"to resume  sac_topk_ideal/focused_mix/seed58407201  {killed} (KILLED by SIGKILL)" in plan, plan
    rerun = _pipeline(tracking_store, ONE_JOB)
    output, _ = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, output
    assert "1 jobs, 0 already finished, 0 to run, 1 to resume" in output and f"resuming run {killed}" in output
    (resumed,) = client.search_runs(["0"], "tags.stage = 'train_online'")
    assert (resumed.info.run_id, resumed.info.status) == (killed, "FINISHED")
    for key in resumed.data.metrics:
        steps = [m.step for m in client.get_metric_history(killed, key)]
        assert len(steps) == len(set(steps)), f"{key} logged a step twice: {sorted(steps)}"

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    options = [a for item in SIZES.split(",") for a in (f"--{item.split('=')[0]}", item.split("=")[1])]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "slate_rl.cli",
            "train-online",
            "--env",
            "focused_mix",
            "--preset",
            "quick",
            "--method",
            "sac_topk_ideal",
            "--seed",
            "58407201",
            "--register",
            "false",
            *options,
        ],
        cwd=tracking_store,
        env=env,
        check=True,
        capture_output=True,
        timeout=600,
    )
    (uninterrupted,) = client.search_runs(["0"], f"tags.stage = 'train_online' and attributes.run_id != '{killed}'")

    def curve(run_id: str) -> list[tuple[int, float]]:
        return [(m.step, m.value) for m in client.get_metric_history(run_id, "val_return")]

    assert curve(killed) == curve(uninterrupted.info.run_id) and len(curve(killed)) == 4
    assert client.get_run(killed).data.metrics["test_return"] == uninterrupted.data.metrics["test_return"]


def _log_like_a_stage(uri: str, parent: str, index: int) -> str:
    os.environ["MLFLOW_TRACKING_URI"] = uri
    from slate_rl.tracking.runs import StageRun, stage_run

    with stage_run("stress", run_name=f"stress/{index}", parent=StageRun(MlflowClient(), parent)) as run:
        run.log_params({f"p{i}": i for i in range(20)})
        for step in range(300):
            run.log_metrics({"a": step, "b": index}, step=step)
            if step % 25 == 0:
                run.flush()
                run.set_tags({"step": step})
        return run.run_id


def test_concurrent_jobs_do_not_corrupt_the_store(tracking_store):
    client = MlflowClient()
    parent = client.create_run("0").info.run_id
    uri = os.environ["MLFLOW_TRACKING_URI"]
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        run_ids = pool.starmap(_log_like_a_stage, [(uri, parent, i) for i in range(4)])
    for run_id in run_ids:
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and run.data.tags["mlflow.parentRunId"] == parent
        assert len(client.get_metric_history(run_id, "a")) == 300 and len(run.data.params) == 20


def test_the_seeds_of_a_sac_method_are_one_group_job_resumed_as_a_group_after_a_kill(tracking_store):
    client = MlflowClient()
    grid = [*ONE_JOB[:5], "2", *ONE_JOB[6:]]  # seeds 58407201 and 496912423
    name = "sac_topk_ideal/focused_mix/seeds 58407201,496912423"
    process = _pipeline(tracking_store, grid)
    killed: list[str] = []
    deadline = time.monotonic() + 300
    while not killed and time.monotonic() < deadline and process.poll() is None:
        runs = client.search_runs(["0"], "tags.stage = 'train_online' and attributes.status = 'RUNNING'")
        saved = [
            r for r in runs if any(f.path == "resume/state.pt" for f in client.list_artifacts(r.info.run_id, "resume"))
        ]
        if len(saved) == 2:  # both seeds' first checkpoint: kill the group's process
            (job,) = _training_jobs(process.pid)
            os.kill(job, signal.SIGKILL)
            killed = sorted(r.info.run_id for r in saved)
        time.sleep(0.2)
    assert killed, "the group job never reached its first checkpoint"
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 1 and f"{name} FAILED (killed by SIGKILL)" in output, output
    (group,) = client.search_runs(["0"], "tags.stage = 'train_online_group'")
    assert (group.info.status, group.data.tags["exit_signal"]) == ("KILLED", "SIGKILL")

    rerun = _pipeline(tracking_store, grid)
    output, _ = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, output
    assert (
        "1 jobs, 0 already finished, 0 to run, 1 to resume" in output and f"resuming run {group.info.run_id}" in output
    )
    runs = client.search_runs(["0"], "tags.stage = 'train_online'")
    assert sorted(r.info.run_id for r in runs) == killed and {r.info.status for r in runs} == {"FINISHED"}
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {group.info.run_id}
    assert client.get_run(group.info.run_id).info.status == "FINISHED"

    again = _pipeline(tracking_store, grid).communicate(timeout=300)[0]
    assert "1 jobs, 1 already finished, 0 to run" in again, again
    rows = list(csv.DictReader(io.StringIO((tracking_store / "reports" / "pipeline" / "results.csv").read_text())))
    assert [(row["method"], row["n"]) for row in rows] == [("sac_topk_ideal", "2")]

    # each seed ends as in an uninterrupted group
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    options = [a for item in SIZES.split(",") for a in (f"--{item.split('=')[0]}", item.split("=")[1])]
    command = [sys.executable, "-m", "slate_rl.cli", "train-online", "--env", "focused_mix", "--preset", "quick"]
    command += ["--method", "sac_topk_ideal", "--seeds", "2", "--register", "false", *options]
    subprocess.run(command, cwd=tracking_store, env=env, check=True, capture_output=True, timeout=600)

    def curve(run_id: str) -> list[tuple[int, float]]:
        return [(m.step, m.value) for m in client.get_metric_history(run_id, "val_return")]

    for seed in ("58407201", "496912423"):
        seed_runs = client.search_runs(["0"], f"tags.stage = 'train_online' and tags.seed = '{seed}'")
        (resumed,) = [r for r in seed_runs if r.info.run_id in killed]
        (uninterrupted,) = [r for r in seed_runs if r.info.run_id not in killed]
        assert curve(resumed.info.run_id) == curve(uninterrupted.info.run_id)
        assert len(curve(resumed.info.run_id)) == 4
        assert resumed.data.metrics["test_return"] == uninterrupted.data.metrics["test_return"]


TINY_PRESET = """\
generate_dataset: {n_sessions: 200, chunk_size: 200}
pretrain_gems: {epochs: 1}
train_online: {episodes: 40, warmup_episodes: 10, val_every: 10, save_every: 20, val_episodes: 10, test_episodes: 10}
"""


def test_jobs_that_need_no_upstream_output_run_while_the_upstream_phases_do(tracking_store, monkeypatch, tmp_path):
    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "quick.yaml").write_text(TINY_PRESET)
    monkeypatch.setenv("SLATE_RL_PRESETS", str(tmp_path / "presets"))
    grid = ["--envs", "focused_mix", "--methods", "sac_gems,random", "--seeds", "58407201", "--preset", "quick"]
    planned, _ = _pipeline(tracking_store, [*grid, "--dry-run"]).communicate(timeout=300)
    expected = "2 to run, 0 to resume; 1 needs no dataset, MF or GeMS and starts with the earlier phases\n"
    assert f"phase 3/3 (training): 2 jobs, 0 already finished, {expected}" in planned, planned
    output, _ = _pipeline(tracking_store, [*grid, "--workers", "2"]).communicate(timeout=600)
    assert "all jobs finished" in output, output
    started = [line.split("started ")[1].split(";")[0] for line in output.splitlines() if "pipeline: started " in line]
    names = ["dataset/focused_mix", "gems/focused_mix/seed58407201", "sac_gems/focused_mix/seed58407201"]
    assert started == [names[0], "random/focused_mix/seed58407201", *names[1:]], output
    assert "phase 3/3: 2 jobs, 0 already finished, 2 to run, 0 to resume (1 of them started while the" in output
    runs = MlflowClient().search_runs(["0"], "tags.stage != 'pipeline'")
    assert len(runs) == 4 and {run.info.status for run in runs} == {"FINISHED"}
    again, _ = _pipeline(tracking_store, [*grid, "--dry-run"]).communicate(timeout=300)
    assert "phase 3/3 (training): 2 jobs, 2 already finished, 0 to run, 0 to resume\n" in again, again


def _stopped(pid: int) -> bool:
    """Whether process `pid` is stopped by a signal (state T in /proc)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"


def test_a_paused_pipeline_is_not_taken_for_lost_and_goes_on_when_continued(tracking_store):
    grid = [*GRID, "--set", "test_episodes=10000"]  # the oracle then runs long enough to be paused mid-run
    process = _pipeline(tracking_store, grid)
    client = MlflowClient()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # until the oracle's run is RUNNING and names its job (its lineage)
        assert process.poll() is None, process.communicate()[0]
        runs = client.search_runs(["0"], "tags.method = 'short_term_oracle' and attributes.status = 'RUNNING'")
        if runs and LINEAGE_TAG in runs[0].data.tags:
            break
        time.sleep(0.1)
    said = pipeline_pause.pause()
    (oracle,) = _training_jobs(process.pid, "short_term_oracle")
    assert _stopped(process.pid) and _stopped(oracle)
    assert "paused pipeline run" in said and "short_term_oracle/focused_mix/seed58407201" in said, said
    running = client.search_runs(["0"], "attributes.status = 'RUNNING'")
    assert {run.data.tags.get("stage") for run in running} >= {"pipeline", "train_online"}
    for run in running:  # a pause longer than four heartbeats
        assert PAUSED_TAG in run.data.tags
        client.set_tag(run.info.run_id, HEARTBEAT_TAG, f"{time.time() - 1000:.1f}")
    assert all(pipeline.run_alive(run) for run in client.search_runs(["0"], "attributes.status = 'RUNNING'"))
    status = pipeline_status.status()
    assert "(RUNNING, paused since" in status and "running   short_term_oracle" in status, status
    with pytest.raises(SlateRLError, match="already paused"):
        pipeline_pause.pause()

    assert "goes on after" in pipeline_pause.carry_on()
    assert not _stopped(process.pid)
    for run in client.search_runs(["0"], "attributes.status = 'RUNNING'"):
        assert PAUSED_TAG not in run.data.tags and pipeline.run_alive(run)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0 and "all jobs finished" in output, output
    assert {r.info.status for r in client.search_runs(["0"])} == {"FINISHED"}
