"""Contrasts of the results table: each variant row against its method's plain row, each row against the reference
method; the difference of means with its interval, Welch's test, the smallest difference the seeds could detect and
a verdict that says "not resolved" when the data cannot decide, and how many seeds per side would detect the
difference measured."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

from slate_rl.reporting.names import base_method, env_name, method_name
from slate_rl.reporting.stats import MOST_SEEDS, Difference, difference_test
from slate_rl.reporting.table import ResultsTable


@dataclass(frozen=True)
class Contrast:
    """`row` against `against` on `env`: n per side and the difference test (None where it is undefined)."""

    row: str
    against: str
    env: str
    n: int
    n_against: int
    test: Difference | None
    alpha: float

    @property
    def verdict(self) -> str:
        """'higher' / 'lower' when Welch's p is below alpha, else 'not resolved' (or 'undefined' without a test)."""
        if self.test is None:
            return "undefined"
        if self.test.welch.p_value >= self.alpha:
            return "not resolved"
        return "higher" if self.test.difference > 0 else "lower"


def build_contrasts(table: ResultsTable, power: float = 0.8) -> list[Contrast]:
    """Per environment, every variant row against its method's plain row, then every row against the table's
    reference method; pairs where a side has no runs are left out."""
    pairs = [(row, base_method(row)) for row in table.methods if row != base_method(row)]
    if table.reference is not None:
        pairs += [(row, table.reference) for row in table.methods if row != table.reference]
    pairs = list(dict.fromkeys(pairs))  # a variant of the reference method is contrasted with it once
    contrasts = []
    for env in table.envs:
        for row, against in pairs:
            if (against, env) not in table.cells:
                continue
            mine, theirs = table.cell(row, env), table.cell(against, env)
            if mine.summary is None or theirs.summary is None:
                continue
            contrasts.append(
                Contrast(
                    row=row,
                    against=against,
                    env=env,
                    n=mine.summary.n,
                    n_against=theirs.summary.n,
                    test=difference_test(mine.values, theirs.values, table.confidence, power),
                    alpha=table.alpha,
                )
            )
    return contrasts


def contrasts_to_markdown(contrasts: list[Contrast], confidence: float = 0.95, power: float = 0.8) -> str:
    """One line per contrast: difference with its interval, Welch's t / dof / p, the smallest detectable
    difference, the verdict and the seeds per side that would detect the difference measured."""
    level = round(100 * confidence)
    lines = [
        f"| Environment | Row | Against | n | Difference ± {level}% CI | Welch t (dof), p | "
        f"Detectable at {100 - level}%, power {round(100 * power)}% | Verdict | Seeds per side to detect it |",
        "|---|---|---|---|---:|---|---:|---|---:|",
    ]
    for c in contrasts:
        cells = [env_name(c.env), method_name(c.row), method_name(c.against), f"{c.n} vs {c.n_against}"]
        if c.test is None:
            cells += ["—", "undefined (a side has < 2 seeds or no spread)", "—", c.verdict, "—"]
        else:
            w, seeds = c.test.welch, c.test.seeds_to_detect
            cells += [
                f"{c.test.difference:+.1f} ± {c.test.half_width:.1f}",
                f"{w.statistic:.2f} ({w.dof:.1f}), p = {w.p_value:.3f}",
                f"{c.test.detectable:.1f}",
                c.verdict,
                f"> {MOST_SEEDS}" if seeds is None else str(seeds),
            ]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


_CSV_COLUMNS = (
    "env",
    "row",
    "against",
    "n",
    "n_against",
    "difference",
    "ci_half_width",
    "t",
    "dof",
    "p_value",
    "detectable_difference",
    "verdict",
    "seeds_to_detect",
)


def contrasts_to_csv(contrasts: list[Contrast]) -> str:
    """The contrasts at full precision; the test's fields are empty where it is undefined."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(_CSV_COLUMNS)
    for c in contrasts:
        t = c.test
        numbers = (
            [t.difference, t.half_width, t.welch.statistic, t.welch.dof, t.welch.p_value, t.detectable]
            if t
            else [""] * 6
        )
        seeds = "" if t is None or t.seeds_to_detect is None else t.seeds_to_detect
        writer.writerow([c.env, c.row, c.against, c.n, c.n_against, *numbers, c.verdict, seeds])
    return buffer.getvalue()
