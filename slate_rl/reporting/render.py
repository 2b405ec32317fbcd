"""Text renderings of the results table (Markdown, CSV, LaTeX with booktabs) and of the aggregate scores."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from slate_rl.reporting.aggregate import STATISTICS, AggregateScore
from slate_rl.reporting.names import base_method, env_name, is_privileged, method_name, param_list
from slate_rl.reporting.records import RunResult
from slate_rl.reporting.table import ResultsTable, TableCell

_LATEX_SPECIALS = {c: "\\" + c for c in "&%$#_{}"} | {
    "\\": r"\textbackslash{}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def _latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIALS.get(c, c) for c in text)


@dataclass(frozen=True)
class _Style:
    escape: Callable[[str], str]
    bold: Callable[[str], str]
    pm: str
    mark: str
    missing: str
    note: Callable[[str], str]


_MARKDOWN = _Style(lambda s: s.replace("|", "\\|"), lambda s: f"**{s}**", " ± ", "†", "—", lambda s: f" ({s})")
_LATEX = _Style(
    _latex_escape,
    lambda s: f"\\textbf{{{s}}}",
    " $\\pm$ ",
    "$^{\\dagger}$",
    "---",
    lambda s: f" {{\\scriptsize ({s})}}",
)


def _cell_text(cell: TableCell, decimals: int, style: _Style) -> str:
    """`mean ± half-width` (bold if best), the significance mark, then n and any pooled presets."""
    summary = cell.summary
    if summary is None:
        return style.missing
    value = f"{summary.mean:.{decimals}f}"
    notes = [f"n={summary.n}"]
    if summary.half_width is None:
        notes.append("no CI")
    else:
        value += f"{style.pm}{summary.half_width:.{decimals}f}"
    if len(cell.presets) > 1:
        notes.append("+".join(cell.presets))
    mark = style.mark if cell.significant else ""
    return (style.bold(value) if cell.best else value) + mark + style.note(style.escape(", ".join(notes)))


def _legend(table: ResultsTable, style: _Style) -> str:
    """What the numbers and marks of `table` mean, in `style`."""
    text = (
        style.escape("Mean test return over seeds")
        + style.pm
        + style.escape(
            f"half-width of the {table.confidence:.0%} Student-t interval "
            "(n = number of seeds; no CI with a single seed). "
        )
        + style.bold("Bold")
        + style.escape(": best mean of the column. ")
    )
    if table.reference is not None:
        text += style.mark + style.escape(
            f": Welch's t-test against {method_name(table.reference)} significant at level {table.alpha:g} "
            "(needs two seeds on both sides). "
        )
    if table.variants:
        text += style.escape(
            "A row with [...] is a variant of its method: the params its runs set apart from the method's other rows "
            "(the plain row keeps their defaults). "
        )
    if table.settings:
        shared = "; ".join(f"{method_name(m)}: {param_list(pairs)}" for m, pairs in sorted(table.settings.items()))
        text += style.escape(f"Set in every run of the method, unlike the preset: {shared}. ")
    presets = table.presets
    label = "Presets" if len(presets) > 1 else "Preset"
    return text + style.missing + style.escape(f": not run. {label}: {', '.join(presets)}.")


def to_markdown(table: ResultsTable, decimals: int = 1) -> str:
    """The table as a GitHub Markdown table followed by a one-paragraph legend."""
    escape = _MARKDOWN.escape
    lines = [
        "| Method | " + " | ".join(escape(env_name(e)) for e in table.envs) + " |",
        "|---|" + "---:|" * len(table.envs),
    ]
    for method in table.methods:
        cells = (_cell_text(table.cell(method, env), decimals, _MARKDOWN) for env in table.envs)
        lines.append(f"| {escape(method_name(method))} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + _legend(table, _MARKDOWN) + "\n"


_CSV_COLUMNS = (
    "method",
    "method_name",
    "env",
    "env_name",
    "presets",
    "n",
    "mean",
    "std",
    "ci_level",
    "ci_half_width",
    "reference",
    "welch_t",
    "welch_dof",
    "welch_p",
    "significant",
    "best",
    "variant",
)


def to_csv(table: ResultsTable) -> str:
    """The table in long form, one row per (row, env) in table order, numbers at full precision.

    `method` is the method id; for a variant row `variant` lists its distinguishing params ('agent.gamma=0.9') and
    each such param has a column of its own, after the fixed ones. Empty fields mean undefined: no runs (n empty),
    a single seed (no std / half-width), no Welch test, or a param column in a method's plain row (the preset's
    configuration) or in a row of another method.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    params = sorted({name for variant in table.variants.values() for name, _ in variant})
    writer.writerow(_CSV_COLUMNS + tuple(params))
    blank = lambda value: "" if value is None else value  # noqa: E731
    for method in table.methods:
        variant = dict(table.variants.get(method, ()))
        for env in table.envs:
            cell = table.cell(method, env)
            s, w = cell.summary, cell.welch
            writer.writerow(
                [base_method(method), method_name(method), env, env_name(env), ";".join(cell.presets)]
                + ([s.n, s.mean, blank(s.std)] if s else ["", "", ""])
                + [table.confidence, blank(s.half_width) if s else "", blank(table.reference)]
                + ([w.statistic, w.dof, w.p_value] if w else ["", "", ""])
                + [int(cell.significant), int(cell.best), ", ".join(f"{k}={v}" for k, v in variant.items())]
                + [variant.get(name, "") for name in params]
            )
    return buffer.getvalue()


_PER_SEED_COLUMNS = ("method", "variant", "n", "mean", "ci_half_width", "values")


def variant_label(variant: dict[str, str]) -> str:
    """A variant as one CSV field: 'default' for a method's plain row, a switch turned on by its name
    ('reference_bugs'), any other param as name=value; several joined by '; '."""
    if not variant:
        return "default"
    return "; ".join(name if value.lower() == "true" else f"{name}={value}" for name, value in variant.items())


def to_per_seed_csv(table: ResultsTable, env: str) -> str:
    """One environment's column of the table with its per-seed values: one row per method and variant, columns
    method, variant ('default' or the params that set it apart), n, mean, ci_half_width (empty for one seed) and
    values (the per-seed test returns, ';'-separated, at full precision). Rows the table holds no runs for are left
    out."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(_PER_SEED_COLUMNS)
    for method in table.methods:
        cell = table.cell(method, env)
        if cell.summary is None:
            continue
        variant = {name.rpartition(".")[2]: value for name, value in table.variants.get(method, ())}
        half_width = "" if cell.summary.half_width is None else cell.summary.half_width
        values = ";".join(repr(float(v)) for v in cell.values)
        writer.writerow(
            [base_method(method), variant_label(variant), cell.summary.n, cell.summary.mean, half_width, values]
        )
    return buffer.getvalue()


RUNS_COLUMNS = (
    "env",
    "method",
    "variant",
    "seed",
    "run_id",
    "test_return",
    "test_return_stderr",
    "best_val_return",
    "best_val_episode",
    "val_return_last_tenth",
    "train_seconds",
    "git_commit",
    "preset",
    "settings",
)


def to_runs_csv(results: Sequence[RunResult]) -> str:
    """One row per run, sorted by environment, method, variant and seed: where each number of the table comes from.
    `best_val_return` and its episode, and `val_return_last_tenth` (the mean validation return over the last tenth
    of training: the validations after 90% of the last validated episode) come from the validation curve; `settings`
    are the params every compared run of the method set apart from the preset ('name=value; ...'); empty fields mean
    unknown (a run without validation curve, a run that logged no test standard error). `compare --add-runs` reads
    the file back (`slate_rl.reporting.runs_file`)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(RUNS_COLUMNS)
    blank = lambda value: "" if value is None else value  # noqa: E731
    labelled = [(variant_label({name.rpartition(".")[2]: value for name, value in r.variant}), r) for r in results]
    for label, r in sorted(labelled, key=lambda item: (item[1].env, item[1].method, item[0], item[1].seed)):
        best = r.best_val if r.best_val is not None else ("", "")
        settings = "; ".join(f"{name}={value}" for name, value in r.settings)
        source = (r.run_id, r.test_return, blank(r.test_stderr), *best, blank(r.val_last_tenth))
        writer.writerow([r.env, r.method, label, r.seed, *source, blank(r.train_seconds), r.commit, r.preset, settings])
    return buffer.getvalue()


def to_latex(table: ResultsTable, decimals: int = 1, label: str | None = None) -> str:
    """The table as a LaTeX `table` float with a booktabs `tabular` (needs \\usepackage{booktabs}).

    A rule separates the methods that use privileged simulator information from the others.
    """
    lines = [
        "% requires \\usepackage{booktabs}",
        "\\begin{table}[t]",
        "\\centering",
        "\\caption{" + _legend(table, _LATEX).strip() + "}",
    ]
    if label is not None:
        lines.append(f"\\label{{{label}}}")
    lines += [
        "\\begin{tabular}{l" + "c" * len(table.envs) + "}",
        "\\toprule",
        "Method & " + " & ".join(_latex_escape(env_name(e)) for e in table.envs) + " \\\\",
        "\\midrule",
    ]
    for previous, method in zip((None, *table.methods[:-1]), table.methods, strict=True):
        if previous is not None and is_privileged(base_method(previous)) and not is_privileged(base_method(method)):
            lines.append("\\midrule")
        cells = (_cell_text(table.cell(method, env), decimals, _LATEX) for env in table.envs)
        lines.append(_latex_escape(method_name(method)) + " & " + " & ".join(cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
    return "\n".join(lines) + "\n"


def aggregates_to_markdown(scores: Sequence[AggregateScore], decimals: int = 3) -> str:
    """Aggregate scores as a Markdown table: one row per method, `estimate [low, high]` per statistic."""
    by_method: dict[str, dict[str, AggregateScore]] = {}
    for score in scores:
        by_method.setdefault(score.method, {})[score.statistic] = score
    header = "| Method | " + " | ".join(f"{name} [CI]" for name in STATISTICS.values()) + " | Runs |"
    lines = [header, "|---|" + "---:|" * (len(STATISTICS) + 1)]
    for method, stats in by_method.items():
        cells = [
            f"{stats[s].estimate:.{decimals}f} [{stats[s].low:.{decimals}f}, {stats[s].high:.{decimals}f}]"
            for s in STATISTICS
        ]
        runs = next(iter(stats.values())).n_runs
        lines.append(f"| {_MARKDOWN.escape(method_name(method))} | " + " | ".join(cells) + f" | {runs} |")
    if scores:
        first = scores[0]
        lines += [
            "",
            f"Scores: {_NORMALISATION_TEXT[first.normalisation]}, aggregated over {len(first.envs)} environments; "
            f"{first.confidence:.0%} stratified-bootstrap percentile intervals.",
        ]
    return "\n".join(lines) + "\n"


_NORMALISATION_TEXT = {
    "random_oracle": "(test return − Random) / (Short-term oracle − Random) per environment",
    "raw": "raw test returns",
}
