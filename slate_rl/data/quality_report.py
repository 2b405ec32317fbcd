"""The quality report of an offline dataset: quality.json (metrics), quality.md and quality.png, written atomically.

    metrics = write_quality_report(episodes, folder, item_topics=env.item_topics.cpu().numpy())

The PNG has three panels: the return histogram (stacked by source), the per-step reward histogram and the item
popularity curve (share of slots of each item, most shown first, log scale).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from slate_rl.atomic import write_json, write_text
from slate_rl.data.offline import OfflineEpisodes
from slate_rl.data.quality import PREFIX, item_counts, quality_metrics

# Orientation values of a healthy offline dataset (from an earlier research workflow), not hard requirements.
TARGETS = {
    "consecutive_overlap": ("< 50%", lambda v: v < 0.5),
    "catalogue_coverage": (">= 70%", lambda v: v >= 0.7),
    "top10pct_item_share": ("< 60%", lambda v: v < 0.6),
}
_ROWS = (
    ("mean_step_reward", "clicks per step (mean)", "{:.3f}"),
    ("std_step_reward", "clicks per step (std)", "{:.3f}"),
    ("zero_click_step_share", "steps without a click", "{:.1%}"),
    ("distinct_items_per_slate", "distinct items per slate", "{:.2f}"),
    ("distinct_topics_per_slate", "distinct topics per slate", "{:.2f}"),
    ("consecutive_overlap", "consecutive-slate overlap", "{:.1%}"),
    ("unique_items", "unique items shown", "{:.0f}"),
    ("catalogue_coverage", "catalogue coverage", "{:.1%}"),
    ("top10pct_item_share", "slots taken by the top 10% of items", "{:.1%}"),
    ("top1_item_share", "slots taken by the most shown item", "{:.1%}"),
)


def write_quality_report(
    episodes: OfflineEpisodes,
    folder: str | os.PathLike,
    *,
    num_items: int | None = None,
    item_topics: np.ndarray | None = None,
    title: str | None = None,
) -> dict[str, float]:
    """Compute the metrics and write quality.json, quality.md and quality.png into `folder`; returns the metrics."""
    num_items = num_items or episodes.num_items
    metrics = quality_metrics(episodes, num_items=num_items, item_topics=item_topics)  # refuses an unknown num_items
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "quality.json", metrics)
    write_text(folder / "quality.md", quality_markdown(episodes, metrics, title))
    plot_quality(episodes, folder / "quality.png", int(num_items or 0))
    return metrics


def quality_markdown(episodes: OfflineEpisodes, metrics: dict[str, float], title: str | None = None) -> str:
    """A short Markdown report of `metrics` (as returned by `quality_metrics`)."""
    m = {key[len(PREFIX) :]: value for key, value in metrics.items()}
    env = episodes.metadata.get("env", "unknown environment")
    lines = [
        f"# {title or f'Offline dataset quality: {env}'}",
        "",
        f"{episodes.num_episodes:,} episodes x {episodes.horizon} steps = {int(m['num_transitions']):,} "
        "transitions; episodes end by truncation at the horizon.",
        "",
        "## Sources",
        "",
        "| source | episodes | share | mean return | std return |",
        "|---|---|---|---|---|",
    ]
    for name, count in episodes.source_counts().items():
        mean = m.get(f"source/{name}/mean_return", float("nan"))
        std = m.get(f"source/{name}/std_return", float("nan"))
        lines.append(f"| {name} | {count:,} | {m[f'source/{name}/share']:.1%} | {mean:.2f} | {std:.2f} |")
    lines += [
        "",
        "## Returns",
        "",
        "| mean | std | min | p05 | p25 | median | p75 | p95 | max |",
        "|---|---|---|---|---|---|---|---|---|",
        "| "
        + " | ".join(
            f"{m[k]:.2f}"
            for k in (
                "mean_return",
                "std_return",
                "min_return",
                "p05_return",
                "p25_return",
                "median_return",
                "p75_return",
                "p95_return",
                "max_return",
            )
        )
        + " |",
    ]
    if "normalized_return" in m:
        refs = episodes.metadata["reference_scores"]
        lines += [
            "",
            f"Normalised score {m['normalized_return']:.1f} (0 = random {refs['random']:.2f}, "
            f"100 = expert {refs['expert']:.2f}).",
        ]
    lines += [
        "",
        "## Steps, slates and catalogue",
        "",
        "| metric | value | earlier workflow's target |",
        "|---|---|---|",
    ]
    for key, label, fmt in _ROWS:
        if key in m:
            target = ""
            if key in TARGETS:
                text, ok = TARGETS[key]
                target = f"{text} ({'met' if ok(m[key]) else 'not met'})"
            lines.append(f"| {label} | {fmt.format(m[key])} | {target} |")
    return "\n".join(lines) + "\n"


def plot_quality(episodes: OfflineEpisodes, path: str | os.PathLike, num_items: int) -> Path:
    """The three-panel PNG (see the module docs), written atomically."""
    fig = Figure(figsize=(15, 4.2))
    returns_ax, steps_ax, items_ax = fig.subplots(1, 3)
    returns = episodes.returns()
    present = [
        (name, returns[episodes.sources == code])
        for code, name in enumerate(episodes.source_names)
        if (episodes.sources == code).any()
    ]
    returns_ax.hist([values for _, values in present], bins=40, stacked=True, label=[name for name, _ in present])
    returns_ax.set(title="Episode return", xlabel="clicks per episode", ylabel="episodes")
    returns_ax.legend(fontsize=8)
    size = episodes.slate_size
    shares = np.bincount(episodes.rewards.astype(np.int64).ravel(), minlength=size + 1) / episodes.rewards.size
    steps_ax.bar(np.arange(shares.size), shares)
    steps_ax.set(title="Per-step reward", xlabel="clicks on the slate", ylabel="share of steps")
    counts = np.sort(item_counts(episodes, num_items))[::-1]
    shown = counts[counts > 0] / counts.sum()
    items_ax.plot(np.arange(1, shown.size + 1), shown)
    items_ax.set_yscale("log")
    items_ax.axvline(0.1 * num_items, color="grey", linestyle="--", linewidth=1, label="top 10% of the catalogue")
    items_ax.set(
        title=f"Item popularity ({shown.size} of {num_items} items shown)", xlabel="item rank", ylabel="share of slots"
    )
    items_ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return _write_bytes(Path(path), buffer.getvalue())


def _write_bytes(path: Path, payload: bytes) -> Path:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(payload)
    os.replace(tmp, path)
    return path
