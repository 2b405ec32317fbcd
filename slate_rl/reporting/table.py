"""The paper-style results table as data: one cell per (method, environment) with its statistics and marks."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field

from slate_rl.errors import SlateRLError
from slate_rl.reporting.names import ENV_NAMES, GEMS, paper_order, row_order
from slate_rl.reporting.records import RunResult, group_cells
from slate_rl.reporting.stats import Summary, WelchTest, summarise, welch_test


@dataclass(frozen=True)
class TableCell:
    """A method's results on one environment; `summary` is None when it was not run there.

    `welch` is the test against the reference method (None for the reference itself, when the reference has no
    runs there, or when the test is undefined); `significant` means its p-value is below the table's alpha;
    `best` marks the highest mean of the column among the methods eligible for bold; `values` are the per-seed test
    returns the summary was computed from, in run order.
    """

    method: str
    env: str
    summary: Summary | None
    presets: tuple[str, ...]
    welch: WelchTest | None
    significant: bool
    best: bool
    values: tuple[float, ...] = ()


@dataclass(frozen=True)
class ResultsTable:
    """Rows `methods` (method ids, or rows of variants such as 'sac_gems [gamma=0.9]'), columns `envs`, the
    settings the marks were computed with, the (param, value) pairs of each variant row and those every run of a
    method shares apart from the preset (`settings`, by method id)."""

    methods: tuple[str, ...]
    envs: tuple[str, ...]
    cells: dict[tuple[str, str], TableCell]
    reference: str | None
    alpha: float
    confidence: float
    variants: dict[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)
    settings: dict[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)

    def cell(self, method: str, env: str) -> TableCell:
        """The cell of `method` on `env`."""
        return self.cells[(method, env)]

    @property
    def presets(self) -> tuple[str, ...]:
        """The presets of all runs in the table, sorted."""
        return tuple(sorted({preset for cell in self.cells.values() for preset in cell.presets}))


def build_table(
    results: Iterable[RunResult],
    *,
    methods: Sequence[str] | None = None,
    envs: Sequence[str] | None = None,
    reference: str | None = GEMS,
    alpha: float = 0.05,
    confidence: float = 0.95,
    bold_among: Collection[str] | None = None,
    allow_mixed_presets: bool = False,
) -> ResultsTable:
    """Summarise test returns per (row, env), test each against `reference` with Welch's t-test, mark the best.

    A row is a method, or one variant of it when its runs differ in more than the seed (`RunResult.row`).

    `methods` / `envs` default to those present in the results, in the paper's order (unknown ids after, sorted).
    `bold_among` restricts which methods can be bold (e.g. the non-privileged ones); default all.
    """
    if not 0.0 < alpha < 1.0:
        raise SlateRLError(f"alpha must lie strictly between 0 and 1 (e.g. 0.05), got {alpha}")
    groups = group_cells(results, allow_mixed_presets=allow_mixed_presets)
    methods = tuple(methods) if methods is not None else row_order(m for m, _ in groups)
    envs = tuple(envs) if envs is not None else paper_order((e for _, e in groups), tuple(ENV_NAMES))
    if not methods or not envs:
        raise SlateRLError("no results to tabulate; pass at least one finished run")
    returns = {cell: [run.test_return for run in runs] for cell, runs in groups.items()}
    summaries = {cell: summarise(values, confidence) for cell, values in returns.items()}
    eligible = set(methods) if bold_among is None else set(bold_among) & set(methods)
    cells = {}
    for env in envs:
        means = [summaries[(m, env)].mean for m in eligible if (m, env) in summaries]
        best = max(means, default=None)
        for method in methods:
            summary = summaries.get((method, env))
            welch = None
            if summary is not None and reference is not None and method != reference and (reference, env) in returns:
                welch = welch_test(returns[(method, env)], returns[(reference, env)])
            cells[(method, env)] = TableCell(
                method=method,
                env=env,
                summary=summary,
                presets=tuple(sorted({run.preset for run in groups.get((method, env), [])})),
                welch=welch,
                significant=welch is not None and welch.p_value < alpha,
                best=summary is not None and method in eligible and summary.mean == best,
                values=tuple(returns.get((method, env), ())),
            )
    variants = {row: runs[0].variant for (row, _), runs in groups.items() if runs[0].variant}
    settings = {run.method: run.settings for runs in groups.values() for run in runs if run.settings}
    return ResultsTable(methods, envs, cells, reference, alpha, confidence, variants, settings)
