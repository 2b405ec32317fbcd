"""Contrasts of the results table: which pairs are compared, the difference test behind each, verdicts, renderings."""

import csv
import io

import pytest
from scipy import stats as sps

from slate_rl.reporting import RunResult, build_contrasts, build_table, contrasts_to_csv, contrasts_to_markdown

PLAIN = [436.0, 450.0, 425.0]
PROTOCOL = [380.0, 395.0, 410.0]
GEMS = [300.0, 310.0, 305.0]
VARIANT = (("reference_protocol", "true"),)


def _results() -> list[RunResult]:
    results = [RunResult("sac_topk_ideal", "focused_topdown", s, v, "paper") for s, v in enumerate(PLAIN)]
    results += [
        RunResult("sac_topk_ideal", "focused_topdown", s, v, "paper", variant=VARIANT) for s, v in enumerate(PROTOCOL)
    ]
    results += [RunResult("sac_gems", "focused_topdown", s, v, "paper") for s, v in enumerate(GEMS)]
    results.append(RunResult("short_term_oracle", "focused_topdown", 0, 104.0, "paper"))
    return results


def test_each_variant_meets_its_plain_row_and_each_row_the_reference():
    contrasts = build_contrasts(build_table(_results(), reference="sac_gems"))
    pairs = [(c.row, c.against) for c in contrasts]
    variant = "sac_topk_ideal [reference_protocol=true]"
    assert pairs == [
        (variant, "sac_topk_ideal"),
        ("short_term_oracle", "sac_gems"),
        ("sac_topk_ideal", "sac_gems"),
        (variant, "sac_gems"),
    ]
    protocol = contrasts[0]
    welch = sps.ttest_ind(PROTOCOL, PLAIN, equal_var=False)
    assert protocol.test.difference == pytest.approx(sum(PROTOCOL) / 3 - sum(PLAIN) / 3)
    assert protocol.test.welch.p_value == pytest.approx(welch.pvalue, rel=1e-10)
    assert (protocol.n, protocol.n_against) == (3, 3)
    assert protocol.verdict == ("lower" if welch.pvalue < 0.05 else "not resolved")
    oracle = contrasts[1]
    assert oracle.test is None and oracle.verdict == "undefined"  # one seed: no test, never a verdict


def test_a_variant_of_the_reference_is_contrasted_with_it_once():
    contrasts = build_contrasts(build_table(_results(), reference="sac_topk_ideal"))
    pairs = [(c.row, c.against) for c in contrasts]
    assert pairs.count(("sac_topk_ideal [reference_protocol=true]", "sac_topk_ideal")) == 1


def test_verdicts_follow_the_test():
    close = [RunResult("random", "focused_mix", s, v, "paper") for s, v in enumerate([30.0, 40.0, 35.0])]
    far = [RunResult("sac_gems", "focused_mix", s, v, "paper") for s, v in enumerate([300.0, 301.0, 302.0])]
    near = [
        RunResult("random", "focused_mix", s, v, "paper", variant=VARIANT) for s, v in enumerate([31.0, 42.0, 33.0])
    ]
    by_pair = {(c.row, c.against): c for c in build_contrasts(build_table(close + far + near, reference="sac_gems"))}
    assert by_pair[("random", "sac_gems")].verdict == "lower"
    undecided = by_pair[("random [reference_protocol=true]", "random")]
    assert undecided.verdict == "not resolved"
    assert undecided.test.detectable > abs(undecided.test.difference)


def test_renderings_carry_every_contrast():
    contrasts = build_contrasts(build_table(_results(), reference="sac_gems"))
    markdown = contrasts_to_markdown(contrasts)
    assert markdown.count("\n") == 2 + len(contrasts)
    assert "| TopDown-focused | SAC+TopK (ideal) [reference_protocol=true] | SAC+TopK (ideal) | 3 vs 3 |" in markdown
    assert "undefined (a side has < 2 seeds or no spread)" in markdown
    rows = list(csv.DictReader(io.StringIO(contrasts_to_csv(contrasts))))
    assert len(rows) == len(contrasts)
    first = rows[0]
    assert float(first["difference"]) == pytest.approx(contrasts[0].test.difference, rel=1e-12)
    assert float(first["detectable_difference"]) == pytest.approx(contrasts[0].test.detectable, rel=1e-12)
    assert rows[1]["p_value"] == "" and rows[1]["verdict"] == "undefined" and rows[1]["seeds_to_detect"] == ""
    seeds = contrasts[0].test.seeds_to_detect
    assert int(first["seeds_to_detect"]) == seeds
    assert markdown.splitlines()[2].endswith(f"| {contrasts[0].verdict} | {seeds} |")
