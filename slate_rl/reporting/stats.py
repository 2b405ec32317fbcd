"""Statistics of the paper's aggregation: mean ± Student-t half-width, Welch's t-test, IQM, mean learning curves."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Student-t CDF and quantile, noncentral-t noncentrality (scipy.stats takes a second to import)
from scipy.special import nctdtrinc, stdtr, stdtrit

from slate_rl.errors import SlateRLError


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise SlateRLError(f"confidence must lie strictly between 0 and 1 (e.g. 0.95), got {confidence}")


def t_half_width(std: np.ndarray | float, n: np.ndarray | int, confidence: float = 0.95) -> np.ndarray:
    """Half-width of the Student-t interval: t quantile with n−1 dof × std/√n (NaN where n < 2)."""
    _check_confidence(confidence)
    n = np.asarray(n, dtype=float)
    dof = np.where(n >= 2, n - 1, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        return stdtrit(dof, 0.5 + confidence / 2) * np.asarray(std, dtype=float) / np.sqrt(n)


@dataclass(frozen=True)
class Summary:
    """Mean of n per-seed values; `std` (ddof 1) and the t-interval `half_width` are None when n < 2."""

    n: int
    mean: float
    std: float | None
    half_width: float | None


def summarise(values: Sequence[float] | np.ndarray, confidence: float = 0.95) -> Summary:
    """Mean and `confidence` Student-t half-width of per-seed values (undefined, None, for a single value)."""
    x = np.asarray(values, dtype=float)
    if x.ndim != 1 or x.size == 0:
        raise SlateRLError("summarise needs a non-empty 1-d sequence of per-seed values")
    if x.size == 1:
        _check_confidence(confidence)
        return Summary(n=1, mean=float(x[0]), std=None, half_width=None)
    std = float(x.std(ddof=1))
    return Summary(n=x.size, mean=float(x.mean()), std=std, half_width=float(t_half_width(std, x.size, confidence)))


@dataclass(frozen=True)
class WelchTest:
    """Welch's unequal-variance t-test of mean(a) − mean(b): statistic, Welch–Satterthwaite dof, two-sided p."""

    statistic: float
    dof: float
    p_value: float


def _welch_error(var_a: float, n_a: int, var_b: float, n_b: int) -> tuple[float, float]:
    """Standard error of mean(a) − mean(b) and the Welch–Satterthwaite dof, from the sample variances and sizes."""
    va, vb = var_a / n_a, var_b / n_b
    return math.sqrt(va + vb), (va + vb) ** 2 / (va**2 / (n_a - 1) + vb**2 / (n_b - 1))


def _welch_parts(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> tuple[float, float, float] | None:
    """mean(a) − mean(b), its standard error and the Welch–Satterthwaite dof; None where Welch's test is undefined."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.size < 2 or y.size < 2:
        return None
    var_x, var_y = float(x.var(ddof=1)), float(y.var(ddof=1))
    if var_x + var_y == 0.0:
        return None
    standard_error, dof = _welch_error(var_x, x.size, var_y, y.size)
    return float(x.mean() - y.mean()), standard_error, float(dof)


def _detectable(standard_error: float, dof: float, confidence: float, power: float) -> float:
    """The true difference the two-sided test at level 1 − confidence detects with probability `power`."""
    critical = float(stdtrit(dof, 0.5 + confidence / 2))
    return float(nctdtrinc(dof, 1.0 - power, critical)) * standard_error


def welch_test(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> WelchTest | None:
    """Welch's two-sample t-test; None when it is undefined (a side with < 2 values, or both without variance)."""
    parts = _welch_parts(a, b)
    if parts is None:
        return None
    difference, standard_error, dof = parts
    statistic = difference / standard_error
    return WelchTest(statistic=statistic, dof=dof, p_value=float(2 * stdtr(dof, -abs(statistic))))


@dataclass(frozen=True)
class Difference:
    """mean(a) − mean(b) with Welch's test: the `confidence` interval's half-width on Welch's dof, and the smallest
    difference the seeds could detect, `detectable`: the true difference at which the two-sided test at level
    alpha = 1 − confidence rejects with probability `power`, i.e. the noncentrality δ of a noncentral t on Welch's dof
    with P(T > t(1 − alpha/2)) = power, times the standard error (the spreads taken as measured).
    `seeds_to_detect`: the fewest seeds per side (both sides alike) at which a true difference as large as the one
    measured would be detected with `power`, the spreads taken as measured; None beyond MOST_SEEDS or for a
    difference of zero. A planning figure for more seeds, not a test."""

    difference: float
    standard_error: float
    welch: WelchTest
    half_width: float
    detectable: float
    seeds_to_detect: int | None


MOST_SEEDS = 100  # seeds_to_detect looks no further


def seeds_to_detect(
    var_a: float, var_b: float, difference: float, confidence: float = 0.95, power: float = 0.8
) -> int | None:
    """The fewest seeds n per side at which `difference` is detectable, given per-seed variances var_a and var_b."""
    for n in range(2, MOST_SEEDS + 1):
        standard_error, dof = _welch_error(var_a, n, var_b, n)
        if _detectable(standard_error, dof, confidence, power) <= abs(difference):
            return n
    return None


def difference_test(
    a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, confidence: float = 0.95, power: float = 0.8
) -> Difference | None:
    """mean(a) − mean(b), its interval, the smallest detectable difference and the seeds per side that would detect
    the difference measured; None where Welch's test is undefined."""
    _check_confidence(confidence)
    if not 0.0 < power < 1.0:
        raise SlateRLError(f"power must lie strictly between 0 and 1 (e.g. 0.8), got {power}")
    parts, welch = _welch_parts(a, b), welch_test(a, b)
    if parts is None or welch is None:
        return None
    difference, standard_error, dof = parts
    variances = float(np.var(a, ddof=1)), float(np.var(b, ddof=1))
    return Difference(
        difference=difference,
        standard_error=standard_error,
        welch=welch,
        half_width=float(stdtrit(dof, 0.5 + confidence / 2)) * standard_error,
        detectable=_detectable(standard_error, dof, confidence, power),
        seeds_to_detect=seeds_to_detect(*variances, difference, confidence, power),
    )


def iqm(values: np.ndarray, axis: int = -1) -> np.ndarray:
    """Interquartile mean along `axis`: sort, drop ⌊n/4⌋ values at each end, average the rest."""
    x = np.sort(np.asarray(values, dtype=float), axis=axis)
    n = x.shape[axis]
    if n == 0:
        raise SlateRLError("the interquartile mean needs at least one value")
    cut = n // 4
    return np.take(x, np.arange(cut, n - cut), axis=axis).mean(axis=axis)


@dataclass(frozen=True)
class CurveBand:
    """Mean learning curve over seeds: per episode the mean, the t half-width (NaN where n < 2) and n."""

    episodes: np.ndarray
    mean: np.ndarray
    half_width: np.ndarray
    n: np.ndarray


def curve_band(curves: Sequence[Sequence[tuple[int, float]]], confidence: float = 0.95) -> CurveBand:
    """Mean and t-band over seeds at each episode, using the seeds that logged that episode."""
    if not curves:
        raise SlateRLError("curve_band needs at least one validation curve")
    episodes = np.unique(np.concatenate([np.asarray([e for e, _ in c], dtype=np.int64) for c in curves]))
    grid = np.full((len(curves), episodes.size), np.nan)
    for row, curve in zip(grid, curves, strict=True):
        row[np.searchsorted(episodes, [e for e, _ in curve])] = [v for _, v in curve]
    n = np.sum(~np.isnan(grid), axis=0)
    mean = np.nansum(grid, axis=0) / n
    squares = np.nansum((grid - mean) ** 2, axis=0)
    std = np.sqrt(squares / np.maximum(n - 1, 1))  # the half-width is NaN where n < 2 whatever this is
    return CurveBand(episodes=episodes, mean=mean, half_width=t_half_width(std, n, confidence), n=n)
