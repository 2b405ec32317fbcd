"""The input of the analysis layer: one finished run's result, and grouping runs into cells without double counting."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, Protocol, TypeVar

from slate_rl.errors import SlateRLError
from slate_rl.reporting.names import variant_row

K = TypeVar("K", bound=Hashable)


class Seeded(Protocol):
    """A run's result as grouping sees it: its seed, preset and the params that tell sweep runs apart."""

    seed: int
    preset: str
    params: Mapping[str, Any]


R = TypeVar("R", bound=Seeded)


@dataclass
class RunResult:
    """One finished run: its mean test return, optional validation curve and the parameters it ran with.

    `val_curve` holds (training episode, val_return) pairs; methods that do not train (oracle, random) have None.
    `params` carries what distinguishes runs of a sweep; the trade-off figure reads `latent_dim`, `beta` and
    `lambda_click` from it (numbers or numeric strings, as MLflow stores params).
    `variant` names the configuration when runs of the method differ in more than the seed: (param, value) pairs,
    e.g. (("agent.gamma", "0.9"),); each variant is a row of its own (`row`), empty for the method's plain row.
    `settings` are the params every compared run of the method sets apart from the preset, all to the same value
    (e.g. (("episodes", "20000"),)): they apply to all its rows, so no label shows them; the table's legend does.
    `run_id`, `test_stderr` (the standard error of the test return over the test users), `train_seconds` (the time
    training took, without the time the run was stopped) and `commit` say where the number comes from; None or ''
    where unknown. `best_val` (the best validation return and its episode) and `val_last_tenth` (the mean validation
    return after 90% of the last validated episode) follow from `val_curve` when it is given; a run read back from a
    report's runs.csv has them without its curve.
    """

    method: str
    env: str
    seed: int
    test_return: float
    preset: str
    val_curve: list[tuple[int, float]] | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    variant: tuple[tuple[str, str], ...] = ()
    settings: tuple[tuple[str, str], ...] = ()
    run_id: str = ""
    test_stderr: float | None = None
    train_seconds: float | None = None
    commit: str = ""
    best_val: tuple[float, int] | None = None
    val_last_tenth: float | None = None

    @property
    def row(self) -> str:
        """The table row of the run: its method id, with the variant when it has one ('sac_gems [gamma=0.9]')."""
        return variant_row(self.method, self.variant)

    def __post_init__(self) -> None:
        where = f"run {self.method}/{self.env}/seed{self.seed}"
        for name in ("method", "env", "preset"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise SlateRLError(f"{where}: `{name}` must be a non-empty string, got {getattr(self, name)!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise SlateRLError(f"{where}: `seed` must be an int, got {self.seed!r}")
        self.test_return = float(self.test_return)
        if not math.isfinite(self.test_return):
            raise SlateRLError(f"{where}: test_return is {self.test_return}; report only runs that finished their test")
        if self.val_curve is not None:
            curve = sorted((int(episode), float(value)) for episode, value in self.val_curve)
            episodes = [episode for episode, _ in curve]
            if len(set(episodes)) != len(episodes) or not all(math.isfinite(v) for _, v in curve):
                raise SlateRLError(
                    f"{where}: val_curve must hold one finite val_return per training episode; "
                    "pass the logged `val_return` history of a single run"
                )
            self.val_curve = curve
            if curve:
                episode, value = max(curve, key=lambda point: point[1])
                tail = [v for e, v in curve if e > 0.9 * curve[-1][0]]
                self.best_val, self.val_last_tenth = (value, episode), sum(tail) / len(tail)


def group_runs(
    results: Iterable[R],
    key: Callable[[R], K],
    describe: Callable[[K], str],
    *,
    allow_mixed_presets: bool = False,
) -> dict[K, list[R]]:
    """Group runs by `key`, each group sorted by (seed, preset), refusing groups that would pool unlike runs.

    A group may not mix presets (unless `allow_mixed_presets`) and may not hold two runs of one seed and preset:
    that would count a seed twice (reruns, or a parameter sweep the caller did not filter).
    """
    groups: dict[K, list[R]] = defaultdict(list)
    for run in results:
        groups[key(run)].append(run)
    for group_key, runs in groups.items():
        runs.sort(key=lambda run: (run.seed, run.preset))
        presets = sorted({run.preset for run in runs})
        if len(presets) > 1 and not allow_mixed_presets:
            raise SlateRLError(
                f"{describe(group_key)} mixes presets {', '.join(map(repr, presets))}; report one preset at a time, "
                "or pass allow_mixed_presets=True to pool them knowingly"
            )
        for first, second in pairwise(runs):
            if (first.seed, first.preset) == (second.seed, second.preset):
                differing = sorted(
                    name
                    for name in set(first.params) | set(second.params)
                    if first.params.get(name) != second.params.get(name)
                )
                raise SlateRLError(
                    f"{describe(group_key)} holds two runs of seed {first.seed} (preset {first.preset!r})"
                    + (f" that differ in params {', '.join(differing)}" if differing else "")
                    + "; keep one run per seed (e.g. the latest finished one) and filter sweeps by their parameters"
                )
    return dict(groups)


def group_cells(
    results: Iterable[RunResult], *, allow_mixed_presets: bool = False
) -> dict[tuple[str, str], list[RunResult]]:
    """Runs grouped by (row, env), a row being a method or one variant of it: the cells of the results table."""
    return group_runs(
        results,
        lambda run: (run.row, run.env),
        lambda cell: f"cell {cell[0]}/{cell[1]}",
        allow_mixed_presets=allow_mixed_presets,
    )
