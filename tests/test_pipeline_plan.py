"""The pipeline's plan, without running it: sweeps and overrides reach the right jobs, and each job's state
(finished, to run, to resume, running elsewhere) follows from the runs of its lineage key."""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from slate_rl.cli import main
from slate_rl.errors import SlateRLError
from slate_rl.stage_configs import GenerateDatasetConfig, TrainOnlineConfig
from slate_rl.stages import on_dataset, pipeline, pipeline_status, train_online
from slate_rl.tracking.lineage import LINEAGE_TAG


def test_bad_pipeline_input():
    with pytest.raises(SlateRLError, match="workers must be >= 1"):
        pipeline.PipelineConfig.resolve("all", "all", "2", workers=0)
    with pytest.raises(SlateRLError, match="unknown method"):
        pipeline.PipelineConfig.resolve("all", "sac_gem", "2")
    with pytest.raises(SlateRLError, match=r"seeds '0' is neither a count in \[1, 10\] nor a seed above 10"):
        pipeline.PipelineConfig.resolve("all", "all", "0")
    with pytest.raises(
        SlateRLError,
        match=r"--set gama: not a train_online option nor a hyper-parameter of random, slateq; valid: .*gamma",
    ):
        pipeline.PipelineConfig.resolve("all", "random,slateq", "2", assignments=("gama=0.9",))
    with pytest.raises(SlateRLError, match="the pipeline sets seed itself"):
        pipeline.PipelineConfig.resolve("all", "all", "2", assignments=("seed=3",))
    with pytest.raises(SlateRLError, match=r"--address, --gpus-per-job: only with --backend ray"):
        pipeline.PipelineConfig.resolve("all", "all", "2", address="auto", gpus_per_job=1)
    with pytest.raises(SlateRLError, match="on Ray the cluster's free resources decide how many jobs run at once"):
        pipeline.PipelineConfig.resolve("all", "all", "2", backend="ray", workers=4)
    with pytest.raises(SlateRLError, match=r"--cpus-per-job must be above 0 .*\(got 0, 0.0\)"):
        pipeline.PipelineConfig.resolve("all", "all", "2", backend="ray", cpus_per_job=0)
    with pytest.raises(SlateRLError, match="unknown backend 'dask'; choose one of: local, ray"):
        pipeline.PipelineConfig.resolve("all", "all", "2", backend="dask")


def test_sweep_values():
    assert pipeline.parse_sweep(["gamma=0.8,0.9", "episodes=60,warmup_episodes=20"], "--set") == {
        "gamma": [0.8, 0.9],
        "episodes": [60],
        "warmup_episodes": [20],
    }
    assert pipeline.parse_sweep(["belief={item_dim: 32}", "refine_fill=proto", ""], "--set") == {
        "belief": [{"item_dim": 32}],
        "refine_fill": ["proto"],
    }
    for bad, message in (
        (["gamma"], "must look like KEY=VALUE"),
        (["gamma=0.8,0.8"], "names a value twice"),
        (["gamma=0.8", "gamma=0.9"], "gives gamma twice; give all its values at once"),
    ):
        with pytest.raises(SlateRLError, match=message):
            pipeline.parse_sweep(bad, "--set")


def test_sweeps_and_overrides_reach_the_jobs_that_take_them(tracking_store):
    cfg = pipeline.PipelineConfig.resolve(
        "focused_mix",
        "sac_topk_ideal,random",
        "58407201",
        preset="quick",
        assignments=("gamma=0.8,0.9", "episodes=60,warmup_episodes=20"),
    )
    datasets, upstream, training = pipeline.plan(cfg)
    assert datasets == upstream == []  # neither method acts through GeMS or MF
    jobs = {job.name: job for job in training}
    assert set(jobs) == {
        "sac_topk_ideal/focused_mix/seed58407201 [gamma=0.8]",
        "sac_topk_ideal/focused_mix/seed58407201 [gamma=0.9]",
        "random/focused_mix/seed58407201",
    }
    args = jobs["sac_topk_ideal/focused_mix/seed58407201 [gamma=0.9]"].args
    assert args[:8] == [
        "train-online",
        "--env",
        "focused_mix",
        "--preset",
        "quick",
        "--method",
        "sac_topk_ideal",
        "--seed",
    ]
    assert " ".join(args).endswith("--episodes 60 --warmup-episodes 20 --set gamma=0.9")
    assert "--set" not in jobs["random/focused_mix/seed58407201"].args  # random has no hyper-parameters
    assert len({job.keys for job in training}) == 3 and all(job.state == "run" for job in training)

    result = CliRunner().invoke(
        main,
        [
            "pipeline",
            "--envs",
            "focused_mix",
            "--methods",
            "sac_gems",
            "--seeds",
            "2",
            "--preset",
            "quick",
            "--set",
            "lambda_kl=0.5,1.0",
            "--dry-run",
        ],
    )
    assert result.exit_code == 0, result.output
    assert result.output.startswith(
        "seeds: 2 -> 58407201,496912423\nphase 1/3 (datasets): 1 jobs, 0 already "
        "finished, 1 to run, 0 to resume\n  to run     dataset/focused_mix\n"
    )
    assert "  to run     gems/focused_mix/seed496912423 [lambda_kl=0.5] (after its dataset)" in result.output
    assert "  to run     sac_gems/focused_mix/seeds 58407201,496912423 [lambda_kl=1.0]\n" in result.output
    assert not MlflowClient().search_runs(["0"])  # a dry run starts no run


def test_an_mf_setting_gives_its_mf_job_and_leaves_other_methods_alone(tracking_store):
    cfg = pipeline.PipelineConfig.resolve(
        "focused_mix",
        "sac_topk_mf,random",
        "58407201",
        preset="quick",
        assignments=("mf_reference_validation=false,true",),
    )
    (dataset,), _, _ = pipeline.plan(cfg)
    client = MlflowClient()  # the dataset finished: the MF jobs get their lineage keys
    data_run = client.create_run("0", tags={"stage": "generate_dataset", LINEAGE_TAG: dataset.keys[0]}).info.run_id
    client.set_terminated(data_run)
    _, upstream, training = pipeline.plan(cfg)
    mf_jobs = {job.name: job for job in upstream}
    assert set(mf_jobs) == {
        "mf/focused_mix [mf_reference_validation=false]",
        "mf/focused_mix [mf_reference_validation=true]",
    }
    reference = mf_jobs["mf/focused_mix [mf_reference_validation=true]"]
    assert reference.args == ["train-mf", "--env", "focused_mix", "--preset", "quick", "--reference-validation", "true"]
    assert mf_jobs["mf/focused_mix [mf_reference_validation=false]"].args[-2:] == ["--reference-validation", "false"]
    assert [job.name for job in training] == [
        "sac_topk_mf/focused_mix/seed58407201 [mf_reference_validation=false]",
        "sac_topk_mf/focused_mix/seed58407201 [mf_reference_validation=true]",
        "random/focused_mix/seed58407201",  # no MF: the setting does not apply
    ]
    # Each training run finds, by lineage, the MF its job in the plan trains.
    for job, mf_job in zip(training[:2], upstream, strict=True):
        value = job.name.endswith("true]")
        assert job.args[-2:] == ["--mf-reference-validation", str(value).lower()]
        online = TrainOnlineConfig.resolve("focused_mix", "quick", method="sac_topk_mf", mf_reference_validation=value)
        assert on_dataset.lookup_keys("train_mf", train_online.mf_config(online), data_run) == mf_job.keys
    assert len({job.keys for job in upstream}) == 2


def test_a_killed_mf_job_resumes_from_its_saved_state(tracking_store):
    cfg = pipeline.PipelineConfig.resolve("focused_mix", "sac_topk_mf", "58407201", preset="quick")
    (dataset,), _, _ = pipeline.plan(cfg)
    client = MlflowClient()
    data_run = client.create_run("0", tags={"stage": "generate_dataset", LINEAGE_TAG: dataset.keys[0]}).info.run_id
    client.set_terminated(data_run)
    (mf_job,) = pipeline.plan(cfg)[1]
    killed = client.create_run("0", tags={"stage": "train_mf", LINEAGE_TAG: mf_job.keys[0]}).info.run_id
    client.set_terminated(killed, "KILLED")
    (job,) = pipeline.plan(cfg)[1]
    assert job.state == "run" and job.note == f"run {killed} KILLED before its first checkpoint"
    state = tracking_store / "state.pt"
    state.write_bytes(b"state")
    client.log_artifact(killed, str(state), "resume")
    (job,) = pipeline.plan(cfg)[1]
    assert (job.state, job.run_id, job.command()) == ("resume", killed, ["train-mf", "--resume", killed])


@pytest.mark.skipif(
    "env_params" not in {f.name for f in dataclasses.fields(GenerateDatasetConfig)},
    reason="needs simulator overrides (env_params) on the stage configs",
)
def test_an_env_param_sweep_gives_each_value_its_dataset_and_jobs(tracking_store):
    cfg = pipeline.PipelineConfig.resolve(
        "focused_mix", "sac_gems,random", "58407201", preset="quick", env_param=("boredom_threshold=3,4",)
    )
    datasets, upstream, training = pipeline.plan(cfg)
    assert [job.name for job in datasets] == [
        "dataset/focused_mix [boredom_threshold=3]",
        "dataset/focused_mix [boredom_threshold=4]",
    ]
    assert len(upstream) == 2 and len(training) == 4
    for job in datasets + training:
        value = job.name.rsplit("=", 1)[1].rstrip("]")
        assert job.args[-2:] == ["--env-param", f"boredom_threshold={value}"], job.args
    assert len({job.keys for job in datasets + training}) == 6


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_job_state_follows_the_runs_of_its_key(tracking_store):
    cfg = pipeline.PipelineConfig.resolve("focused_mix", "sac_topk_ideal", "58407201", preset="quick")
    client = MlflowClient()
    checkpoint = tracking_store / "state.pt"
    checkpoint.write_bytes(b"state")

    def newest_run(status, checkpointed=False, **tags):
        time.sleep(0.01)  # a later start time than the run before
        (job,) = pipeline.plan(cfg)[2]
        run_id = client.create_run("0", tags={"stage": "train_online", LINEAGE_TAG: job.keys[0], **tags}).info.run_id
        if checkpointed:
            client.log_artifact(run_id, str(checkpoint), "resume")
        if status != "RUNNING":
            client.set_terminated(run_id, status)
        (job,) = pipeline.plan(cfg)[2]
        return run_id, job

    here = {"host": socket.gethostname()}
    _, job = newest_run("FAILED", checkpointed=True)  # an error, not a death: a new run
    assert (job.state, job.command()[0]) == ("run", "train-online") and "FAILED" in job.note
    run_id, job = newest_run("KILLED")
    assert job.state == "run" and job.note == f"run {run_id} KILLED before its first checkpoint"
    run_id, job = newest_run("KILLED", checkpointed=True)
    assert (job.state, job.run_id, job.command()) == ("resume", run_id, ["train-online", "--resume", run_id])
    run_id, job = newest_run("FAILED", checkpointed=True, exit_signal="SIGTERM")
    assert (job.state, job.run_id, job.note) == ("resume", run_id, "FAILED by SIGTERM")
    run_id, job = newest_run("RUNNING", checkpointed=True, pid=str(_dead_pid()), **here)
    assert (job.state, job.run_id, job.note) == ("resume", run_id, "RUNNING")
    run_id, job = newest_run("RUNNING", checkpointed=True, pid=str(os.getpid()), **here)
    assert (job.state, job.run_id, job.note) == ("running", run_id, f"RUNNING (pid {os.getpid()})")
    run_id, job = newest_run("RUNNING", checkpointed=True, pid="12", host="another-machine")
    assert job.state == "running" and "on host another-machine, pid 12; mark it KILLED" in job.note

    # A heartbeat decides, from any machine: fresh (within 4 intervals) is alive, older is dead.
    elsewhere = {"pid": "12", "host": "another-machine", "heartbeat_interval": "30"}
    run_id, job = newest_run("RUNNING", checkpointed=True, heartbeat=str(time.time() - 100), **elsewhere)
    assert (job.state, job.run_id) == ("running", run_id)
    assert re.fullmatch(r"RUNNING \(heartbeat 10\d s ago, host another-machine, pid 12\)", job.note), job.note
    run_id, job = newest_run("RUNNING", checkpointed=True, heartbeat=str(time.time() - 130), **elsewhere)
    assert (job.state, job.run_id, job.note) == ("resume", run_id, "RUNNING")
    run_id, job = newest_run("RUNNING", heartbeat=str(time.time() - 130), **elsewhere)
    assert job.state == "run" and job.note == f"run {run_id} RUNNING before its first checkpoint"
    # ... except that a process known gone from this machine is dead at once.
    fresh = {"heartbeat": str(time.time()), "heartbeat_interval": "30"}
    run_id, job = newest_run("RUNNING", checkpointed=True, pid=str(_dead_pid()), **here, **fresh)
    assert (job.state, job.run_id) == ("resume", run_id)
    finished, job = newest_run("FINISHED")
    assert (job.state, job.run_id) == ("finished", finished)


def test_the_seeds_of_a_sac_method_are_one_job_whose_state_follows_their_runs(tracking_store):
    seeds = [58407201, 496912423]
    cfg = pipeline.PipelineConfig.resolve("focused_mix", "sac_topk_ideal,random", "2", preset="quick")
    group, *others = pipeline.plan(cfg)[2]
    assert group.name == "sac_topk_ideal/focused_mix/seeds 58407201,496912423" and list(group.members) == seeds
    assert [job.name for job in others] == ["random/focused_mix/seed58407201", "random/focused_mix/seed496912423"]
    base = ["train-online", "--env", "focused_mix", "--preset", "quick", "--method", "sac_topk_ideal"]
    assert (group.state, group.command()) == ("run", [*base, "--seeds", "58407201,496912423"])
    per_seed = dataclasses.replace(cfg, group_seeds=False)
    assert [job.name for job in pipeline.plan(per_seed)[2][:2]] == [
        "sac_topk_ideal/focused_mix/seed58407201",
        "sac_topk_ideal/focused_mix/seed496912423",
    ]
    fused = pipeline.PipelineConfig.resolve(
        "focused_mix", "sac_topk_ideal", "2", preset="quick", assignments=("fused_update=true,false",)
    )
    # a group has no fused update: the fused variant keeps one job a seed, the plain one is a group
    assert [(job.name, bool(job.members)) for job in pipeline.plan(fused)[2]] == [
        ("sac_topk_ideal/focused_mix/seed58407201 [fused_update=true]", False),
        ("sac_topk_ideal/focused_mix/seed496912423 [fused_update=true]", False),
        ("sac_topk_ideal/focused_mix/seeds 58407201,496912423 [fused_update=false]", True),
    ]
    client = MlflowClient()

    def seed_run(seed, status, **tags):
        key = group.members[seed].keys[0]
        run_id = client.create_run("0", tags={"stage": "train_online", LINEAGE_TAG: key, **tags}).info.run_id
        client.set_terminated(run_id, status)
        return run_id

    def located():
        (job,) = [job for job in pipeline.plan(cfg)[2] if job.members]
        return job

    seed_run(seeds[0], "FINISHED")  # trained alone by an earlier, per-seed grid
    job = located()
    assert (job.state, job.note) == ("run", "seeds 58407201 finished; runs the others")
    assert job.command() == [*base, "--seeds", "496912423,"]  # one seed, not a count
    parent = client.create_run("0", tags={"stage": "train_online_group"}).info.run_id
    client.log_param(parent, "seeds_resolved", "58407201,496912423")
    client.set_terminated(parent, "FAILED")
    child = seed_run(seeds[1], "FAILED", **{"mlflow.parentRunId": parent})
    assert located().state == "run"  # a group that failed on an error starts anew
    client.set_tag(parent, "exit_signal", "SIGKILL")  # ... one that was killed resumes
    job = located()
    assert (job.state, job.run_id, job.note) == ("resume", parent, "FAILED by SIGKILL")
    assert job.command() == ["train-online", "--resume", parent]
    assert {run.info.run_id for run in pipeline.job_runs(job)} >= {parent, child}
    client.set_tag(parent, "failed_seeds", str(seeds[1]))  # its unfinished seed diverged there: a new group
    assert located().state == "run"
    seed_run(seeds[1], "FINISHED")
    assert located().state == "finished"
    assert "phase 3/3 (training): 3 jobs, 1 already finished, 2 to run" in pipeline.describe_plan(cfg)


def test_status_shows_each_job_of_a_past_pipeline_with_its_newest_run(tracking_store):
    cfg = pipeline.PipelineConfig.resolve("focused_mix", "random", "2", preset="quick")
    client = MlflowClient()
    parent = client.create_run("0", tags={"stage": "pipeline"}).info.run_id
    for key, value in {**cfg.params(), "backend": "ray"}.items():
        client.log_param(parent, key, value)
    client.set_terminated(parent, "FAILED")
    first, second = pipeline.plan(cfg)[2]
    done = client.create_run("0", tags={"stage": "train_online", LINEAGE_TAG: first.keys[0]}).info.run_id
    client.set_terminated(done, "FINISHED")
    lost = client.create_run(
        "0",
        tags={
            "stage": "train_online",
            LINEAGE_TAG: second.keys[0],
            "heartbeat": str(time.time() - 200),
            "heartbeat_interval": "30",
            "host": "another-machine",
        },
    ).info.run_id
    client.log_param(lost, "episodes", "1000")
    client.log_metric(lost, "time/episodes", 100.0, step=400)

    text = pipeline_status.status()
    assert text.startswith(f"pipeline run {parent} (FAILED): started "), text
    assert "; backend ray\nphase 1/3 (datasets): 0 jobs\nphase 2/3 (MF and GeMS): 0 jobs\n" in text
    assert "phase 3/3 (training): 2 jobs: 1 finished, 1 lost\n" in text
    assert f"  finished  {first.name}  {done}  " in text
    assert f"  lost      {second.name}  {lost}  " in text
    progress = r"\(episode 400 of 1,000; no heartbeat for 20\d s; the next pipeline starts a new run\)"
    assert re.search(progress, text), text
    result = CliRunner().invoke(main, ["pipeline", "status", "--run", parent])
    assert result.exit_code == 0 and result.output.splitlines()[1:4] == text.splitlines()[1:4]

    result = CliRunner().invoke(main, ["pipeline", "status", "--run", done])
    assert result.exit_code == 1 and f"run {done} is not a pipeline run (its stage: train_online)" in result.output


def test_status_tells_how_far_a_training_run_got(tracking_store):
    client = MlflowClient()
    online = client.create_run("0", tags={"stage": "train_online"}).info.run_id
    client.log_param(online, "episodes", "100000")
    # as training logs them: the episodes of the window, at the episode reached; the last window was paused
    for episode, pace in ((39000, 20.0), (40000, 19.0), (41000, 21.0), (42000, 20.0), (43000, 1.5)):
        client.log_batch(
            online, [Metric("time/episodes", 1000.0, 0, episode), Metric("time/episodes_per_s", pace, 0, episode)]
        )
    gems = client.create_run("0", tags={"stage": "pretrain_gems"}).info.run_id
    client.log_param(gems, "epochs", "15")
    start = client.get_run(gems).info.start_time
    # epochs of 400, 400, 300 and 2,800 s: the last was stopped half-way for 40 min, then resumed from its start
    ends = [start + 400_000, start + 800_000, start + 1_100_000, start + 3_900_000]
    client.log_batch(
        gems,
        [
            Metric("val/loss", loss, end, epoch)
            for epoch, (loss, end) in enumerate(zip([3.8, 3.5, 3.4, 3.3], ends, strict=True))
        ],
    )

    left = "about 47 min 30 s left"  # (100,000 - 43,000) episodes at the median pace, 20 per second (not 1.5)
    assert pipeline_status._progress(client.get_run(online), live=True) == f"episode 43,000 of 100,000, {left}; "
    assert pipeline_status._progress(client.get_run(online), live=False) == "episode 43,000 of 100,000; "
    left = "about 1 h 13 min left"  # 11 epochs at the median pace, 400 s (the last epoch's would say 8 h 33 min)
    assert pipeline_status._progress(client.get_run(gems), live=True) == f"4 of 15 epochs done, {left}; "
    assert pipeline_status._progress(client.get_run(gems), live=False) == "4 of 15 epochs done; "
    mf = client.create_run("0", tags={"stage": "train_mf"}).info.run_id  # early stopping: no total
    assert pipeline_status._progress(client.get_run(mf), live=True) == ""  # nothing evaluated yet
    client.log_batch(
        mf, [Metric("val/bpr_loss", loss, 0, step) for step, loss in [(1, 0.69), (1000, 0.42), (2000, 0.45)]]
    )
    assert pipeline_status._progress(client.get_run(mf), live=True) == "step 2,000, best held-out BPR loss 0.4200; "
    dataset = client.create_run("0", tags={"stage": "generate_dataset"}).info.run_id  # says nothing of its progress
    assert pipeline_status._progress(client.get_run(dataset), live=True) == ""


def test_a_running_stage_refreshes_its_heartbeat_until_it_ends(tracking_store, monkeypatch):
    from slate_rl.tracking.runs import stage_run

    client = MlflowClient()
    monkeypatch.setenv("SLATE_RL_HEARTBEAT_S", "0.2")
    with stage_run("stress", run_name="beating") as run:
        first = float(client.get_run(run.run_id).data.tags["heartbeat"])
        time.sleep(1.0)
        tags = client.get_run(run.run_id).data.tags
        assert float(tags["heartbeat"]) > first and tags["heartbeat_interval"] == "0.2"
    last = client.get_run(run.run_id).data.tags["heartbeat"]
    time.sleep(0.6)
    assert client.get_run(run.run_id).data.tags["heartbeat"] == last  # stopped with the run

    monkeypatch.setenv("SLATE_RL_HEARTBEAT_S", "0")
    refused = r"SLATE_RL_HEARTBEAT_S='0' must be a number of seconds above 0"
    with pytest.raises(SlateRLError, match=refused), stage_run("stress", run_name="refused"):
        pass
    assert len(client.search_runs(["0"])) == 1  # the refused one created no run
