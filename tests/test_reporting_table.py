"""The paper-style results table: records, order, marks, missing cells, preset checks and the three renderings."""

import csv
import io

import numpy as np
import pytest

from slate_rl.config import paper_env_names
from slate_rl.errors import SlateRLError
from slate_rl.methods import ONLINE_FAMILIES, method_ids
from slate_rl.reporting import (
    ENV_NAMES,
    RunResult,
    build_table,
    method_name,
    to_csv,
    to_latex,
    to_markdown,
    to_per_seed_csv,
    to_runs_csv,
)

PAPER_ROWS = [
    "Short-term oracle",
    "SAC+TopK (ideal)",
    "SlateQ",
    "Random",
    "REINFORCE+SoftMax",
    "SAC+WkNN",
    "SAC+TopK (MF)",
    "SAC+GeMS",
]


def runs(method: str, env: str, returns: list[float], preset: str = "paper", **params) -> list[RunResult]:
    return [RunResult(method, env, seed, value, preset, params=params) for seed, value in enumerate(returns)]


def small_results() -> list[RunResult]:
    """Two environments, given out of order: GeMS best on focused_mix, TopK-ideal best on diffuse_mix."""
    return (
        runs("sac_gems", "focused_mix", [300.0, 310.0, 305.0])
        + runs("sac_gems", "diffuse_mix", [200.0, 210.0, 205.0])
        + runs("sac_wknn", "focused_mix", [100.0, 104.0, 98.0])  # far below GeMS: significant
        + runs("sac_wknn", "diffuse_mix", [190.0, 230.0, 200.0])  # close to GeMS: not significant
        + runs("sac_topk_ideal", "diffuse_mix", [400.0, 410.0])  # not run on focused_mix
        + runs("short_term_oracle", "focused_mix", [250.0])  # one seed
    )


def test_paper_ids_display_names_and_order():
    assert [method_name(m) for m in method_ids(ONLINE_FAMILIES)] == PAPER_ROWS
    assert tuple(ENV_NAMES) == paper_env_names()  # same ids and order as the paper environments in envs.yaml
    assert list(ENV_NAMES.values())[:3] == ["TopDown-focused", "Mixed-focused", "DivPen-focused"]


def test_rows_and_columns_follow_the_paper_order():
    table = build_table(small_results())
    assert table.methods == ("short_term_oracle", "sac_topk_ideal", "sac_wknn", "sac_gems")
    assert table.envs == ("focused_mix", "diffuse_mix")
    table = build_table(small_results() + runs("my_method", "zz_env", [1.0, 2.0]))
    assert table.methods[-1] == "my_method" and table.envs[-1] == "zz_env"


def test_cells_hold_the_statistics_marks_and_best():
    table = build_table(small_results())
    gems = table.cell("sac_gems", "focused_mix")
    assert gems.summary.n == 3 and gems.summary.mean == pytest.approx(305.0)
    assert gems.welch is None and not gems.significant  # the reference is not tested against itself
    assert gems.best
    assert table.cell("sac_wknn", "focused_mix").significant
    close = table.cell("sac_wknn", "diffuse_mix")
    assert close.welch is not None and close.welch.p_value > 0.05 and not close.significant
    assert table.cell("sac_topk_ideal", "diffuse_mix").best and not table.cell("sac_gems", "diffuse_mix").best
    oracle = table.cell("short_term_oracle", "focused_mix")
    assert oracle.summary.half_width is None and oracle.welch is None and not oracle.significant
    assert table.cell("sac_topk_ideal", "focused_mix").summary is None


def test_bold_among_restricts_the_best_mark():
    table = build_table(small_results(), bold_among=["sac_gems", "sac_wknn"])
    assert table.cell("sac_wknn", "diffuse_mix").best  # mean 206.7 against GeMS's 205
    assert not table.cell("sac_topk_ideal", "diffuse_mix").best
    assert not table.cell("sac_gems", "diffuse_mix").best


def test_ties_are_all_bold_and_no_reference_means_no_marks():
    results = runs("sac_gems", "focused_mix", [1.0, 3.0]) + runs("slateq", "focused_mix", [2.0, 2.0])
    table = build_table(results, reference=None)
    assert table.cell("sac_gems", "focused_mix").best and table.cell("slateq", "focused_mix").best
    assert not any(cell.welch for cell in table.cells.values())
    assert "Welch" not in to_markdown(table)


def test_markdown_rendering():
    text = to_markdown(build_table(small_results()))
    lines = text.splitlines()
    table_lines = [line for line in lines if line.startswith("|")]
    assert len(table_lines) == 2 + 4  # header, separator, one row per method
    assert table_lines[0] == "| Method | Mixed-focused | Mixed-diffuse |"
    rows = {line.split(" | ")[0][2:]: line.split(" | ")[1:] for line in table_lines[2:]}
    assert rows["SAC+GeMS"][0] == "**305.0 ± 12.4** (n=3)"  # t(0.975, 2) · 5 / √3 = 12.42
    assert rows["SAC+WkNN"][0].startswith("100.7 ± ") and rows["SAC+WkNN"][0].endswith("† (n=3)")
    assert "†" not in rows["SAC+WkNN"][1]
    assert rows["SAC+TopK (ideal)"][0] == "—"
    assert rows["Short-term oracle"][0] == "250.0 (n=1, no CI)"
    assert "against SAC+GeMS" in text and text.endswith("Preset: paper.\n")


def test_csv_rendering_parses_with_one_row_per_cell():
    table = build_table(small_results())
    rows = list(csv.DictReader(io.StringIO(to_csv(table))))
    assert len(rows) == 4 * 2
    assert [(r["method"], r["env"]) for r in rows[:2]] == [
        ("short_term_oracle", "focused_mix"),
        ("short_term_oracle", "diffuse_mix"),
    ]
    by_cell = {(r["method"], r["env"]): r for r in rows}
    gems = by_cell[("sac_gems", "focused_mix")]
    assert float(gems["mean"]) == pytest.approx(305.0) and gems["n"] == "3" and gems["best"] == "1"
    assert float(gems["ci_half_width"]) == pytest.approx(table.cell("sac_gems", "focused_mix").summary.half_width)
    assert by_cell[("sac_wknn", "focused_mix")]["significant"] == "1"
    assert float(by_cell[("sac_wknn", "focused_mix")]["welch_p"]) < 0.05
    missing = by_cell[("sac_topk_ideal", "focused_mix")]
    assert missing["n"] == missing["mean"] == missing["welch_p"] == ""
    oracle = by_cell[("short_term_oracle", "focused_mix")]
    assert oracle["n"] == "1" and oracle["ci_half_width"] == "" and oracle["std"] == ""


def test_per_seed_csv_lists_each_method_and_variant_with_its_seed_values():
    results = small_results() + [
        RunResult("sac_gems", "focused_mix", seed, value, "paper", variant=(("agent.reference_bugs", "True"),))
        for seed, value in enumerate([280.0, 290.0])
    ]
    table = build_table(results)
    rows = list(csv.DictReader(io.StringIO(to_per_seed_csv(table, "focused_mix"))))
    assert list(rows[0]) == ["method", "variant", "n", "mean", "ci_half_width", "values"]
    by_row = {(r["method"], r["variant"]): r for r in rows}
    assert set(by_row) == {  # sac_topk_ideal has no run on focused_mix: no row
        ("short_term_oracle", "default"),
        ("sac_wknn", "default"),
        ("sac_gems", "default"),
        ("sac_gems", "reference_bugs"),
    }
    gems = by_row[("sac_gems", "default")]
    assert [float(v) for v in gems["values"].split(";")] == [300.0, 310.0, 305.0]
    assert gems["n"] == "3" and float(gems["mean"]) == pytest.approx(305.0)
    half_width = 4.303 * np.std([300.0, 310.0, 305.0], ddof=1) / np.sqrt(3)  # t(0.975, 2 dof) = 4.303
    assert float(gems["ci_half_width"]) == pytest.approx(half_width, rel=1e-3)
    bugs = by_row[("sac_gems", "reference_bugs")]
    assert bugs["values"] == "280.0;290.0" and float(bugs["mean"]) == pytest.approx(285.0)
    assert by_row[("short_term_oracle", "default")]["ci_half_width"] == ""


def test_latex_rendering_uses_booktabs():
    text = to_latex(build_table(small_results()), label="tab:results")
    lines = text.splitlines()
    for rule in ("\\toprule", "\\bottomrule"):
        assert lines.count(rule) == 1
    assert lines.count("\\midrule") == 2  # under the header, and between privileged and other methods
    assert "\\begin{tabular}{lcc}" in lines and "\\label{tab:results}" in lines
    body = [line for line in lines if line.endswith("\\\\")]
    assert len(body) == 1 + 4 and all(line.count("&") == 2 for line in body)
    assert "\\textbf{305.0 $\\pm$ 12.4}" in text and "$^{\\dagger}$" in text and "---" in text
    assert "95\\%" in text  # the legend's percent sign is escaped


def test_latex_escapes_unknown_ids():
    text = to_latex(build_table(runs("my_method", "odd&env", [1.0, 2.0])))
    assert "my\\_method" in text and "odd\\&env" in text


def test_mixed_presets_are_refused_unless_allowed():
    results = [
        *runs("sac_gems", "focused_mix", [1.0, 2.0], preset="quick"),
        RunResult("sac_gems", "focused_mix", 5, 3.0, "paper"),
    ]
    with pytest.raises(SlateRLError, match="cell sac_gems/focused_mix mixes presets 'paper', 'quick'"):
        build_table(results)
    table = build_table(results, allow_mixed_presets=True)
    assert table.cell("sac_gems", "focused_mix").summary.n == 3
    assert "(n=3, paper+quick)" in to_markdown(table) and "Presets: paper, quick." in to_markdown(table)


def test_two_runs_of_one_seed_are_refused():
    results = runs("sac_gems", "focused_mix", [1.0, 2.0], beta=1.0) + runs("sac_gems", "focused_mix", [3.0], beta=0.5)
    with pytest.raises(SlateRLError, match=r"two runs of seed 0 .*differ in params beta"):
        build_table(results)


def test_bad_records_and_settings_are_refused():
    with pytest.raises(SlateRLError, match="test_return is nan"):
        RunResult("sac_gems", "focused_mix", 0, float("nan"), "paper")
    with pytest.raises(SlateRLError, match="seed"):
        RunResult("sac_gems", "focused_mix", "0", 1.0, "paper")
    with pytest.raises(SlateRLError, match="preset"):
        RunResult("sac_gems", "focused_mix", 0, 1.0, "")
    with pytest.raises(SlateRLError, match="val_curve"):
        RunResult("sac_gems", "focused_mix", 0, 1.0, "paper", val_curve=[(1000, 1.0), (1000, 2.0)])
    with pytest.raises(SlateRLError, match="alpha"):
        build_table(small_results(), alpha=5)
    with pytest.raises(SlateRLError, match="no results"):
        build_table([])


def test_full_paper_table_has_eight_rows_and_six_columns():
    rng = np.random.default_rng(0)
    results = [
        RunResult(method, env, seed, float(rng.normal(100, 5)), "paper")
        for method in method_ids(ONLINE_FAMILIES)
        for env in ENV_NAMES
        for seed in range(1 if method == "short_term_oracle" else 10)
    ]
    text = to_markdown(build_table(results))
    table_lines = [line for line in text.splitlines() if line.startswith("|")]
    assert [line.split(" | ")[0][2:] for line in table_lines[2:]] == PAPER_ROWS
    assert table_lines[0].count(" | ") == 6


def test_runs_csv_says_which_run_gave_each_number():
    curve = [(50 * k, float(k)) for k in range(1, 21)]  # 1, ..., 20 at episodes 50, ..., 1000
    curve[5] = (300, 99.0)  # the best validation, early
    source = {"run_id": "b", "test_stderr": 1.5, "train_seconds": 60.0, "commit": "abc"}
    results = [
        RunResult("sac_gems", "focused_mix", 7, 250.0, "paper", val_curve=curve, **source),
        RunResult(
            "sac_gems", "focused_mix", 3, 240.0, "paper", variant=(("agent.reference_bugs", "True"),), run_id="c"
        ),
        RunResult("random", "focused_mix", 3, 30.0, "paper", run_id="a"),
    ]
    rows = list(csv.DictReader(io.StringIO(to_runs_csv(results))))
    assert [(row["method"], row["variant"], row["seed"], row["run_id"]) for row in rows] == [
        ("random", "default", "3", "a"),
        ("sac_gems", "default", "7", "b"),
        ("sac_gems", "reference_bugs", "3", "c"),
    ]
    gems = rows[1]
    assert (float(gems["test_return"]), float(gems["best_val_return"]), gems["best_val_episode"]) == (250, 99, "300")
    assert float(gems["val_return_last_tenth"]) == (19 + 20) / 2  # the validations after episode 900
    assert (gems["test_return_stderr"], gems["train_seconds"], gems["git_commit"]) == ("1.5", "60.0", "abc")
    unknown = ("best_val_return", "best_val_episode", "val_return_last_tenth", "test_return_stderr", "train_seconds")
    assert all(rows[0][name] == "" for name in unknown)
