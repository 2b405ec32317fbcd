"""The compare stage on synthetic runs in a temporary store: statistics by hand, missing cells, refusals."""

from __future__ import annotations

import csv
import io
import math
import time

import pytest
from click.testing import CliRunner
from mlflow.entities import Metric, RunTag
from mlflow.tracking import MlflowClient
from scipy import stats as sps

from slate_rl.cli import main
from slate_rl.errors import SlateRLError
from slate_rl.stages import compare
from synthetic_runs import add_train_online_run

GEMS = [80.0, 84.0, 86.0, 90.0]
TOPK = [100.0, 104.0, 98.0, 102.0]


def _fill_store():
    for seed, (g, t) in enumerate(zip(GEMS, TOPK, strict=False)):
        add_train_online_run(
            "sac_gems",
            "focused_mix",
            seed,
            g,
            val_curve=[(1000, g - 10), (2000, g)],
            params={"latent_dim": 32, "lambda_kl": 1.0, "lambda_click": 0.5},
        )
        add_train_online_run("sac_topk_ideal", "focused_mix", seed, t, val_curve=[(1000, t - 5), (2000, t)])
    add_train_online_run(
        "sac_gems", "focused_mix", 0, 50.0, params={"latent_dim": 16, "lambda_kl": 0.5, "lambda_click": 0.5}
    )  # a sweep run
    add_train_online_run("sac_gems", "focused_mix", 1, 10.0, status="FAILED")  # never reported
    add_train_online_run("random", "focused_mix", 0, 33.0)


def _rows(out):
    return {(row["method"], row["env"]): row for row in csv.DictReader(io.StringIO((out / "results.csv").read_text()))}


def test_table_statistics_match_hand_computed_values(tracking_store):
    _fill_store()
    out = tracking_store / "report"
    cfg = compare.CompareConfig.resolve("focused_mix,diffuse_mix", "sac_gems,sac_topk_ideal,random", out=str(out))
    run_id = compare.run(cfg)
    rows = _rows(out)
    gems = rows[("sac_gems", "focused_mix")]
    mean = sum(GEMS) / 4
    sd = math.sqrt(sum((x - mean) ** 2 for x in GEMS) / 3)
    assert float(gems["n"]) == 4 and float(gems["mean"]) == pytest.approx(mean)
    assert float(gems["ci_half_width"]) == pytest.approx(sps.t.ppf(0.975, 3) * sd / 2)
    topk = rows[("sac_topk_ideal", "focused_mix")]
    welch = sps.ttest_ind(TOPK, GEMS, equal_var=False)
    assert float(topk["welch_p"]) == pytest.approx(welch.pvalue)
    assert topk["significant"] == "1" and topk["best"] == "1"
    assert rows[("random", "focused_mix")]["n"] == "1"  # one seed: no interval, shown as such
    assert rows[("sac_gems", "diffuse_mix")]["n"] in ("", "0")  # not run: missing, never filled in
    markdown = (out / "results.md").read_text()
    assert "**101.0 ±" in markdown and "—" in markdown
    assert (out / "learning_curves.png").read_bytes()[:4] == b"\x89PNG"
    artifacts = {f.path for f in MlflowClient().list_artifacts(run_id, "report")}
    assert {"report/results.md", "report/results.csv", "report/results.tex", "report/report.md"} <= artifacts
    assert "report/per_seed_focused_mix.csv" in artifacts  # one per-seed CSV per environment


def test_runs_csv_names_each_run_with_its_test_error_and_training_time(tracking_store):
    _fill_store()
    client = MlflowClient()
    (gems,) = client.search_runs(["0"], "tags.method = 'sac_gems' and tags.seed = '3' and params.latent_dim = '32'")
    windows = [Metric("time/elapsed_s", seconds, 0, step) for step, seconds in ((1000, 30.0), (2000, 45.5))]
    stderr = Metric("test_return_stderr", 1.25, 0, 0)
    client.log_batch(gems.info.run_id, [*windows, stderr], tags=[RunTag("git_commit", "abc")])
    out = tracking_store / "report"
    compare.run(compare.CompareConfig.resolve("focused_mix", "sac_gems,random", out=str(out)))
    rows = list(csv.DictReader(io.StringIO((out / "runs.csv").read_text())))
    finished = client.search_runs(["0"], "tags.stage = 'train_online' and attributes.status = 'FINISHED'")
    shown = [
        r for r in finished if r.data.tags["method"] != "sac_topk_ideal" and r.data.params.get("latent_dim") != "16"
    ]
    assert sorted(row["run_id"] for row in rows) == sorted(r.info.run_id for r in shown)  # not the sweep run
    (row,) = [row for row in rows if row["run_id"] == gems.info.run_id]
    assert (row["seed"], float(row["test_return"]), float(row["best_val_return"])) == ("3", GEMS[3], GEMS[3])
    assert (row["test_return_stderr"], row["train_seconds"], row["git_commit"]) == ("1.25", "75.5", "abc")


def test_filter_matching_nothing_says_what_exists(tracking_store):
    _fill_store()
    cfg = compare.CompareConfig.resolve("all", "all", filter="params.gamma = '0.95'")
    with pytest.raises(SlateRLError, match=r"no finished train_online run matches .*the store has: random/focused_mix"):
        compare.run(cfg)


def test_mixed_presets_are_refused_unless_asked(tracking_store):
    add_train_online_run("random", "focused_mix", 0, 30.0, preset="paper")
    add_train_online_run("random", "focused_mix", 1, 31.0, preset="quick")
    cfg = compare.CompareConfig.resolve("focused_mix", "random", preset="any", out=str(tracking_store / "r"))
    with pytest.raises(SlateRLError, match="mixes presets 'paper', 'quick'"):
        compare.run(cfg)
    cfg.allow_mixed_presets = True
    compare.run(cfg)


def test_cli_bad_input(tracking_store):
    result = CliRunner().invoke(main, ["compare", "--methods", "sac_gem"])
    assert result.exit_code == 1 and "unknown method 'sac_gem'; choose one of: " in result.output
    result = CliRunner().invoke(main, ["compare", "--envs", "focused"])
    assert result.exit_code == 1 and "unknown environment 'focused'" in result.output


def test_variants_of_a_method_are_kept_apart_and_labelled(tracking_store):
    for seed, value in enumerate([100.0, 110.0]):
        add_train_online_run("sac_topk_ideal", "focused_mix", seed, value)  # the preset's configuration
        add_train_online_run("sac_topk_ideal", "focused_mix", seed, value - 50, params={"agent.gamma": "0.9"})
    # an explicit default is the preset's configuration: the newest run of that variant and seed replaces the first
    time.sleep(0.01)  # a later start time
    add_train_online_run(
        "sac_topk_ideal", "focused_mix", 0, 120.0, params={"agent.gamma": "0.80", "episodes": "100000"}
    )
    add_train_online_run("random", "focused_mix", 0, 30.0)
    out = tracking_store / "report"
    compare.run(
        compare.CompareConfig.resolve("focused_mix", "sac_topk_ideal,random", reference="sac_topk_ideal", out=str(out))
    )
    rows = list(csv.DictReader(io.StringIO((out / "results.csv").read_text())))
    by_label = {row["method_name"]: row for row in rows}
    assert set(by_label) == {"SAC+TopK (ideal)", "SAC+TopK (ideal) [gamma=0.9]", "Random"}
    plain, variant = by_label["SAC+TopK (ideal)"], by_label["SAC+TopK (ideal) [gamma=0.9]"]
    assert (plain["n"], float(plain["mean"])) == ("2", 115.0)
    assert (variant["n"], float(variant["mean"])) == ("2", 55.0)
    assert (variant["method"], variant["variant"], variant["agent.gamma"]) == (
        "sac_topk_ideal",
        "agent.gamma=0.9",
        "0.9",
    )
    assert plain["variant"] == plain["agent.gamma"] == by_label["Random"]["agent.gamma"] == ""
    assert variant["welch_p"] != ""  # tested against the plain row, the reference
    markdown = (out / "results.md").read_text()
    assert "| SAC+TopK (ideal) [gamma=0.9] |" in markdown and "A row with [...] is a variant" in markdown
    contrasts = {(r["row"], r["against"]): r for r in csv.DictReader(io.StringIO((out / "contrasts.csv").read_text()))}
    assert set(contrasts) == {
        ("sac_topk_ideal [gamma=0.9]", "sac_topk_ideal"),  # once, although the plain row is also the reference
        ("random", "sac_topk_ideal"),
    }
    assert float(contrasts[("sac_topk_ideal [gamma=0.9]", "sac_topk_ideal")]["difference"]) == -60.0
    assert contrasts[("random", "sac_topk_ideal")]["verdict"] == "undefined"  # one random seed
    assert "## Contrasts" in (out / "report.md").read_text()


def test_settings_shared_by_every_run_leave_a_plain_row_and_go_to_the_legend(tracking_store):
    """A measurement run with a non-preset length: the rows differ in the protocol switch only, so the default
    ordering is the plain row, the switch (not the fields it implies) labels the other, and the shared length is
    stated once in the legend; the switch is contrasted with the plain row."""
    shared = {"episodes": "20000"}
    reference = {**shared, "reference_protocol": "true", "parallel_episodes": "1", "overlap_collection": "false"}
    for seed, value in enumerate([300.0, 310.0, 320.0]):
        add_train_online_run("sac_topk_ideal", "focused_mix", seed, value, params=shared)
        add_train_online_run("sac_topk_ideal", "focused_mix", seed, value - 100, params=reference)
    out = tracking_store / "report"
    compare.run(
        compare.CompareConfig.resolve("focused_mix", "sac_topk_ideal", reference="sac_topk_ideal", out=str(out))
    )
    labels = {row["method_name"] for row in csv.DictReader(io.StringIO((out / "results.csv").read_text()))}
    assert labels == {"SAC+TopK (ideal)", "SAC+TopK (ideal) [reference_protocol=true]"}
    assert (
        "Set in every run of the method, unlike the preset: SAC+TopK (ideal): episodes=20000."
        in (out / "results.md").read_text()
    )
    (contrast,) = csv.DictReader(io.StringIO((out / "contrasts.csv").read_text()))
    assert (contrast["row"], contrast["against"]) == ("sac_topk_ideal [reference_protocol=true]", "sac_topk_ideal")
    assert float(contrast["difference"]) == -100.0 and contrast["verdict"] == "lower"


def test_a_filter_selects_one_variant_shown_as_the_plain_row(tracking_store):
    for seed in range(2):
        add_train_online_run("sac_topk_ideal", "focused_mix", seed, 100.0 + seed)
        add_train_online_run("sac_topk_ideal", "focused_mix", seed, 50.0 + seed, params={"agent.gamma": "0.9"})
    out = tracking_store / "report"
    compare.run(
        compare.CompareConfig.resolve(
            "focused_mix", "sac_topk_ideal", filter="params.`agent.gamma` = '0.9'", out=str(out)
        )
    )
    (row,) = csv.DictReader(io.StringIO((out / "results.csv").read_text()))
    assert (row["method_name"], row["n"], float(row["mean"]), row["variant"]) == ("SAC+TopK (ideal)", "2", 50.5, "")
    assert "unlike the preset: SAC+TopK (ideal): gamma=0.9." in (out / "results.md").read_text()


def test_defaults_in_any_spelling_are_one_configuration(tracking_store):
    add_train_online_run("sac_topk_ideal", "focused_mix", 0, 100.0, params={"item_embeddings": "''"})  # mlflow run
    add_train_online_run(
        "sac_topk_ideal",
        "focused_mix",
        1,
        110.0,
        params={"item_embeddings": "", "gamma": "0.9", "overlap_collection": "True"},
    )
    runs = compare.select_runs(compare.CompareConfig.resolve("focused_mix", "sac_topk_ideal"))
    identities = {r.data.tags["seed"]: compare.identity(r) for r in runs}
    assert identities == {"0": {}, "1": {"gamma": "0.9"}}  # 'gamma' (not agent.gamma) has no known default
