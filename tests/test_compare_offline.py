"""compare's offline tables on synthetic train_offline and collect runs: statistics by hand, the behaviour row,
variants, and reports with and without online runs."""

from __future__ import annotations

import csv
import io
import math
import time

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from scipy import stats as sps

from slate_rl.cli import main
from slate_rl.errors import SlateRLError
from slate_rl.stages import compare, compare_offline
from synthetic_runs import add_collect_run, add_train_offline_run, add_train_online_run

BC_BEST = [60.0, 88.0, 89.0, 95.0, 99.0]  # IQM: the middle three, (88 + 89 + 95) / 3; median 89
BC_LAST = [50.0, 70.0, 72.0, 80.0, 81.0]  # IQM (70 + 72 + 80) / 3 = 74; median 72
IQL = {"0.7": [55.0, 60.0, 65.0], "0.90": [40.0, 42.0, 44.0]}  # an expectile sweep: two rows


def _run_id(seed: int) -> str:
    return f"{seed:032x}"  # what an upstream run param looks like: differs per seed, no part of the configuration


def _fill_store() -> dict[str, str]:
    """Datasets (references random 30, expert 130 on focused_mix; 20, 120 on diffuse_mix) and offline runs."""
    datasets = {
        "expert": add_collect_run("focused_mix", "expert", 120.0),  # behaviour: 100 (120 - 30) / 100 = 90
        "medium": add_collect_run("focused_mix", "medium", 80.0),  # 50
        "mix_a": add_collect_run("focused_mix", "mix_a", 60.0),  # 30
        "diffuse": add_collect_run("diffuse_mix", "expert", 100.0),  # 100 (100 - 20) / 100 = 80
    }
    common = {"steps": "1000", "env.name": "focused_mix"}
    add_train_offline_run("bc", datasets["expert"], 0, 10.0, 10.0, params={**common, "gems": _run_id(0)})  # older
    time.sleep(0.01)
    for seed, (best, last) in enumerate(zip(BC_BEST, BC_LAST, strict=True)):
        add_train_offline_run("bc", datasets["expert"], seed, best, last, params={**common, "gems": _run_id(seed)})
    for seed, (best, last) in enumerate([(70.0, 60.0), (74.0, 62.0)]):
        add_train_offline_run(
            "bc",
            datasets["diffuse"],
            seed,
            best,
            last,
            references=(20.0, 120.0),
            params={"steps": "1000", "env.name": "diffuse_mix", "gems": _run_id(seed + 10)},
        )
    for expectile, scores in IQL.items():
        for seed, score in enumerate(scores):
            add_train_offline_run(
                "iql", datasets["medium"], seed, score, score - 5, params={**common, "expectile": expectile}
            )
    add_train_offline_run("td3_bc", datasets["medium"], 0, 52.0, 48.0, params=common)
    add_train_offline_run("cql", datasets["mix_a"], 0, 35.0, 33.0, params={**common, "gems": _run_id(0)})
    add_train_offline_run("cql", datasets["mix_a"], 0, 25.0, 23.0, ranker="topk_ideal", params={**common, "gems": ""})
    add_train_offline_run("iql", datasets["expert"], 0, 99.0, 99.0, status="FAILED")  # never reported
    add_train_offline_run("bc", datasets["expert"], 0, 1.0, 1.0, preset="quick")  # another preset
    return datasets


def _rows(out) -> dict[tuple[str, ...], dict[str, str]]:
    rows = csv.DictReader(io.StringIO((out / "offline_results.csv").read_text()))
    return {(r["checkpoint"], r["algorithm"], r["variant"], r["env"], r["quality"]): r for r in rows}


def _t_half_width(values: list[float]) -> float:
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in values) / (n - 1))
    return sps.t.ppf(0.975, n - 1) * sd / math.sqrt(n)


def test_offline_tables_match_hand_computed_values(tracking_store):
    _fill_store()
    out = tracking_store / "report"
    compare.run(compare.CompareConfig.resolve("focused_mix,diffuse_mix", "all", offline_only=True, out=str(out)))
    rows = _rows(out)
    for checkpoint, values, iqm, median in (("best", BC_BEST, 272 / 3, 89.0), ("last", BC_LAST, 74.0, 72.0)):
        bc = rows[(checkpoint, "bc", "", "focused_mix", "expert")]
        assert (bc["n"], bc["presets"]) == ("5", "paper")  # the newest run of seed 0; the quick run left out
        assert float(bc["mean"]) == pytest.approx(sum(values) / 5)
        assert float(bc["ci_half_width"]) == pytest.approx(_t_half_width(values))
        assert (float(bc["iqm"]), float(bc["median"])) == (pytest.approx(iqm), pytest.approx(median))
    for expectile, scores in IQL.items():
        iql = rows[("best", "iql", f"expectile={expectile}", "focused_mix", "medium")]
        assert (iql["n"], float(iql["mean"]), iql["expectile"]) == ("3", sum(scores) / 3, expectile)
    assert all(row["n"] == "" for key, row in rows.items() if key[1] == "iql" and key[4] == "expert")  # FAILED run
    for ranker, score in (("gems", 35.0), ("topk_ideal", 25.0)):  # another ranker: another row (its GeMS run aside)
        assert float(rows[("best", "cql", f"ranker={ranker}", "focused_mix", "mix_a")]["mean"]) == score
    td3 = rows[("best", "td3_bc", "", "focused_mix", "medium")]
    assert (td3["n"], float(td3["mean"]), td3["ci_half_width"]) == ("1", 52.0, "")  # one seed: no interval
    assert rows[("best", "td3_bc", "", "diffuse_mix", "expert")]["n"] == ""  # not run there: empty, not zero
    bc_diffuse = rows[("last", "bc", "", "diffuse_mix", "expert")]
    assert float(bc_diffuse["mean"]) == 61.0
    behaviour = {(k[0], k[3], k[4]): float(r["mean"]) for k, r in rows.items() if k[1] == "behaviour" and r["mean"]}
    for checkpoint in ("best", "last"):
        assert {key[1:]: v for key, v in behaviour.items() if key[0] == checkpoint} == pytest.approx(
            {
                ("focused_mix", "expert"): 90.0,
                ("focused_mix", "medium"): 50.0,
                ("focused_mix", "mix_a"): 30.0,
                ("diffuse_mix", "expert"): 80.0,
            }
        )
    columns = [(r["env"], r["quality"]) for r in csv.DictReader(io.StringIO((out / "offline_results.csv").read_text()))]
    assert list(dict.fromkeys(columns)) == [
        ("focused_mix", "expert"),
        ("focused_mix", "medium"),
        ("focused_mix", "mix_a"),
        ("diffuse_mix", "expert"),
    ]
    markdown = (out / "offline_results.md").read_text()
    assert "### Weights of the best validation" in markdown and "### Last weights" in markdown
    assert "| *Behaviour policy* | 90.0 | 50.0 | 30.0 | 80.0 |" in markdown
    assert f"{sum(BC_BEST) / 5:.1f} ± {_t_half_width(BC_BEST):.1f} (IQM 90.7, median 89.0, n=5)" in markdown
    assert "A row with [...] is a variant" in markdown
    assert not (out / "results.md").exists()  # offline only: no online table
    assert "## Offline RL" in (out / "report.md").read_text()


def test_online_and_offline_tables_share_one_report(tracking_store):
    _fill_store()
    for seed in range(2):
        add_train_online_run("sac_topk_ideal", "focused_mix", seed, 100.0 + seed)
    out = tracking_store / "report"
    online = ["--methods", "sac_topk_ideal", "--reference", "sac_topk_ideal"]
    args = ["compare", "--envs", "focused_mix", *online, "--algorithms", "bc,td3_bc", "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    report = (out / "report.md").read_text()
    assert "## Offline RL" in report and "| SAC+TopK (ideal) |" in report
    assert "| *Behaviour policy* |" in result.output and "| SAC+TopK (ideal) |" in result.output
    algorithms = {row["algorithm"] for row in csv.DictReader(io.StringIO((out / "offline_results.csv").read_text()))}
    assert algorithms == {"behaviour", "bc", "td3_bc"}


def test_a_store_with_offline_runs_only_needs_no_flag(tracking_store):
    _fill_store()
    out = tracking_store / "report"
    result = CliRunner().invoke(main, ["compare", "--envs", "focused_mix", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "offline_results.md").exists() and not (out / "results.md").exists()


def test_offline_only_with_no_offline_run_says_what_exists(tracking_store):
    add_train_online_run("random", "focused_mix", 0, 30.0)
    with pytest.raises(SlateRLError, match=r"no finished train_offline run matches .* has no finished train_offline"):
        compare.run(compare.CompareConfig.resolve("focused_mix", "all", offline_only=True))
    _fill_store()
    cfg = compare.CompareConfig.resolve("focused_mix", "all", algorithms="awac", offline_only=True)
    with pytest.raises(SlateRLError, match=r"algorithms=awac .*the store has: bc/diffuse_mix/expert/paper \(2 runs\)"):
        compare.run(cfg)


def test_the_validation_curves_are_drawn_on_the_normalised_scale(tracking_store):
    dataset = add_collect_run("focused_mix", "expert", 120.0)
    curve = ((100, 30.0), (200, 80.0), (300, 130.0))  # references 30 and 130: 0, 50 and 100 normalised
    run_id = add_train_offline_run("bc", dataset, 0, 100.0, 100.0, val_returns=curve)
    (result,) = compare_offline.to_results([MlflowClient().get_run(run_id)], with_curve=True)
    assert result.val_curve == ((100, 0.0), (200, 50.0), (300, 100.0))
    add_train_offline_run("iql", dataset, 0, 90.0, 80.0, val_returns=((100, 55.0), (300, 105.0)))
    out = tracking_store / "report"
    compare.run(compare.CompareConfig.resolve("focused_mix", "all", offline_only=True, out=str(out)))
    assert (out / "offline_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![offline_curves](offline_curves.png)" in (out / "report.md").read_text()
