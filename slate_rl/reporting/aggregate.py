"""Aggregate scores across environments (IQM and mean) with stratified-bootstrap confidence intervals.

Normalisation (`normalisation="random_oracle"`, the default): in each environment a run's test return x becomes
(x − R) / (O − R), where R and O are the mean test returns of `random` and `short_term_oracle` on that environment
(so Random scores about 0 and the short-term oracle 1; methods that plan ahead can exceed 1). Both must be among the
records for every environment aggregated. `normalisation="raw"` keeps returns as they are (clicks per episode).

Aggregates over one method's normalised scores: `mean` = mean over environments of the per-environment mean (each
environment weighs the same); `iqm` = interquartile mean of all its (environment, seed) scores pooled, as in Agarwal
et al. (2021). Bootstrap: each resample draws, within every (method, environment) stratum, as many seeds as it has,
with replacement; the interval is the percentile interval of the resampled aggregates. The normalising means R and O
are held fixed. Each method draws from its own generator, seeded by (`seed`, method id), so its interval does not
depend on which other methods are reported.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from slate_rl.errors import SlateRLError
from slate_rl.reporting.names import ENV_NAMES, ORACLE, RANDOM, method_name, paper_order, row_order
from slate_rl.reporting.records import RunResult, group_cells
from slate_rl.reporting.stats import iqm

Normalisation = Literal["random_oracle", "raw"]
STATISTICS = {"iqm": "IQM", "mean": "Mean"}  # id: display name


@dataclass(frozen=True)
class AggregateScore:
    """One method's aggregate score over `envs` with its `confidence` bootstrap interval [low, high]."""

    method: str
    statistic: str
    estimate: float
    low: float
    high: float
    confidence: float
    normalisation: Normalisation
    envs: tuple[str, ...]
    n_runs: int


def normalised_scores(
    results: Iterable[RunResult], normalisation: Normalisation = "random_oracle", *, allow_mixed_presets: bool = False
) -> dict[tuple[str, str], np.ndarray]:
    """Per (method, env) cell, its runs' test returns normalised as described in the module docstring."""
    cells = {
        cell: np.array([run.test_return for run in runs])
        for cell, runs in group_cells(results, allow_mixed_presets=allow_mixed_presets).items()
    }
    if normalisation == "raw":
        return cells
    if normalisation != "random_oracle":
        raise SlateRLError(f"unknown normalisation {normalisation!r}; choose 'random_oracle' or 'raw'")
    scores = {}
    for (method, env), returns in cells.items():
        missing = [ref for ref in (RANDOM, ORACLE) if (ref, env) not in cells]
        if missing:
            raise SlateRLError(
                f"cannot normalise returns on {env}: no {' or '.join(missing)} runs there; "
                "include them in the results or use normalisation='raw'"
            )
        low, high = cells[(RANDOM, env)].mean(), cells[(ORACLE, env)].mean()
        if high <= low:
            raise SlateRLError(
                f"cannot normalise returns on {env}: the short-term oracle ({high:.3g}) does not beat random "
                f"({low:.3g}); check those runs or use normalisation='raw'"
            )
        scores[(method, env)] = (returns - low) / (high - low)
    return scores


def _aggregates(strata: Sequence[np.ndarray]) -> np.ndarray:
    """(iqm, mean) of resampled strata, each of shape (..., n_seeds of that environment)."""
    pooled = np.concatenate(strata, axis=-1)
    per_env_mean = np.mean([stratum.mean(axis=-1) for stratum in strata], axis=0)
    return np.stack([iqm(pooled), per_env_mean])


def aggregate_scores(
    results: Iterable[RunResult],
    *,
    normalisation: Normalisation = "random_oracle",
    methods: Sequence[str] | None = None,
    envs: Sequence[str] | None = None,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    allow_mixed_presets: bool = False,
) -> list[AggregateScore]:
    """IQM and mean of each method's normalised scores over `envs`, with stratified-bootstrap intervals.

    `methods` / `envs` default to all in the results (paper order); runs on other environments are ignored. Every
    method must have runs on every one of `envs`, so that all aggregates cover the same environments.
    """
    if n_resamples < 1:
        raise SlateRLError(f"n_resamples must be at least 1, got {n_resamples}")
    if not 0.0 < confidence < 1.0:
        raise SlateRLError(f"confidence must lie strictly between 0 and 1 (e.g. 0.95), got {confidence}")
    if envs is not None:
        results = [run for run in results if run.env in envs]
    scores = normalised_scores(results, normalisation, allow_mixed_presets=allow_mixed_presets)
    methods = tuple(methods) if methods is not None else row_order(m for m, _ in scores)
    envs = tuple(envs) if envs is not None else paper_order((e for _, e in scores), tuple(ENV_NAMES))
    if not methods or not envs:
        raise SlateRLError("no results to aggregate; pass at least one finished run")
    out = []
    for method in methods:
        missing = [env for env in envs if (method, env) not in scores]
        if missing:
            raise SlateRLError(
                f"{method_name(method)} has no runs on {', '.join(missing)}; aggregate over the environments every "
                "method was run on (envs=...) or leave the method out (methods=...)"
            )
        strata = [scores[(method, env)] for env in envs]
        rng = np.random.default_rng([seed, zlib.crc32(method.encode())])
        resampled = [s[rng.integers(0, s.size, size=(n_resamples, s.size))] for s in strata]
        estimates, boot = _aggregates(strata), _aggregates(resampled)
        lows, highs = np.quantile(boot, [0.5 - confidence / 2, 0.5 + confidence / 2], axis=-1)
        n_runs = sum(s.size for s in strata)
        for i, statistic in enumerate(STATISTICS):
            out.append(
                AggregateScore(
                    method=method,
                    statistic=statistic,
                    estimate=float(estimates[i]),
                    low=float(lows[i]),
                    high=float(highs[i]),
                    confidence=confidence,
                    normalisation=normalisation,
                    envs=envs,
                    n_runs=n_runs,
                )
            )
    return out
