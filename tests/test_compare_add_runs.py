"""`compare --add-runs`: the runs of an earlier report's runs.csv (a store since lost) join a new store's table,
contrasts and runs.csv; refusals of files that cannot be read as such."""

from __future__ import annotations

import csv
import dataclasses
import io
import re
import shutil

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from scipy import stats as sps

from conftest import use_store
from slate_rl.cli import main
from slate_rl.errors import SlateRLError
from slate_rl.reporting.render import variant_label
from slate_rl.reporting.runs_file import parse_variant
from slate_rl.stages import compare
from synthetic_runs import add_train_online_run

BUGS = {"reference_bugs": "true"}
FUSED = {"fused_update": "true"}
HEADER = "env,method,variant,seed,run_id,test_return"


def _csv(path):
    return list(csv.DictReader(io.StringIO(path.read_text())))


def _first_store_report(tmp_path, monkeypatch):
    """A store with SlateQ (both variants) and SAC+GeMS on seed 0, its report's runs.csv kept aside, then a new,
    empty store (the first one lost)."""
    (tmp_path / "first").mkdir()
    use_store(tmp_path / "first", monkeypatch)
    ids = {
        "slateq": add_train_online_run(
            "slateq", "focused_topdown", 0, 276.0, val_curve=[(1000, 200.0), (2000, 283.0)], params=FUSED
        ),
        "slateq_bugs": add_train_online_run("slateq", "focused_topdown", 0, 215.0, params={**FUSED, **BUGS}),
        "sac_gems": add_train_online_run("sac_gems", "focused_topdown", 0, 270.0, params=FUSED),
    }
    report = tmp_path / "first" / "report"
    compare.run(compare.CompareConfig.resolve("focused_topdown", "all", out=str(report)))
    kept = tmp_path / "runs_first.csv"
    shutil.copy(report / "runs.csv", kept)
    (tmp_path / "second").mkdir()
    use_store(tmp_path / "second", monkeypatch)
    return kept, ids


def test_runs_of_a_lost_store_join_the_rows_of_the_same_label(tmp_path, monkeypatch):
    kept, ids = _first_store_report(tmp_path, monkeypatch)
    # the new store holds seeds 1 and 2; its SlateQ runs with the bugs are a setting of none, a variant here
    for seed, (plain, bugs, gems) in enumerate([(280.0, 210.0, 290.0), (270.0, 220.0, 300.0)], start=1):
        add_train_online_run("slateq", "focused_topdown", seed, plain, params=FUSED)
        add_train_online_run("slateq", "focused_topdown", seed, bugs, params={**FUSED, **BUGS})
        add_train_online_run("sac_gems", "focused_topdown", seed, gems, params=FUSED)
    out = tmp_path / "report"
    run_id = compare.run(compare.CompareConfig.resolve("focused_topdown", "all", add_runs=[str(kept)], out=str(out)))
    rows = {r["method_name"]: r for r in _csv(out / "results.csv") if r["n"] not in ("", "0")}
    assert set(rows) == {"SlateQ", "SlateQ [reference_bugs=true]", "SAC+GeMS"}
    assert rows["SlateQ"]["n"] == "3" and float(rows["SlateQ"]["mean"]) == pytest.approx((276 + 280 + 270) / 3)
    assert float(rows["SlateQ [reference_bugs=true]"]["mean"]) == pytest.approx((215 + 210 + 220) / 3)
    welch = sps.ttest_ind([215.0, 210.0, 220.0], [276.0, 280.0, 270.0], equal_var=False)
    (contrast,) = [
        c for c in _csv(out / "contrasts.csv") if (c["row"], c["against"]) == ("slateq [reference_bugs=true]", "slateq")
    ]
    assert float(contrast["p_value"]) == pytest.approx(welch.pvalue)
    runs = {r["run_id"]: r for r in _csv(out / "runs.csv")}
    assert len(runs) == 9 and set(ids.values()) <= set(runs)
    first = runs[ids["slateq"]]  # read back with what the first report knew of it, its curve's summary included
    assert (first["variant"], first["seed"], float(first["best_val_return"]), first["best_val_episode"]) == (
        "default",
        "0",
        283.0,
        "2000",
    )
    assert runs[ids["slateq_bugs"]]["variant"] == "reference_bugs"
    assert {r["settings"] for r in runs.values()} == {"fused_update=true"}
    assert {r["preset"] for r in runs.values()} == {"paper"}
    assert (
        "Set in every run of the method, unlike the preset: SAC+GeMS: fused_update=true"
        in (out / "results.md").read_text()
    )
    logged = MlflowClient().get_run(run_id).data
    assert logged.metrics["added_runs"] == 3 and logged.params["add_runs"] == str(kept)
    assert [f.path for f in MlflowClient().list_artifacts(run_id, "added_runs/0")] == ["added_runs/0/runs_first.csv"]


def test_a_run_in_the_store_and_the_file_counts_once(tracking_store):
    for seed, value in enumerate([100.0, 110.0]):
        add_train_online_run("sac_topk_ideal", "focused_mix", seed, value)
    first = tracking_store / "first"
    compare.run(compare.CompareConfig.resolve("focused_mix", "sac_topk_ideal", out=str(first)))
    again = tracking_store / "again"
    compare.run(
        compare.CompareConfig.resolve(
            "focused_mix", "sac_topk_ideal", add_runs=[str(first / "runs.csv")] * 2, out=str(again)
        )
    )
    assert (again / "results.csv").read_text() == (first / "results.csv").read_text()
    assert len(_csv(again / "runs.csv")) == 2


def test_a_seed_of_another_run_in_the_file_is_refused_as_counted_twice(tmp_path, monkeypatch):
    kept, _ = _first_store_report(tmp_path, monkeypatch)
    add_train_online_run("sac_gems", "focused_topdown", 0, 250.0, params=FUSED)  # seed 0 again, another run
    cfg = compare.CompareConfig.resolve("focused_topdown", "sac_gems", add_runs=[str(kept)], out=str(tmp_path / "r"))
    with pytest.raises(SlateRLError, match="holds two runs of seed 0"):
        compare.run(cfg)
    assert not (tmp_path / "r").exists()


def test_only_the_requested_cells_of_the_file_are_added(tmp_path, monkeypatch):
    kept, ids = _first_store_report(tmp_path, monkeypatch)
    out = tmp_path / "report"
    plain = compare.CompareConfig.resolve("focused_topdown", "slateq", add_runs=[str(kept)], reference_bugs=False)
    compare.run(dataclasses.replace(plain, out=str(out)))
    assert [r["run_id"] for r in _csv(out / "runs.csv")] == [ids["slateq"]]
    with pytest.raises(SlateRLError, match=r"neither the store nor .* holds a finished run of envs=focused_mix"):
        compare.run(compare.CompareConfig.resolve("focused_mix", "all", add_runs=[str(kept)], out=str(out)))
    with pytest.raises(SlateRLError, match="preset=quick"):
        compare.run(compare.CompareConfig.resolve("focused_topdown", "all", add_runs=[str(kept)], preset="quick"))


def test_a_file_written_before_runs_csv_had_a_preset_takes_the_compared_preset(tmp_path, monkeypatch):
    kept, ids = _first_store_report(tmp_path, monkeypatch)
    old = tmp_path / "old.csv"
    rows = _csv(kept)
    columns = [c for c in rows[0] if c not in ("preset", "settings")]
    with old.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "report"
    compare.run(compare.CompareConfig.resolve("focused_topdown", "all", add_runs=[str(old)], out=str(out)))
    assert {r["run_id"]: r["preset"] for r in _csv(out / "runs.csv")} == dict.fromkeys(ids.values(), "paper")
    with pytest.raises(SlateRLError, match=r"has no preset column .* pass --preset"):
        compare.run(compare.CompareConfig.resolve("focused_topdown", "all", add_runs=[str(old)], preset="any"))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read runs file .*: No such file"),
        ("method,seed\nsac_gems,0\n", "lacks the column.* env, variant, run_id, test_return"),
        (f"{HEADER}\nfocused_mix,random,default,0,abc,high\n", "line 2: could not"),
        (f"{HEADER}\nfocused_mix,random,default,0,,30\n", "line 2: the run_id is empty"),
        (f"{HEADER}\nfocused_mix,random,gamma=,0,a,30\n", "line 2: variant 'gamma='"),
    ],
)
def test_a_file_that_is_not_a_runs_csv_is_refused_naming_the_problem(tracking_store, content, message):
    path = tracking_store / "runs.csv"
    if content is not None:
        path.write_text(content)
    result = CliRunner().invoke(
        main, ["compare", "--envs", "focused_mix", "--add-runs", str(path), "--out", str(tracking_store / "out")]
    )
    assert result.exit_code == 1 and re.search(message, result.output), result.output
    assert not (tracking_store / "out").exists()
    (failed,) = MlflowClient().search_runs(["0"], "tags.stage = 'compare'")
    assert failed.info.status == "FAILED"


def test_a_filter_with_added_runs_is_refused(tracking_store):
    with pytest.raises(SlateRLError, match="--filter selects the store's runs by their MLflow params"):
        compare.CompareConfig.resolve("all", "all", filter="params.gamma = '0.9'", add_runs=["runs.csv"])


@pytest.mark.parametrize(
    "variant", [{}, {"reference_bugs": "true"}, {"gamma": "0.9"}, {"reference_bugs": "true", "gamma": "0.9"}]
)
def test_a_variant_label_reads_back_as_its_params(variant):
    assert dict(parse_variant(variant_label(variant))) == variant


def test_a_store_holding_one_variant_alone_keeps_its_runs_in_that_variant_row(tmp_path, monkeypatch):
    """The new store holds only SlateQ runs with the reference bugs: to the store alone that is a setting every run
    shares (a plain row), but the file's rows set it apart, so they join the file's bugs row, not its plain row."""
    kept, _ = _first_store_report(tmp_path, monkeypatch)
    for seed, value in ((1, 210.0), (2, 220.0)):
        add_train_online_run("slateq", "focused_topdown", seed, value, params={**FUSED, **BUGS})
    out = tmp_path / "report"
    compare.run(compare.CompareConfig.resolve("focused_topdown", "slateq", add_runs=[str(kept)], out=str(out)))
    rows = {r["method_name"]: (r["n"], float(r["mean"])) for r in _csv(out / "results.csv")}
    assert rows == {"SlateQ": ("1", 276.0), "SlateQ [reference_bugs=true]": ("3", 215.0)}
    assert "unlike the preset: SlateQ: fused_update=true" in (out / "results.md").read_text()


def test_a_hyper_parameter_of_the_file_keeps_its_full_name_in_the_new_table(tmp_path, monkeypatch):
    """runs.csv labels a variant by the param's last name part (gamma=0.9); in the new table's columns it is the
    store's param (agent.gamma) whichever source's run comes first."""
    (tmp_path / "first").mkdir()
    use_store(tmp_path / "first", monkeypatch)
    add_train_online_run("sac_topk_ideal", "focused_mix", 0, 100.0)
    add_train_online_run("sac_topk_ideal", "focused_mix", 0, 50.0, params={"agent.gamma": "0.9"})
    compare.run(compare.CompareConfig.resolve("focused_mix", "sac_topk_ideal", out=str(tmp_path / "first" / "r")))
    (tmp_path / "second").mkdir()
    use_store(tmp_path / "second", monkeypatch)
    add_train_online_run("sac_topk_ideal", "focused_mix", 1, 110.0)
    add_train_online_run("sac_topk_ideal", "focused_mix", 1, 60.0, params={"agent.gamma": "0.9"})
    out = tmp_path / "report"
    added = [str(tmp_path / "first" / "r" / "runs.csv")]
    compare.run(compare.CompareConfig.resolve("focused_mix", "sac_topk_ideal", add_runs=added, out=str(out)))
    rows = {r["method_name"]: r for r in _csv(out / "results.csv")}
    variant = rows["SAC+TopK (ideal) [gamma=0.9]"]
    assert (variant["n"], float(variant["mean"]), variant["variant"], variant["agent.gamma"]) == (
        "2",
        55.0,
        "agent.gamma=0.9",
        "0.9",
    )
    assert rows["SAC+TopK (ideal)"]["n"] == "2"
