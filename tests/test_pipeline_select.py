"""The pipeline's --select-policies: its checks, which run it chooses from, and a tiny grid that ends with the
aliases set by rule."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from slate_rl.errors import SlateRLError
from slate_rl.stages import pipeline, registry
from slate_rl.tracking import models
from synthetic_runs import add_train_online_run


def test_select_policies_checks_its_fraction_and_method(tracking_store):
    cfg = pipeline.PipelineConfig.resolve("focused_mix", "random,sac_topk_ideal,sac_gems", "1", select_policies=0.5)
    assert cfg.select_method == "sac_topk_ideal"  # the grid's first online method
    assert pipeline.describe_plan(cfg).endswith(
        "then: per environment, registry select --medium 0.5 on the sac_topk_ideal run with the best test return"
    )
    for values, message in (
        ({"select_policies": 1.5}, "must lie strictly between 0 and 1"),
        ({"select_policies": 0.5, "select_method": "sac_wknn"}, "--select-method sac_wknn: not a method of this grid"),
        ({"select_policies": 0.5, "select_method": "random"}, "choose one of: sac_topk_ideal, sac_gems"),
    ):
        with pytest.raises(SlateRLError, match=message):
            pipeline.PipelineConfig.resolve("focused_mix", "random,sac_topk_ideal,sac_gems", "1", **values)
    with pytest.raises(SlateRLError, match=r"the grid's methods \(random\) train none"):
        pipeline.PipelineConfig.resolve("focused_mix", "random", "1", select_policies=0.5)


def test_select_policies_chooses_the_best_run_of_the_method_per_environment(tracking_store, monkeypatch):
    runs = {
        "low": add_train_online_run("sac_topk_ideal", "focused_mix", 0, 100.0, preset="quick"),
        "high": add_train_online_run("sac_topk_ideal", "focused_mix", 1, 120.0, preset="quick"),
        "other_method": add_train_online_run("sac_gems", "focused_mix", 0, 200.0, preset="quick"),
        "diffuse": add_train_online_run("sac_topk_ideal", "diffuse_mix", 0, 90.0, preset="quick"),
    }
    jobs = [pipeline.Job("train_online", name, [], (), state="finished", run_id=run) for name, run in runs.items()]
    jobs.append(pipeline.Job("train_online", "unfinished", [], (), state="run"))
    chosen = []

    class Chosen:
        def describe(self) -> str:
            return "chosen"

    def select(run_id: str, medium: float) -> Chosen:
        chosen.append((run_id, medium))
        return Chosen()

    monkeypatch.setattr(registry, "select_policies", select)
    cfg = pipeline.PipelineConfig.resolve(
        "focused_mix,diffuse_mix,focused_topdown",
        "sac_gems,sac_topk_ideal",
        "2",
        select_policies=0.4,
        select_method="sac_topk_ideal",
    )
    failures = pipeline.select_policies(cfg, jobs)
    assert chosen == [(runs["high"], 0.4), (runs["diffuse"], 0.4)]
    assert failures == ["select/focused_topdown"]  # no run there


@pytest.mark.slow
def test_a_tiny_grid_ends_with_policies_chosen_by_rule(tracking_store):
    sizes = "episodes=80,warmup_episodes=20,val_every=20,save_every=20,val_episodes=20,test_episodes=20"
    grid = ["--envs", "focused_mix", "--methods", "sac_topk_ideal", "--seeds", "58407201", "--preset", "quick"]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(
        [sys.executable, "-m", "slate_rl.cli", "pipeline", *grid, "--set", sizes, "--select-policies", "0.5"],
        cwd=tracking_store,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "policies chosen by rule for focused_mix" in result.stderr + result.stdout
    aliases = models.aliases("focused_mix")
    assert set(aliases) == {"expert", "medium", "random"}
    expert, medium = (models.get_version("focused_mix", aliases[a]) for a in ("expert", "medium"))
    assert expert.tags["checkpoint"] == "best" and medium.tags["checkpoint"].startswith("episode_")
    assert expert.tags["run_id"] == medium.tags["run_id"]
