"""The pipeline's offline grid: its options checked before anything runs, its jobs in the plan, and a tiny grid
(online training -> policies chosen by rule -> collect -> offline GeMS -> BC and IQL with two expectiles) that
finishes, keeps its variants apart in the offline table and skips everything when run again."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from slate_rl.cli import main
from slate_rl.errors import SlateRLError
from slate_rl.stages import pipeline
from slate_rl.tracking.lineage import LINEAGE_TAG
from slate_rl.tracking.runs import RESUME_FILE, RESUME_PATH

ENV = "focused_mix"
SEED = "58407201"
ONLINE = [
    "--envs",
    ENV,
    "--methods",
    "sac_topk_ideal",
    "--seeds",
    SEED,
    "--preset",
    "quick",
    "--set",
    "episodes=80,warmup_episodes=20,val_every=20,save_every=20,val_episodes=20,test_episodes=20",
    "--select-policies",
    "0.5",
]
SIZES = "eval_every=2,save_every=2,val_episodes=5,test_episodes=5,batch_episodes=4"
GRID = {
    "offline_algorithms": "bc,iql",
    "qualities": "expert",
    "offline_steps": 4,
    "offline_set": ("expectile=0.7,0.8", SIZES),
    "collect_set": ("episodes=20,batch_size=20,reference_episodes=20,format=npz",),
}
OFFLINE_JOBS = [
    f"bc/{ENV}/expert/seed{SEED}",
    f"iql/{ENV}/expert/seed{SEED} [expectile=0.7]",
    f"iql/{ENV}/expert/seed{SEED} [expectile=0.8]",
]


def cli(options: dict) -> list[str]:
    """The options of the offline grid as command-line arguments (a tuple: the option repeated)."""
    return [
        a
        for name, value in options.items()
        for item in (value if isinstance(value, tuple) else (value,))
        for a in (f"--{name.replace('_', '-')}", str(item))
    ]


OFFLINE = cli(GRID)


def resolve(methods: str = "sac_topk_ideal,sac_gems", seeds: str = "2", **offline) -> pipeline.PipelineConfig:
    """The pipeline's config with these options of the offline grid (the others at the CLI's defaults)."""
    defaults = {"qualities": "expert,medium,random", "offline_seeds": "", "offline_steps": 0}
    env_param = offline.pop("env_param", ())
    options = {**defaults, "offline_set": (), "collect_set": (), "offline_mix": (), **offline}
    options.setdefault("offline_algorithms", "")
    return pipeline.PipelineConfig.resolve(
        ENV, methods, seeds, env_param=env_param, offline=options, select_policies=0.5, preset="quick"
    )


BC = {"offline_algorithms": "bc"}


@pytest.mark.parametrize(
    ("offline", "message"),
    [
        ({"offline_algorithms": "bc,dqn"}, "--offline-algorithms dqn: unknown algorithm; choose among bc, td3_bc"),
        ({"offline_algorithms": " , "}, "--offline-algorithms is empty"),
        ({**BC, "qualities": ""}, "--qualities is empty"),
        ({**BC, "qualities": "expert,great"}, "--qualities great: not a quality"),
        ({**BC, "offline_seeds": "0"}, "seeds '0' is neither a count"),
        ({**BC, "offline_set": ("expectile=0.7,0.9",)}, "--offline-set expectile: not a train_offline option nor"),
        ({"offline_algorithms": "bc,iql", "offline_set": ("expectile=",)}, "must look like KEY=VALUE"),
        (
            {"offline_algorithms": "iql", "offline_set": ("expectile=0.7,1.5",)},
            "expectile must lie in (0, 1) (got 1.5)",
        ),
        ({**BC, "offline_set": ("steps=10",)}, "give the gradient steps with --offline-steps"),
        ({**BC, "offline_set": ("seed=3",)}, "the grid sets seed itself"),
        (
            {**BC, "methods": "sac_gems", "offline_set": ("ranker=gems",)},
            "the random dataset holds only the random policy's episodes",
        ),
        (
            {**BC, "qualities": "expert", "offline_set": ("ranker=gems",)},
            "they come from sac_topk_ideal, which acts through none",
        ),
        ({**BC, "offline_steps": -1}, "--offline-steps must be a positive number"),
        ({**BC, "collect_set": ("episodes=10,20",)}, "--collect-set episodes: takes one value"),
        ({**BC, "collect_set": ("quality=medium",)}, "the grid sets quality itself"),
        ({**BC, "collect_set": ("epsilon=0.1",)}, "--collect-set epsilon: not a collect option"),
        ({**BC, "offline_mix": ("expert=random:1.0",)}, "the name of an alias or of another mix"),
        ({**BC, "qualities": "b3", "offline_mix": ("b3=sac:0.5,expert:0.5",)}, "its parts name sac"),
        ({**BC, "offline_mix": ("b3=expert:0.5",)}, "the mix fractions add up to 0.5, not 1"),
        ({**BC, "env_param": ("boredom_threshold=3,5",)}, "one simulator per environment"),
        ({"qualities": "expert", "offline_steps": 10}, "--qualities, --offline-steps: options of the offline grid"),
    ],
)
def test_bad_offline_grid_input_is_refused_before_anything_runs(offline, message):
    with pytest.raises(SlateRLError, match=re.escape(message)):
        resolve(**offline)


def test_the_grid_takes_hyper_parameters_of_any_of_its_algorithms_and_names_mixes():
    cfg = resolve(
        offline_algorithms="bc,iql",
        qualities="expert,mix,b3",
        offline_seeds="7,8",
        offline_set=("expectile=0.7,0.9,ranker=topk_ideal",),
        offline_mix=("b3=expert:0.5,random:0.5:0.1",),
    )
    grid = cfg.offline
    assert grid is not None and grid.seeds == [7, 8] and grid.steps == 0
    assert grid.split("bc") == ({"ranker": ["topk_ideal"]}, {})  # bc has no expectile: one variant
    assert grid.split("iql") == ({"ranker": ["topk_ideal"]}, {"expectile": [0.7, 0.9]})
    assert [part.policy for part in grid.collect_config(cfg, ENV, "mix").parts()] == [
        "expert",
        "expert",
        "medium",
        "random",
    ]
    assert grid.collect_config(cfg, ENV, "b3").name == "b3"
    assert resolve().offline is None


def test_dry_run_lists_the_offline_jobs_and_a_run_without_aliases_is_refused(tracking_store):
    result = CliRunner().invoke(main, ["pipeline", *ONLINE, *OFFLINE, "--dry-run"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[lines.index("phase 4/6 (collection): 1 jobs, 0 already finished, 1 to run, 0 to resume") + 1] == (
        f"  to run     collect/{ENV}/expert (after policy selection)"
    )
    assert f"  to run     gems/{ENV}/expert (after its dataset)" in lines
    start = lines.index("phase 6/6 (offline training): 3 jobs, 0 already finished, 3 to run, 0 to resume")
    assert lines[start + 1 :] == [f"  to run     {name} (after its dataset)" for name in OFFLINE_JOBS]
    without_selection = [item for item in ONLINE if item not in ("--select-policies", "0.5")]
    result = CliRunner().invoke(main, ["pipeline", *without_selection, *OFFLINE])
    assert result.exit_code == 1
    assert f"{ENV} has no expert: pass --select-policies FRACTION" in result.output
    assert not MlflowClient().search_runs(["0"])  # refused before the pipeline's run began


@pytest.fixture(scope="module")
def tiny_grid(module_store):
    """The tiny grid, run once (jobs are processes of their own); returns the log of the pipeline."""
    return _pipeline(module_store, [*ONLINE, *OFFLINE, "--workers", "2"])


def _pipeline(store: Path, args: list[str]) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(
        [sys.executable, "-m", "slate_rl.cli", "pipeline", *args],
        cwd=store,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def _runs(stage: str) -> list:
    return MlflowClient().search_runs(["0"], f"tags.stage = '{stage}'")


@pytest.mark.slow
def test_a_tiny_offline_grid_finishes_with_its_variants_and_table(tiny_grid, module_store):
    (parent,) = _runs("pipeline")
    (dataset,) = _runs("collect")
    assert dataset.info.status == "FINISHED" and dataset.data.tags["quality"] == "expert"
    (gems,) = _runs("pretrain_gems")
    assert gems.data.tags["upstream.dataset"] == f"runs:/{dataset.info.run_id}/dataset"
    offline = _runs("train_offline")
    assert {r.info.status for r in offline} == {"FINISHED"}
    assert sorted((r.data.tags["algorithm"], r.data.params.get("agent.expectile")) for r in offline) == [
        ("bc", None),
        ("iql", "0.7"),
        ("iql", "0.8"),
    ]
    for run in offline:
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["dataset_run"] == dataset.info.run_id
        assert run.data.tags["upstream.gems"] == f"runs:/{gems.info.run_id}/gems"
        assert run.data.params["steps"] == "4" and run.data.params["ranker"] == "gems_offline"
        assert run.data.tags["threads"] == "1"  # jobs side by side: one thread each
    table = (module_store / "reports" / "pipeline" / "offline_results.md").read_text()
    rows = [line.split(" |")[0] for line in table.splitlines() if line.startswith("| ")]
    assert rows[:5] == ["| Algorithm", "| *Behaviour policy*", "| BC", "| IQL [expectile=0.7]", "| IQL [expectile=0.8]"]


@pytest.mark.slow
def test_a_second_run_skips_every_job_and_a_killed_offline_run_is_resumed(tiny_grid, module_store):
    before = {stage: len(_runs(stage)) for stage in ("collect", "pretrain_gems", "train_offline", "train_online")}
    log = _pipeline(module_store, [*ONLINE, *OFFLINE])
    assert log.count("already finished, 0 to run, 0 to resume") == 6
    assert {stage: len(_runs(stage)) for stage in before} == before
    plan = CliRunner().invoke(main, ["pipeline", *ONLINE, *OFFLINE, "--dry-run"]).output
    for name in OFFLINE_JOBS:
        assert f"  finished   {name}  " in plan
    status = CliRunner().invoke(main, ["pipeline", "status"]).output
    assert "phase 6/6 (offline training): 3 jobs: 3 finished" in status
    # a third expectile is a new job; a run of it killed after its first checkpoint is resumed, not started anew
    cfg = resolve("sac_topk_ideal", SEED, **{**GRID, "offline_set": ("expectile=0.7,0.8,0.9", SIZES)})
    (new,) = [job for job in pipeline.phases(cfg)[-1][1] if job.state != "finished"]
    assert new.name == f"iql/{ENV}/expert/seed{SEED} [expectile=0.9]" and new.keys
    client = MlflowClient()
    killed = client.create_run("0", tags={"stage": "train_offline", LINEAGE_TAG: new.keys[0]})
    (module_store / RESUME_FILE).write_bytes(b"state")
    client.log_artifact(killed.info.run_id, str(module_store / RESUME_FILE), RESUME_PATH)
    client.set_terminated(killed.info.run_id, "KILLED")
    (job,) = [job for job in pipeline.phases(cfg)[-1][1] if job.state != "finished"]
    assert (job.state, job.run_id) == ("resume", killed.info.run_id)
    assert job.command() == ["train-offline", "--resume", killed.info.run_id]
