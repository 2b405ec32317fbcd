"""The train_online stage: what a run logs, registration, resume into the same run, and bad input."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from agents_helpers import single_thread  # noqa: F401 (autouse: one intra-op thread, as the CLI sets)
from slate_rl import config
from slate_rl.agents.training import Trainer
from slate_rl.cli import main
from slate_rl.errors import SlateRLError
from slate_rl.protocol import Protocol
from slate_rl.stage_configs import TrainOnlineConfig
from slate_rl.stages import compare, train_online
from slate_rl.tracking import models

TINY = dict(
    episodes=60,
    warmup_episodes=20,
    val_every=20,
    val_episodes=20,
    test_episodes=100,
    save_every=20,
    parallel_episodes=10,
)


def _config(method="sac_topk_ideal", **values):
    return TrainOnlineConfig.resolve("focused_mix", "quick", method=method, **{**TINY, **values})


def _paths(run_id, path=""):
    client = MlflowClient()
    found = []
    for item in client.list_artifacts(run_id, path):
        found += _paths(run_id, item.path) if item.is_dir else [item.path]
    return set(found)


def test_run_logs_curves_checkpoints_test_and_registers(tracking_store):
    run_id = train_online.run(_config())
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "FINISHED"
    assert {k: run.data.tags[k] for k in ("stage", "env", "method", "seed", "preset")} == {
        "stage": "train_online",
        "env": "focused_mix",
        "method": "sac_topk_ideal",
        "seed": "58407201",
        "preset": "quick",
    }
    assert run.data.tags["git_commit"]
    history = MlflowClient().get_metric_history(run_id, "val_return")
    assert [m.step for m in history] == [20, 40, 60]
    assert {"train/q_loss", "train/alpha", "time/episodes_per_s"} <= set(run.data.metrics)
    assert run.data.metrics["test_return"] > 0
    # the baselines on the same environment and re-seeded test users: what runs of those methods would test
    for method, metric in (("random", "test_return_random"), ("short_term_oracle", "test_return_oracle")):
        baseline = MlflowClient().get_run(train_online.run(_config(method=method, register=False)))
        assert run.data.metrics[metric] == baseline.data.metrics["test_return"]
        assert "test_return_random" not in baseline.data.metrics
    files = _paths(run_id)
    assert {
        "config.json",
        "console.log",
        "learning_curve.png",
        "test/test_returns.csv",
        "checkpoints/best/policy.pt",
        "checkpoints/episode_000020/policy.pt",
        "checkpoints/episode_000060/policy.pt",
        "resume/state.pt",
        "policies/best/MLmodel",
    } <= files
    (version,) = models.versions("focused_mix")
    assert version.run_id == run_id and version.tags["method"] == "sac_topk_ideal"
    assert float(version.tags["test_return"]) == pytest.approx(run.data.metrics["test_return"])


def test_resumed_run_ends_with_the_metrics_of_an_uninterrupted_one(tracking_store, monkeypatch):
    uninterrupted = MlflowClient().get_run(train_online.run(_config(register=False)))

    original = Trainer._block

    def killed_after_40(self):
        original(self)
        if self.episode == 40:
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_block", killed_after_40)
    with pytest.raises(KeyboardInterrupt):
        train_online.run(_config(register=False))
    (killed,) = MlflowClient().search_runs(["0"], "attributes.status = 'KILLED'")
    monkeypatch.setattr(Trainer, "_block", original)

    train_online.run(train_online.resumable(killed.info.run_id), resume_run=killed.info.run_id)
    resumed = MlflowClient().get_run(killed.info.run_id)
    assert resumed.info.status == "FINISHED"
    assert resumed.data.metrics["test_return"] == uninterrupted.data.metrics["test_return"]

    def curve(run_id: str) -> list[tuple[int, float]]:
        return [(m.step, m.value) for m in MlflowClient().get_metric_history(run_id, "val_return")]

    assert curve(resumed.info.run_id) == curve(uninterrupted.info.run_id)
    assert "console-1.log" in _paths(resumed.info.run_id)


def test_cli_end_of_run_lines(tracking_store):
    args = [
        "train-online",
        "--env",
        "focused_mix",
        "--preset",
        "quick",
        "--method",
        "reinforce_softmax",
        *[f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()],
    ]
    unregistered = CliRunner().invoke(main, [*args, "--register", "false"])
    assert unregistered.exit_code == 0, unregistered.output
    assert "test return " in unregistered.output and "over 100 test users (Random " in unregistered.output
    assert "short-term oracle " in unregistered.output and "registry list" not in unregistered.output
    registered = CliRunner().invoke(main, args)
    assert registered.exit_code == 0, registered.output
    assert "registered as version 1 of slate-rl.focused_mix" in registered.output
    assert "`slate-rl registry list --env focused_mix`" in registered.output


def test_protocol_fields_are_the_configs_own_parameters():
    cfg = _config(overlap_collection=False)
    assert cfg.protocol() == Protocol(**TINY, overlap_collection=False)
    params = cfg.as_params()
    assert {k: params[k] for k in (*TINY, "overlap_collection")} == {**TINY, "overlap_collection": False}
    with pytest.raises(SlateRLError, match=r"warmup_episodes must lie in \[0, episodes\]"):
        _config(warmup_episodes=61)


def test_resume_refuses_finished_runs_and_runs_without_checkpoint(tracking_store):
    finished = train_online.run(_config(method="random", register=False))
    with pytest.raises(SlateRLError, match="already finished"):
        train_online.resumable(finished)
    client = MlflowClient()
    bare = client.create_run("0", tags={"stage": "train_online"}).info.run_id
    client.set_terminated(bare, "FAILED")
    with pytest.raises(SlateRLError, match=r"has no config.json"):
        train_online.resumable(bare)


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--method", "sac_gem"],  # the online methods only: an offline algorithm is not a choice here
            "unknown method 'sac_gem'; choose one of: short_term_oracle, sac_topk_ideal, slateq, random, "
            "reinforce_softmax, sac_wknn, sac_topk_mf, sac_gems\n",
        ),
        (["--episodes", "0"], "episodes must be >= 1"),
        (["--seed", "-3"], "seed must lie in [0, 2**63)"),
        (["--set", "gama=0.9"], "unknown hyper-parameter(s) gama (--set); valid ones: alpha, alpha_lr"),
        (["--set", "gamma=abc"], "hyper-parameter gamma must be a number (got 'abc')"),
        (["--set", "gamma=1.5"], "hyper-parameter gamma must lie in [0, 1] (got 1.5)"),
        (["--set", "hidden=2.5"], "hyper-parameter hidden must be a whole number (got 2.5)"),
        (["--set", "q_lr=0"], "hyper-parameter q_lr must be > 0 (got 0.0)"),
        (["--resume", "0123456789abcdef0123456789abcdef"], "no run 0123456789abcdef0123456789abcdef to resume"),
    ],
)
def test_cli_bad_input(tracking_store, args, message):
    result = CliRunner().invoke(
        main, ["train-online", "--env", "focused_mix", "--preset", "quick", "--method", "sac_topk_ideal", *args]
    )
    assert result.exit_code == 1, result.output
    assert message in result.output
    assert models.versions("focused_mix") == []
    if args[0] == "--set":  # refused before any run is created
        assert MlflowClient().search_runs([e.experiment_id for e in MlflowClient().search_experiments()]) == []


def test_gems_run_of_another_setting_is_refused(tracking_store):
    with pytest.raises(SlateRLError, match="not a run reference"):
        train_online.run(_config(method="sac_gems", gems="gems.ckpt"))


def test_mf_reference_validation_takes_the_table_of_an_mf_trained_that_way(tracking_store, monkeypatch):
    presets = tracking_store / "presets"  # a quicker quick preset: a small dataset, an MF of 10 steps
    presets.mkdir()
    (presets / "quick.yaml").write_text(
        "generate_dataset: {n_sessions: 200, chunk_size: 200}\ntrain_mf: {eval_every: 5, max_steps: 10}\n"
    )
    monkeypatch.setenv(config.OVERRIDE_VARIABLE, str(presets))
    client = MlflowClient()
    mf_runs = {}
    for value in (True, False):
        run_id = train_online.run(_config(method="sac_topk_mf", mf_reference_validation=value, register=False))
        mf_runs[value] = client.get_run(client.get_run(run_id).data.tags["upstream.mf"].split("/")[1])
    assert mf_runs[True].data.params["reference_validation"] == "true"  # found or trained by lineage, as asked
    assert mf_runs[False].data.params["reference_validation"] == "false"
    assert len(client.search_runs(["0"], "tags.stage = 'generate_dataset'")) == 1  # both learn from one dataset
    runs = client.search_runs(["0"], "tags.stage = 'train_online'")
    variants = {r.variant for r in compare.to_results(runs, with_curve=False)}
    assert variants == {(), (("mf_reference_validation", "true"),)}  # the default MF is the plain row

    other = f"runs:/{mf_runs[False].info.run_id}"  # an MF given that was trained otherwise
    with pytest.raises(SlateRLError, match="trained with reference_validation = false, but mf_reference_valid"):
        train_online.run(_config(method="sac_topk_mf", mf=other, mf_reference_validation=True, register=False))
    with pytest.raises(SlateRLError, match="sac_topk_ideal uses none: drop it"):
        _config(mf_reference_validation=True)


# 200-episode returns (mean, standard error) of the reference implementation's short-term oracle (ε = 0) and
# random slates.
REFERENCE_RETURNS = {
    ("focused_topdown", "short_term_oracle"): (103.9, 3.1),
    ("focused_topdown", "random"): (33.4, 0.5),
    ("diffuse_divpen", "short_term_oracle"): (76.5, 1.3),
    ("diffuse_divpen", "random"): (31.2, 0.5),
}


@pytest.mark.parametrize("env, method", sorted(REFERENCE_RETURNS))
def test_baselines_reproduce_the_reference_returns(tracking_store, paper_embeddings, env, method):
    table = paper_embeddings / f"item_embeddings_{env.split('_')[0]}.pt"
    cfg = TrainOnlineConfig.resolve(env, "paper", method=method, item_embeddings=str(table), register=False)
    run = MlflowClient().get_run(train_online.run(cfg))
    mean, stderr = REFERENCE_RETURNS[env, method]
    ours = run.data.metrics["test_return"], run.data.metrics["test_return_stderr"]
    assert abs(ours[0] - mean) < 3 * (stderr**2 + ours[1] ** 2) ** 0.5
