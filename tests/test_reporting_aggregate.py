"""Aggregate scores: per-environment normalisation and the stratified bootstrap."""

import numpy as np
import pytest

from slate_rl.errors import SlateRLError
from slate_rl.reporting import RunResult, aggregate_scores, aggregates_to_markdown, normalised_scores


def runs(method: str, env: str, returns: list[float], preset: str = "paper") -> list[RunResult]:
    return [RunResult(method, env, seed, value, preset) for seed, value in enumerate(returns)]


def references(env: str) -> list[RunResult]:
    """Random averaging 15 and an oracle at 115: normalised score = (x − 15) / 100."""
    return runs("random", env, [10.0, 20.0]) + runs("short_term_oracle", env, [115.0])


def by_key(scores):
    return {(s.method, s.statistic): s for s in scores}


def test_random_oracle_normalisation_by_hand():
    results = references("focused_mix") + runs("sac_gems", "focused_mix", [65.0, 215.0])
    scores = normalised_scores(results)
    np.testing.assert_allclose(scores[("sac_gems", "focused_mix")], [0.5, 2.0])
    np.testing.assert_allclose(scores[("random", "focused_mix")], [-0.05, 0.05])
    np.testing.assert_allclose(scores[("short_term_oracle", "focused_mix")], [1.0])
    np.testing.assert_allclose(normalised_scores(results, "raw")[("sac_gems", "focused_mix")], [65.0, 215.0])


def test_normalisation_needs_both_references_on_each_environment():
    results = references("focused_mix") + runs("sac_gems", "diffuse_mix", [1.0, 2.0])
    with pytest.raises(SlateRLError, match=r"diffuse_mix.*random or short_term_oracle.*normalisation='raw'"):
        normalised_scores(results)
    with pytest.raises(SlateRLError, match="unknown normalisation"):
        normalised_scores(results, "minmax")


def test_mean_weighs_environments_equally_and_iqm_pools_runs():
    results = runs("m", "a", [0.0, 0.0, 0.0, 0.0]) + runs("m", "b", [1.0, 1.0])
    scores = by_key(aggregate_scores(results, normalisation="raw", n_resamples=50))
    assert scores[("m", "mean")].estimate == pytest.approx(0.5)  # (0 + 1) / 2, not 2/6
    assert scores[("m", "iqm")].estimate == pytest.approx(0.25)  # pooled 0 0 0 0 1 1 -> middle 0 0 0 1
    assert scores[("m", "mean")].n_runs == 6 and scores[("m", "mean")].envs == ("a", "b")


def test_bootstrap_interval_of_two_values_by_hand():
    # resampled means of {0, 1} are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4: the 95% interval is [0, 1]
    scores = by_key(aggregate_scores(runs("m", "a", [0.0, 1.0]), normalisation="raw", n_resamples=4000))
    assert (scores[("m", "mean")].low, scores[("m", "mean")].high) == (0.0, 1.0)
    constant = by_key(aggregate_scores(runs("m", "a", [3.0, 3.0, 3.0]), normalisation="raw", n_resamples=100))
    assert (constant[("m", "iqm")].low, constant[("m", "iqm")].high) == (3.0, 3.0)


def synthetic() -> list[RunResult]:
    rng = np.random.default_rng(7)
    results = []
    for env in ("focused_topdown", "diffuse_divpen", "focused_mix"):
        results += references(env)
        results += runs("sac_gems", env, list(rng.normal(60.0, 10.0, 10)))
        results += runs("slateq", env, list(rng.normal(40.0, 5.0, 8)))
    return results


def test_bootstrap_is_reproducible_and_contains_the_estimate():
    first = aggregate_scores(synthetic(), n_resamples=500, seed=3)
    assert first == aggregate_scores(synthetic(), n_resamples=500, seed=3)
    assert first != aggregate_scores(synthetic(), n_resamples=500, seed=4)
    for score in first:
        assert score.low <= score.estimate <= score.high
        assert score.confidence == 0.95 and score.normalisation == "random_oracle"
    gems = by_key(first)[("sac_gems", "mean")]
    assert gems.low < gems.high


def test_a_method_interval_does_not_depend_on_the_other_methods():
    full = by_key(aggregate_scores(synthetic(), n_resamples=300))
    alone = by_key(aggregate_scores(synthetic(), methods=["sac_gems"], n_resamples=300))
    assert alone[("sac_gems", "iqm")] == full[("sac_gems", "iqm")]


def test_every_method_must_cover_the_aggregated_environments():
    results = synthetic() + runs("sac_wknn", "focused_mix", [20.0, 30.0])
    with pytest.raises(SlateRLError, match="SAC\\+WkNN has no runs on focused_topdown, diffuse_divpen"):
        aggregate_scores(results, n_resamples=10)
    results += runs("sac_wknn", "no_reference_env", [1.0, 2.0])  # ignored: not among the aggregated envs
    scores = aggregate_scores(results, envs=["focused_mix"], n_resamples=10)
    assert {s.method for s in scores} == {"random", "short_term_oracle", "sac_gems", "slateq", "sac_wknn"}


def test_bad_settings_are_refused():
    with pytest.raises(SlateRLError, match="n_resamples"):
        aggregate_scores(synthetic(), n_resamples=0)
    with pytest.raises(SlateRLError, match="confidence"):
        aggregate_scores(synthetic(), confidence=1.5)
    with pytest.raises(SlateRLError, match="no results"):
        aggregate_scores([])


def test_aggregates_markdown_has_a_row_per_method():
    text = aggregates_to_markdown(aggregate_scores(synthetic(), n_resamples=50))
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| Method | IQM [CI] | Mean [CI] |")
    assert [row.split(" | ")[0] for row in rows[1:]] == ["| Short-term oracle", "| SlateQ", "| Random", "| SAC+GeMS"]
    assert "Short-term oracle − Random" in text
