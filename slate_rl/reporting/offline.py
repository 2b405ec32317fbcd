"""The offline results table: rows = offline algorithms (or variants of one), columns = datasets (environment x
quality), cells = normalised scores over seeds (mean ± Student-t half-width, IQM, median); one table for the weights
of the best validation and one for the last weights, each with the behaviour policy's own score as a reference row.

A normalised score is 100 × (R − R_random) / (R_expert − R_random) with the dataset's reference returns: 0 is the
random policy, 100 the expert. The behaviour policy's score puts the dataset's own mean return on the same scale.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from slate_rl.errors import SlateRLError
from slate_rl.reporting.names import ENV_NAMES, base_method, env_name, method_name, paper_order, row_order, variant_row
from slate_rl.reporting.records import group_runs
from slate_rl.reporting.stats import Summary, iqm, summarise

CHECKPOINTS = {"best": "weights of the best validation", "last": "last weights"}  # id: what the score is of
QUALITIES = ("expert", "medium", "random")  # column order within an environment; mixes and others after, sorted
BEHAVIOUR = "behaviour"
BEHAVIOUR_NAME = "Behaviour policy"
Column = tuple[str, str]  # (environment, dataset quality)


@dataclass
class OfflineResult:
    """One finished offline training run: normalised test scores of its best and last weights, and its dataset.

    `quality` names the dataset (a registry alias, a mix name, or 'policy'); `variant` holds the (param, value) pairs
    that set the run's configuration apart from the algorithm's other rows (empty for its only one).
    """

    algorithm: str
    env: str
    quality: str
    seed: int
    preset: str
    score_best: float
    score_last: float
    dataset_run: str = ""
    variant: tuple[tuple[str, str], ...] = ()
    params: Mapping[str, Any] = field(default_factory=dict)
    val_curve: tuple[tuple[int, float], ...] = ()  # normalised validation score by gradient step (empty: not read)

    def __post_init__(self) -> None:
        where = f"offline run {self.algorithm}/{self.env}/{self.quality}/seed{self.seed}"
        for checkpoint in CHECKPOINTS:
            value = float(getattr(self, f"score_{checkpoint}"))
            if not math.isfinite(value):
                raise SlateRLError(f"{where}: normalised score of its {checkpoint} weights is {value}")
            setattr(self, f"score_{checkpoint}", value)

    @property
    def row(self) -> str:
        return variant_row(self.algorithm, self.variant)

    @property
    def column(self) -> Column:
        return (self.env, self.quality)

    def score(self, checkpoint: str) -> float:
        return float(getattr(self, f"score_{checkpoint}"))


@dataclass(frozen=True)
class BehaviourScore:
    """The normalised score of one dataset's own mean return."""

    env: str
    quality: str
    dataset_run: str
    score: float


@dataclass(frozen=True)
class OfflineCell:
    """Scores of one row on one dataset; all None when it was not run there."""

    summary: Summary | None
    iqm: float | None
    median: float | None
    presets: tuple[str, ...]
    datasets: tuple[str, ...]


@dataclass(frozen=True)
class OfflineTable:
    """One table (`checkpoint` 'best' or 'last'): rows, dataset columns, cells, and the behaviour row (a summary
    over the datasets of each column, usually one)."""

    checkpoint: str
    rows: tuple[str, ...]
    columns: tuple[Column, ...]
    cells: dict[tuple[str, Column], OfflineCell]
    behaviour: dict[Column, Summary]
    confidence: float
    variants: dict[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)

    @property
    def presets(self) -> tuple[str, ...]:
        return tuple(sorted({preset for cell in self.cells.values() for preset in cell.presets}))


def column_order(columns: Iterable[Column]) -> tuple[Column, ...]:
    """Environments in the paper's order, within each the qualities expert, medium, random, then the others."""
    present = set(columns)
    envs = paper_order((env for env, _ in present), tuple(ENV_NAMES))
    return tuple(
        (env, quality) for env in envs for quality in paper_order((q for e, q in present if e == env), QUALITIES)
    )


def build_offline_table(
    results: Iterable[OfflineResult],
    behaviour: Iterable[BehaviourScore] = (),
    *,
    checkpoint: str = "best",
    confidence: float = 0.95,
    allow_mixed_presets: bool = False,
) -> OfflineTable:
    """Summarise the normalised scores of the `checkpoint` weights per (row, dataset column)."""
    if checkpoint not in CHECKPOINTS:
        raise SlateRLError(f"unknown checkpoint {checkpoint!r}; choose one of: {', '.join(CHECKPOINTS)}")
    groups = group_runs(
        results,
        lambda run: (run.row, run.column),
        lambda key: f"cell {key[0]} on {key[1][0]}/{key[1][1]}",
        allow_mixed_presets=allow_mixed_presets,
    )
    if not groups:
        raise SlateRLError("no offline results to tabulate; pass at least one finished offline run")
    rows = row_order(row for row, _ in groups)
    columns = column_order(column for _, column in groups)
    cells = {}
    for key, runs in groups.items():
        scores = np.array([run.score(checkpoint) for run in runs])
        cells[key] = OfflineCell(
            summary=summarise(scores, confidence),
            iqm=float(iqm(scores)),
            median=float(np.median(scores)),
            presets=tuple(sorted({run.preset for run in runs})),
            datasets=tuple(sorted({run.dataset_run for run in runs if run.dataset_run})),
        )
    empty = OfflineCell(None, None, None, (), ())
    by_column: dict[Column, list[float]] = {}
    for reference in behaviour:
        by_column.setdefault((reference.env, reference.quality), []).append(reference.score)
    return OfflineTable(
        checkpoint=checkpoint,
        rows=rows,
        columns=columns,
        cells={(row, column): cells.get((row, column), empty) for row in rows for column in columns},
        behaviour={column: summarise(by_column[column], confidence) for column in columns if column in by_column},
        confidence=confidence,
        variants={row: runs[0].variant for (row, _), runs in groups.items() if runs[0].variant},
    )


def _mean_text(summary: Summary, decimals: int) -> str:
    half = "" if summary.half_width is None else f" ± {summary.half_width:.{decimals}f}"
    return f"{summary.mean:.{decimals}f}{half}"


def _column_title(column: Column) -> str:
    return f"{env_name(column[0])} {column[1]}".replace("|", "\\|")


def offline_to_markdown(table: OfflineTable, decimals: int = 1) -> str:
    """The table in Markdown: `mean ± half-width (IQM, median, n)` per cell, the behaviour row first, a legend."""
    lines = [
        "| Algorithm | " + " | ".join(_column_title(column) for column in table.columns) + " |",
        "|---|" + "---:|" * len(table.columns),
    ]
    behaviour = [_mean_text(table.behaviour[c], decimals) if c in table.behaviour else "—" for c in table.columns]
    lines.append(f"| *{BEHAVIOUR_NAME}* | " + " | ".join(behaviour) + " |")
    for row in table.rows:
        texts = []
        for column in table.columns:
            cell = table.cells[(row, column)]
            if cell.summary is None:
                texts.append("—")
                continue
            notes = [f"IQM {cell.iqm:.{decimals}f}", f"median {cell.median:.{decimals}f}", f"n={cell.summary.n}"]
            if len(cell.presets) > 1:
                notes.append("+".join(cell.presets))
            texts.append(f"{_mean_text(cell.summary, decimals)} ({', '.join(notes)})")
        lines.append(f"| {method_name(row).replace('|', chr(92) + '|')} | " + " | ".join(texts) + " |")
    legend = (
        f"Normalised test score of the {CHECKPOINTS[table.checkpoint]}: 100 × (R − R_random) / (R_expert − R_random) "
        "with each dataset's reference returns (0 = random policy, 100 = expert). Mean over seeds ± half-width of the "
        f"{table.confidence:.0%} Student-t interval (no interval with a single seed), IQM (interquartile mean) and "
        f"median over seeds, n = seeds. {BEHAVIOUR_NAME}: the dataset's own mean return on the same scale. "
    )
    if table.variants:
        legend += "A row with [...] is a variant of its algorithm: the params that set its runs apart. "
    presets = table.presets
    legend += f"—: not run. {'Presets' if len(presets) > 1 else 'Preset'}: {', '.join(presets)}."
    return "\n".join(lines) + "\n\n" + legend + "\n"


_CSV_COLUMNS = (
    "checkpoint",
    "algorithm",
    "algorithm_name",
    "env",
    "env_name",
    "quality",
    "presets",
    "n",
    "mean",
    "std",
    "ci_level",
    "ci_half_width",
    "iqm",
    "median",
    "datasets",
    "variant",
)


def offline_to_csv(tables: Sequence[OfflineTable]) -> str:
    """The tables in long form: per table (column `checkpoint`) the behaviour row, then one row per (row, dataset),
    numbers at full precision. For the behaviour row n counts datasets; empty fields mean undefined (not run, or
    no interval with one value). A variant's params also get a column each, after the fixed ones."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    params = sorted({name for table in tables for variant in table.variants.values() for name, _ in variant})
    writer.writerow(_CSV_COLUMNS + tuple(params))
    blank = lambda value: "" if value is None else value  # noqa: E731
    for table in tables:
        for row in (BEHAVIOUR, *table.rows):
            variant = dict(table.variants.get(row, ()))
            for column in table.columns:
                cell = table.cells.get((row, column))
                summary = table.behaviour.get(column) if row == BEHAVIOUR else cell.summary if cell else None
                label = BEHAVIOUR_NAME if row == BEHAVIOUR else method_name(row)
                stats = [summary.n, summary.mean, blank(summary.std)] if summary else ["", "", ""]
                writer.writerow(
                    [table.checkpoint, base_method(row), label, column[0], env_name(column[0]), column[1]]
                    + [";".join(cell.presets) if cell else ""]
                    + stats
                    + [table.confidence, blank(summary.half_width) if summary else ""]
                    + ([blank(cell.iqm), blank(cell.median), ";".join(cell.datasets)] if cell else ["", "", ""])
                    + [", ".join(f"{k}={v}" for k, v in variant.items())]
                    + [variant.get(name, "") for name in params]
                )
    return buffer.getvalue()
