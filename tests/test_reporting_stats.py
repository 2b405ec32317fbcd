"""Statistics of the reporting layer checked against hand-computed values and scipy."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from slate_rl.errors import SlateRLError
from slate_rl.reporting.stats import (
    MOST_SEEDS,
    curve_band,
    difference_test,
    iqm,
    seeds_to_detect,
    summarise,
    welch_test,
)

T_975_4DOF = 2.7764451051977987  # Student-t 0.975 quantile, 4 degrees of freedom (statistical tables: 2.776)


def test_summarise_matches_the_t_interval_by_hand():
    summary = summarise([1.0, 2.0, 3.0, 4.0, 5.0])
    # mean 3, sample variance 10/4 = 2.5, SEM = sqrt(2.5 / 5)
    assert summary.n == 5
    assert summary.mean == pytest.approx(3.0)
    assert summary.std == pytest.approx(math.sqrt(2.5))
    assert summary.half_width == pytest.approx(T_975_4DOF * math.sqrt(2.5 / 5), rel=1e-9)


def test_summarise_other_confidence_uses_the_matching_quantile():
    summary = summarise([1.0, 2.0, 3.0, 4.0, 5.0], confidence=0.9)
    assert summary.half_width == pytest.approx(2.1318467863266 * math.sqrt(0.5), rel=1e-9)  # t(0.95, 4 dof) = 2.132


def test_single_seed_has_no_interval():
    summary = summarise([7.0])
    assert (summary.n, summary.mean, summary.std, summary.half_width) == (1, 7.0, None, None)


def test_summarise_rejects_empty_input_and_bad_confidence():
    with pytest.raises(SlateRLError, match="non-empty"):
        summarise([])
    with pytest.raises(SlateRLError, match="confidence"):
        summarise([1.0, 2.0], confidence=95)


def test_welch_matches_the_formula_and_scipy():
    a, b = [1.0, 2.0, 3.0, 4.0, 5.0], [2.0, 4.0, 6.0, 8.0, 10.0]
    result = welch_test(a, b)
    # variances of the means: 2.5/5 = 0.5 and 10/5 = 2; t = (3 − 6) / sqrt(2.5); dof = 2.5² / (0.5²/4 + 2²/4)
    assert result.statistic == pytest.approx(-3 / math.sqrt(2.5), rel=1e-12)
    assert result.dof == pytest.approx(6.25 / 1.0625, rel=1e-12)
    assert result.p_value == pytest.approx(2 * sps.t.sf(3 / math.sqrt(2.5), 6.25 / 1.0625), rel=1e-12)
    reference = sps.ttest_ind(a, b, equal_var=False)
    assert result.statistic == pytest.approx(reference.statistic, rel=1e-12)
    assert result.p_value == pytest.approx(reference.pvalue, rel=1e-12)


def test_welch_on_unequal_sizes_matches_scipy():
    rng = np.random.default_rng(3)
    a, b = rng.normal(0.0, 1.0, 7), rng.normal(1.0, 3.0, 12)
    result, reference = welch_test(a, b), sps.ttest_ind(a, b, equal_var=False)
    assert result.statistic == pytest.approx(reference.statistic, rel=1e-12)
    assert result.p_value == pytest.approx(reference.pvalue, rel=1e-12)


def test_welch_is_undefined_without_two_values_or_without_variance():
    assert welch_test([1.0], [1.0, 2.0, 3.0]) is None
    assert welch_test([1.0, 1.0], [2.0, 2.0]) is None
    assert welch_test([1.0, 1.0], [2.0, 3.0]) is not None  # one side without variance is fine


def test_iqm_drops_a_quarter_at_each_end():
    assert iqm(np.arange(1.0, 9.0)) == pytest.approx(4.5)  # mean of 3, 4, 5, 6
    assert iqm(np.array([100.0, 1, 2, 3, 4, 5, 6, -50])) == pytest.approx(3.5)  # mean of 2, 3, 4, 5
    assert iqm(np.array([1.0, 2, 3, 4, 100])) == pytest.approx(3.0)  # ⌊5/4⌋ = 1 dropped each end
    assert iqm(np.array([1.0, 2.0, 9.0])) == pytest.approx(4.0)  # nothing dropped below 4 values
    x = np.random.default_rng(0).normal(size=(3, 11))
    np.testing.assert_allclose(iqm(x, axis=1), sps.trim_mean(x, 0.25, axis=1))


def test_curve_band_uses_the_seeds_present_at_each_episode():
    curves = [[(1000, 1.0), (2000, 3.0)], [(2000, 5.0), (1000, 3.0)], [(1000, 5.0)]]
    band = curve_band(curves)
    np.testing.assert_array_equal(band.episodes, [1000, 2000])
    np.testing.assert_array_equal(band.n, [3, 2])
    np.testing.assert_allclose(band.mean, [3.0, 4.0])
    t2, t1 = sps.t.ppf(0.975, 2), sps.t.ppf(0.975, 1)
    np.testing.assert_allclose(band.half_width, [t2 * 2.0 / math.sqrt(3), t1 * math.sqrt(2.0) / math.sqrt(2)])


def test_curve_band_of_one_seed_has_no_band():
    band = curve_band([[(1000, 1.0), (2000, 2.0)]])
    np.testing.assert_allclose(band.mean, [1.0, 2.0])
    assert np.isnan(band.half_width).all()


def test_difference_test_matches_the_welch_interval_and_power_formula():
    a, b = [1.0, 2.0, 3.0, 4.0, 5.0], [2.0, 4.0, 6.0, 8.0, 10.0]
    result = difference_test(a, b)
    se, dof = math.sqrt(2.5), 6.25 / 1.0625  # as in the Welch test above
    assert result.difference == pytest.approx(-3.0) and result.standard_error == pytest.approx(se)
    assert result.welch == welch_test(a, b)
    assert result.half_width == pytest.approx(sps.t.ppf(0.975, dof) * se, rel=1e-10)
    # the noncentral t with that dof whose upper tail beyond t(0.975) holds 80% of its mass
    delta = result.detectable / se
    assert sps.nct.sf(sps.t.ppf(0.975, dof), dof, delta) == pytest.approx(0.8, rel=1e-8)
    other = difference_test(a, b, confidence=0.9, power=0.9)
    assert sps.nct.sf(sps.t.ppf(0.95, dof), dof, other.detectable / se) == pytest.approx(0.9, rel=1e-8)
    # close to the usual approximation (t(1 − alpha/2) + t(power)) × SE at this dof
    assert result.detectable == pytest.approx((sps.t.ppf(0.975, dof) + sps.t.ppf(0.8, dof)) * se, rel=0.03)


def test_a_difference_of_the_detectable_size_is_detected_at_the_stated_power():
    """Normal seeds, 10 per side, sd 1, true difference = the detectable difference computed for samples of exactly
    that spread: Welch's test rejects at 5% in about 80% of 4,000 simulated experiments (SE of the share 0.0063;
    tolerance 4 SE)."""
    rng = np.random.default_rng(11)
    n = 10
    unit = rng.normal(size=n)
    unit = (unit - unit.mean()) / unit.std(ddof=1)  # sample sd exactly 1
    detectable = difference_test(unit, unit).detectable
    a = rng.normal(detectable, 1.0, (4000, n))
    b = rng.normal(0.0, 1.0, (4000, n))
    rejected = np.mean([welch_test(x, y).p_value < 0.05 for x, y in zip(a, b, strict=True)])
    assert rejected == pytest.approx(0.8, abs=4 * math.sqrt(0.8 * 0.2 / 4000))


def _power(var_a: float, var_b: float, n: int, difference: float) -> float:
    """Welch's two-sided test at 5% with n seeds per side: the chance it rejects, from scipy's noncentral t."""
    va, vb = var_a / n, var_b / n
    dof = (va + vb) ** 2 / ((va**2 + vb**2) / (n - 1))
    return float(sps.nct.sf(sps.t.ppf(0.975, dof), dof, abs(difference) / math.sqrt(va + vb)))


def test_seeds_to_detect_is_the_fewest_seeds_per_side_with_the_stated_power():
    # the campaign's REINFORCE+SoftMax (sd 36.0) against SAC+GeMS (sd 44.2), 74.9 apart
    var_a, var_b, difference = 36.0**2, 44.2**2, 74.9
    n = seeds_to_detect(var_a, var_b, difference)
    assert n is not None and n > 3
    assert _power(var_a, var_b, n, difference) >= 0.8 > _power(var_a, var_b, n - 1, difference)
    assert seeds_to_detect(var_a, var_b, -difference) == n  # the sign does not matter
    assert seeds_to_detect(var_a, var_b, 10 * difference) == 2
    assert seeds_to_detect(var_a, var_b, 0.0) is None  # no difference is ever detected
    assert seeds_to_detect(var_a, var_b, 1.0) is None  # it would need more than MOST_SEEDS
    assert _power(var_a, var_b, MOST_SEEDS, 1.0) < 0.8


def test_difference_test_gives_the_seeds_for_its_own_difference():
    a, b = [1.0, 2.0, 3.0, 4.0, 5.0], [2.0, 4.0, 6.0, 8.0, 10.0]
    result = difference_test(a, b)
    assert result.seeds_to_detect == seeds_to_detect(2.5, 10.0, -3.0)
    n = result.seeds_to_detect
    assert _power(2.5, 10.0, n, 3.0) >= 0.8 > _power(2.5, 10.0, n - 1, 3.0)


def test_difference_test_is_undefined_where_welch_is_and_refuses_bad_power():
    assert difference_test([1.0], [1.0, 2.0]) is None
    assert difference_test([1.0, 1.0], [2.0, 2.0]) is None
    with pytest.raises(SlateRLError, match="power"):
        difference_test([1.0, 2.0], [1.0, 3.0], power=80)
