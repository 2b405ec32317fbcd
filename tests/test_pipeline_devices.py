"""`pipeline --devices`: every job of a stage that takes --device runs on one of the listed GPUs, spread evenly;
checked on the command lines the jobs get (no GPU needed)."""

from __future__ import annotations

import re

import pytest

from slate_rl.errors import SlateRLError
from slate_rl.stages import pipeline, pipeline_backends
from slate_rl.stages.pipeline_backends import GPU_STAGES, LocalBackend, job_command, pick_gpu


def job(stage: str, name: str, state: str = "run") -> pipeline.Job:
    command = stage.replace("_", "-")
    return pipeline.Job(stage, name, [command, "--env", "focused_topdown"], ("key",), state=state, run_id="r1")


def test_gpu_jobs_get_the_device_option_and_the_others_do_not():
    assert job_command(job("train_online", "a"), "parent", "cuda:2")[-4:] == [
        "--device",
        "cuda:2",
        "--parent-run",
        "parent",
    ]
    assert "--device" not in job_command(job("generate_dataset", "d"), "parent", "cuda:2")
    assert "--device" not in job_command(job("train_online", "a"), "parent")
    resumed = job_command(job("pretrain_gems", "g", state="resume"), "parent", "cuda:0")
    assert resumed[-5:] == ["pretrain-gems", "--resume", "r1", "--device", "cuda:0"]
    assert set(GPU_STAGES) == {"train_online", "pretrain_gems", "train_mf", "collect", "train_offline"}


def test_the_gpu_with_the_fewest_running_jobs_is_picked_first_listed_on_ties():
    gpus = ["0", "1", "2", "3"]
    assert pick_gpu(gpus, []) == "0"
    assert pick_gpu(gpus, ["0"]) == "1"
    assert pick_gpu(gpus, ["0", "1", "2", "3"]) == "0"
    assert pick_gpu(gpus, ["0", "0", "1", "3"]) == "2"
    assert pick_gpu(["3", "1"], []) == "3"


class FakeProcess:
    def __init__(self, command, **kwargs):
        self.command, self.returncode = command, None
        self.pid = 1

    def poll(self):
        return self.returncode


def test_the_local_pool_spreads_the_gpu_jobs_round_robin_and_reuses_a_freed_gpu(tracking_store, monkeypatch):
    started: list[FakeProcess] = []

    def popen(command, **kwargs):
        started.append(FakeProcess(command))
        return started[-1]

    monkeypatch.setattr(pipeline_backends.subprocess, "Popen", popen)
    monkeypatch.setattr(pipeline_backends.time, "sleep", lambda seconds: None)
    cfg = pipeline.PipelineConfig(["focused_topdown"], ["sac_gems"], [1], workers=6, devices=["0", "1", "2"])
    backend = LocalBackend(cfg)
    jobs = [
        job("generate_dataset", "dataset"),
        job("train_mf", "mf"),
        job("pretrain_gems", "gems"),
        job("train_online", "a"),
        job("train_online", "b"),
    ]
    for item in jobs:
        backend.submit(item, "parent")

    def device_of(process: FakeProcess) -> str | None:
        command = process.command
        return command[command.index("--device") + 1] if "--device" in command else None

    assert [device_of(p) for p in started] == [None, "cuda:0", "cuda:1", "cuda:2", "cuda:0"]
    started[2].returncode = 0  # the GeMS job on GPU 1 ends: the next GPU job goes there
    assert [outcome.job.name for outcome in backend.finished()] == ["gems"]
    backend.submit(job("train_online", "c"), "parent")
    assert device_of(started[-1]) == "cuda:1"
    backend.close()


def test_devices_must_be_gpu_numbers():
    with pytest.raises(SlateRLError, match=re.escape("--devices lists GPU numbers, e.g. 0,1,2,3 (got cuda:1)")):
        pipeline.PipelineConfig.resolve("focused_topdown", "random", "1", devices=["0", "cuda:1"])
