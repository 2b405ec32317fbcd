"""PNG figures (matplotlib, Agg canvas, no pyplot state): learning curves and the GeMS β/λ trade-off (Figure 3)."""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from slate_rl.errors import SlateRLError
from slate_rl.methods import get_method, method_ids
from slate_rl.reporting.names import ENV_NAMES, GEMS, base_method, env_name, method_name, paper_order, row_order
from slate_rl.reporting.offline import BehaviourScore, OfflineResult, column_order
from slate_rl.reporting.records import RunResult, group_cells, group_runs
from slate_rl.reporting.stats import Summary, curve_band, summarise

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

TradeoffAxis = Literal["beta", "lambda_click"]
BEHAVIOUR_LINE = "behaviour policy"  # the legend entry of the dataset's own score in the offline curves
# The GeMS hyper-parameters the trade-off figure reads from RunResult.params, and the paper's values of β and λ.
TRADEOFF_PARAMS = ("latent_dim", "beta", "lambda_click")
PAPER_GEMS_PARAMS = {"beta": 1.0, "lambda_click": 0.5}
_AXIS_LABELS = {"beta": "β", "lambda_click": "λ"}
VARIANT_LINES = ("-", "--", ":", "-.")  # the line styles of one method's rows, its plain row first


def _figure(**options: Any) -> Figure:
    """A new figure; matplotlib loads on first use, not when a command starts (it costs most of a second)."""
    from matplotlib.figure import Figure

    return Figure(**options)


def _episodes_axis(ax: Axes) -> None:
    """Training-episode ticks as 20k, 40k, ..."""
    from matplotlib.ticker import EngFormatter

    ax.xaxis.set_major_formatter(EngFormatter(sep=""))


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    """Write `fig` as a PNG atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        fig.savefig(tmp, format="png", dpi=120)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _seed_counts(counts: set[int]) -> str:
    """The seeds behind a panel's lines: '1 seed', '3 seeds', '2–3 seeds' (lines with different counts), 'no seeds'."""
    if not counts:
        return "no seeds"
    low, high = min(counts), max(counts)
    return f"{low}–{high} seeds" if low != high else f"{low} seed{'s' if low != 1 else ''}"


def row_styles(rows: Sequence[str]) -> dict[str, dict[str, str]]:
    """Matplotlib line options per row: each method keeps one colour whatever else a figure shows (its place among
    the registered methods of its family; methods no longer registered after), and the rows of its variants share
    that colour with a line style each, in the order given."""
    unknown = sorted({base_method(row) for row in rows if base_method(row) not in method_ids()})
    styles: dict[str, dict[str, str]] = {}
    variants: dict[str, int] = {}
    for row in rows:
        base = base_method(row)
        if base in unknown:
            place = len(method_ids(("online",))) + unknown.index(base)
        else:
            place = method_ids((get_method(base).family,)).index(base)
        line = VARIANT_LINES[variants.get(base, 0) % len(VARIANT_LINES)]
        variants[base] = variants.get(base, 0) + 1
        styles[row] = {"color": f"C{place % 10}", "linestyle": line}
    return styles


def _panels(count: int, ncols: int, legend_labels: Sequence[str], panel: tuple[float, float], hspace: float):
    """A figure of `count` panels in rows of `ncols` (shared x axis), with fixed margins in inches (constrained
    layout would double the drawing time) for the title, the x label and a legend of `legend_labels` in rows of up
    to 4 entries, fewer where long labels would overflow the figure's width:
    (figure, axes, height in inches, legend rows, legend entries per row)."""
    ncols = min(ncols, count)
    nrows = math.ceil(count / ncols)
    width = panel[0] * ncols
    entry = 0.6 + 0.075 * max((len(label) for label in legend_labels), default=0)  # inches: line + text at 10 pt
    legend_cols = max(1, min(4, len(legend_labels), int(width // entry)))
    legend_rows = math.ceil(len(legend_labels) / legend_cols)
    top, bottom = 0.8, 0.75 + 0.25 * legend_rows
    height = panel[1] * nrows + top + bottom
    fig = _figure(figsize=(width, height))
    fig.subplots_adjust(
        left=0.8 / width, right=1 - 0.2 / width, top=1 - top / height, bottom=bottom / height, hspace=hspace, wspace=0.2
    )
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True).ravel()
    _episodes_axis(axes[0])  # shared by all panels
    for index in range(count, len(axes)):  # empty panels of the last row: show the x ticks of those above
        axes[index].set_visible(False)
        axes[index - ncols].tick_params(labelbottom=True)
    return fig, axes, height, legend_rows, legend_cols


def plot_run_curve(
    validations: Sequence[tuple[int, float]], path: str | os.PathLike, title: str, xlabel: str = "training episode"
) -> Path:
    """One run's learning curve: mean validation return against training episode (or `xlabel`)."""
    fig = _figure(figsize=(6, 3.5))
    ax = fig.add_subplot()
    episodes, values = zip(*validations, strict=True)
    ax.plot(episodes, values, marker="o", markersize=3)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("validation return (clicks)")
    _episodes_axis(ax)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.subplots_adjust(left=0.13, right=0.97, bottom=0.15, top=0.9)
    return _save(fig, path)


def plot_learning_curves(
    results: Iterable[RunResult],
    path: str | os.PathLike,
    *,
    methods: Sequence[str] | None = None,
    envs: Sequence[str] | None = None,
    confidence: float = 0.95,
    allow_mixed_presets: bool = False,
) -> Path | None:
    """One panel per environment: mean val_return over seeds vs training episode with its t-band, a line per method.

    Runs without a validation curve (oracle, random) are left out; returns None, writing nothing, if no run has one.
    """
    groups = group_cells((r for r in results if r.val_curve), allow_mixed_presets=allow_mixed_presets)
    if not groups:
        return None
    methods = tuple(methods) if methods is not None else row_order(m for m, _ in groups)
    envs = tuple(envs) if envs is not None else paper_order((e for _, e in groups), tuple(ENV_NAMES))
    fig, axes, height, legend_rows, legend_cols = _panels(
        len(envs), 3, [method_name(m) for m in methods], (4.5, 3.2), hspace=0.3
    )
    width = fig.get_figwidth()
    styles = row_styles(methods)
    handles = {}
    for ax, env in zip(axes, envs, strict=False):  # the grid may have spare panels
        seeds = set()
        for method in methods:
            runs = groups.get((method, env))
            if runs is None:
                continue
            seeds.add(len(runs))
            band = curve_band([run.val_curve for run in runs if run.val_curve], confidence)
            (handles[method],) = ax.plot(band.episodes, band.mean, **styles[method])
            ax.fill_between(
                band.episodes,
                band.mean - band.half_width,
                band.mean + band.half_width,
                color=styles[method]["color"],
                alpha=0.2,
            )
        ax.set_title(f"{env_name(env)} ({_seed_counts(seeds)})")
    fig.supxlabel("Training episode", y=(0.3 + 0.25 * legend_rows) / height, va="bottom")
    fig.supylabel("Validation return", x=0.1 / width, ha="left")
    ordered = [method for method in methods if method in handles]
    labels = [method_name(m) for m in ordered]
    fig.legend([handles[m] for m in ordered], labels, loc="lower center", ncols=legend_cols, frameon=False)
    fig.suptitle(f"Mean validation return over seeds, {confidence:.0%} t-band")
    return _save(fig, path)


def plot_offline_curves(
    results: Iterable[OfflineResult],
    behaviour: Iterable[BehaviourScore],
    path: str | os.PathLike,
    confidence: float = 0.95,
) -> Path | None:
    """One panel per dataset (environment x quality): mean normalised validation score over seeds vs gradient step
    with its t-band, a line per algorithm (or variant), and the behaviour policy's own score as a dashed line.

    Runs without a curve are left out; returns None, writing nothing, if no run has one."""
    groups: dict[tuple[str, tuple[str, str]], list[OfflineResult]] = {}
    for result in results:
        if result.val_curve:
            groups.setdefault((result.row, result.column), []).append(result)
    if not groups:
        return None
    rows = row_order(row for row, _ in groups)
    columns = column_order(column for _, column in groups)
    scores = {(b.env, b.quality): b.score for b in behaviour}
    legend_labels = [*(method_name(row) for row in rows), BEHAVIOUR_LINE]
    fig, axes, height, legend_rows, legend_cols = _panels(len(columns), 4, legend_labels, (4.0, 3.0), hspace=0.35)
    width = fig.get_figwidth()
    styles = row_styles(rows)
    handles: dict[str, Any] = {}
    for ax, column in zip(axes, columns, strict=False):
        seeds = set()
        for row in rows:
            runs = groups.get((row, column))
            if runs is None:
                continue
            seeds.add(len(runs))
            band = curve_band([run.val_curve for run in runs], confidence)
            (handles[row],) = ax.plot(band.episodes, band.mean, **styles[row])
            low, high = band.mean - band.half_width, band.mean + band.half_width
            ax.fill_between(band.episodes, low, high, color=styles[row]["color"], alpha=0.2)
        if column in scores:
            handles[BEHAVIOUR_LINE] = ax.axhline(scores[column], color="0.4", linestyle="--", linewidth=1)
        ax.set_title(f"{env_name(column[0])}, {column[1]} ({_seed_counts(seeds)})", fontsize=10)
        ax.grid(alpha=0.3)
    fig.supxlabel("Gradient step", y=(0.3 + 0.25 * legend_rows) / height, va="bottom")
    fig.supylabel("Normalised validation score", x=0.1 / width, ha="left")
    ordered = [row for row in (*rows, BEHAVIOUR_LINE) if row in handles]
    labels = [row if row == BEHAVIOUR_LINE else method_name(row) for row in ordered]
    fig.legend([handles[r] for r in ordered], labels, loc="lower center", ncols=legend_cols, frameon=False)
    fig.suptitle(f"Offline runs: mean normalised validation score over seeds, {confidence:.0%} t-band")
    return _save(fig, path)


@dataclass(frozen=True)
class TradeoffPoint:
    """Test returns of the runs with one latent dimension and one value of the varied parameter."""

    latent_dim: int
    x: float
    summary: Summary


def _number(run: RunResult, key: str) -> float:
    try:
        return float(run.params[key])
    except (TypeError, ValueError):
        raise SlateRLError(
            f"run {run.method}/{run.env}/seed{run.seed}: param {key}={run.params[key]!r} is not a number; "
            "pass GeMS hyper-parameters as numbers or numeric strings"
        ) from None


def _held_fixed(vary: TradeoffAxis, fixed: float | None) -> tuple[str, float]:
    """The parameter held fixed when `vary` varies, and its value (default: the paper's)."""
    if vary not in _AXIS_LABELS:
        raise SlateRLError(f"the trade-off varies 'beta' or 'lambda_click', not {vary!r}")
    other = "lambda_click" if vary == "beta" else "beta"
    return other, PAPER_GEMS_PARAMS[other] if fixed is None else fixed


def tradeoff_points(
    results: Iterable[RunResult],
    *,
    env: str,
    vary: TradeoffAxis = "beta",
    fixed: float | None = None,
    method: str = GEMS,
    confidence: float = 0.95,
    allow_mixed_presets: bool = False,
) -> list[TradeoffPoint]:
    """Per (latent_dim, value of `vary`): the test-return summary of `method` on `env`, sorted.

    Uses the runs whose params hold all of TRADEOFF_PARAMS and whose other parameter (λ when varying β, and
    vice versa) equals `fixed` (default: its paper value, λ = 0.5 or β = 1.0); runs of a variant of the method
    (another configuration besides the GeMS setting) are left out.
    """
    other, fixed = _held_fixed(vary, fixed)
    runs = [
        r
        for r in results
        if r.method == method
        and not r.variant
        and r.env == env
        and all(key in r.params for key in TRADEOFF_PARAMS)
        and math.isclose(_number(r, other), fixed)
    ]
    groups = group_runs(
        runs,
        lambda r: (int(_number(r, "latent_dim")), _number(r, vary)),
        lambda k: f"{method_name(method)} on {env} with latent_dim={k[0]}, {vary}={k[1]:g}, {other}={fixed:g}",
        allow_mixed_presets=allow_mixed_presets,
    )
    return [
        TradeoffPoint(d, x, summarise([r.test_return for r in group], confidence))
        for (d, x), group in sorted(groups.items())
    ]


def plot_tradeoff(
    results: Iterable[RunResult],
    path: str | os.PathLike,
    *,
    env: str = "focused_topdown",
    vary: TradeoffAxis = "beta",
    fixed: float | None = None,
    method: str = GEMS,
    confidence: float = 0.95,
    allow_mixed_presets: bool = False,
) -> Path | None:
    """Test return vs β (or λ) with a line per latent dimension and t-interval error bars (paper Figure 3).

    Returns None, writing nothing, unless the runs cover at least two values of `vary`.
    """
    other, fixed = _held_fixed(vary, fixed)
    points = tradeoff_points(
        results,
        env=env,
        vary=vary,
        fixed=fixed,
        method=method,
        confidence=confidence,
        allow_mixed_presets=allow_mixed_presets,
    )
    xs = sorted({p.x for p in points})
    if len(xs) < 2:
        return None
    dims = sorted({p.latent_dim for p in points})
    fig = _figure(figsize=(8, 4), layout="constrained")
    ax = fig.subplots()
    for i, dim in enumerate(dims):
        line = [p for p in points if p.latent_dim == dim]
        position = np.array([xs.index(p.x) for p in line]) + 0.08 * (i - (len(dims) - 1) / 2)
        errors = [np.nan if p.summary.half_width is None else p.summary.half_width for p in line]
        means = [p.summary.mean for p in line]
        ax.errorbar(position, means, yerr=errors, capsize=4, marker="o", color=f"C{i % 10}", label=str(dim))
    ax.set_xticks(range(len(xs)), [f"{x:g}" for x in xs])
    ax.set_xlabel(_AXIS_LABELS[vary])
    ax.set_ylabel("Cumulative number of clicks")
    ax.set_title(
        f"{method_name(method)} on {env_name(env)} ({_AXIS_LABELS[other]} = {fixed:g}; "
        f"{confidence:.0%} t-intervals over seeds)"
    )
    ax.legend(title="Latent dim")
    return _save(fig, path)


def write_figures(
    results: Sequence[RunResult],
    out_dir: str | os.PathLike,
    *,
    confidence: float = 0.95,
    allow_mixed_presets: bool = False,
) -> list[Path]:
    """Every figure the results allow, into `out_dir`: `learning_curves.png`, `tradeoff_<beta|lambda_click>_<env>.png`.

    Trade-off figures use the paper's value of the parameter held fixed; returns the paths written.
    """
    out_dir = Path(out_dir)
    written = [
        plot_learning_curves(
            results, out_dir / "learning_curves.png", confidence=confidence, allow_mixed_presets=allow_mixed_presets
        )
    ]
    envs = paper_order((r.env for r in results if r.method == GEMS), tuple(ENV_NAMES))
    for env in envs:
        for vary in ("beta", "lambda_click"):
            written.append(
                plot_tradeoff(
                    results,
                    out_dir / f"tradeoff_{vary}_{env}.png",
                    env=env,
                    vary=vary,
                    confidence=confidence,
                    allow_mixed_presets=allow_mixed_presets,
                )
            )
    return [path for path in written if path is not None]
