"""Quality metrics of an offline dataset, as a flat dict of floats named `quality/...` (ready for MLflow).

Slate statistics use the slates the policies chose (observations 1..T); the fixed reset slate is left out.

    returns        num_episodes, num_transitions, mean/std/min/max_return, p05/p25/median/p75/p95_return,
                   normalized_return = 100 (mean - random) / (expert - random), given metadata['reference_scores']
    steps          mean_step_reward, std_step_reward, zero_click_step_share
    slates         distinct_items_per_slate, distinct_topics_per_slate (given the items' topics),
                   consecutive_overlap (share of the items of slate t+1 already in slate t)
    catalogue      unique_items, catalogue_coverage (unique items / num_items), top10pct_item_share (share of all
                   slots taken by the most shown 10% of the catalogue), top1_item_share
    per source     source/<name>/share (of episodes), source/<name>/mean_return, source/<name>/std_return
"""

from __future__ import annotations

import math

import numpy as np

from slate_rl.data.offline import OfflineEpisodes
from slate_rl.errors import SlateRLError

PREFIX = "quality/"
_CHUNK = 1024  # episodes per block in the overlap computation (bounds its temporary memory)


def item_counts(episodes: OfflineEpisodes, num_items: int) -> np.ndarray:
    """How often each item was shown in the policies' slates (num_items,)."""
    return np.bincount(episodes.slates[:, 1:].ravel(), minlength=num_items)


def distinct_per_row(values: np.ndarray) -> np.ndarray:
    """Number of distinct entries along the last axis."""
    ordered = np.sort(values, axis=-1)
    return 1 + (np.diff(ordered, axis=-1) != 0).sum(axis=-1)


def consecutive_overlap(slates: np.ndarray) -> float:
    """Mean share of the items of slate t+1 that already appeared in slate t, over consecutive slates (E, S, R)."""
    if slates.shape[1] < 2:
        return float("nan")
    total, count = 0.0, 0
    for start in range(0, slates.shape[0], _CHUNK):
        block = slates[start : start + _CHUNK]
        previous, following = block[:, :-1], block[:, 1:]
        seen = (following[..., :, None] == previous[..., None, :]).any(axis=-1)
        total += float(seen.sum())
        count += seen.size
    return total / count


def quality_metrics(
    episodes: OfflineEpisodes, *, num_items: int | None = None, item_topics: np.ndarray | None = None
) -> dict[str, float]:
    """All metrics of the module docs; `num_items` defaults to metadata['env_params']['num_items']."""
    num_items = num_items or episodes.num_items
    if not num_items:
        raise SlateRLError("quality metrics need the catalogue size: pass num_items or record env_params")
    returns = episodes.returns()
    rewards = episodes.rewards.ravel()
    slates = episodes.slates[:, 1:]
    counts = item_counts(episodes, num_items)
    top = np.sort(counts)[::-1][: max(1, math.ceil(0.1 * num_items))]
    quantiles = np.quantile(returns, [0.05, 0.25, 0.5, 0.75, 0.95])
    metrics = {
        "num_episodes": float(episodes.num_episodes),
        "num_transitions": float(rewards.size),
        "mean_return": float(returns.mean()),
        "std_return": float(returns.std(ddof=1)) if returns.size > 1 else 0.0,
        "min_return": float(returns.min()),
        "max_return": float(returns.max()),
        **{
            f"{name}_return": float(q)
            for name, q in zip(("p05", "p25", "median", "p75", "p95"), quantiles, strict=True)
        },
        "mean_step_reward": float(rewards.mean()),
        "std_step_reward": float(rewards.std(ddof=1)) if rewards.size > 1 else 0.0,
        "zero_click_step_share": float((rewards == 0).mean()),
        "distinct_items_per_slate": float(distinct_per_row(slates).mean()),
        "consecutive_overlap": consecutive_overlap(slates),
        "unique_items": float((counts > 0).sum()),
        "catalogue_coverage": float((counts > 0).sum()) / num_items,
        "top10pct_item_share": float(top.sum()) / float(counts.sum()),
        "top1_item_share": float(counts.max()) / float(counts.sum()),
    }
    if item_topics is not None:
        metrics["distinct_topics_per_slate"] = float(distinct_per_row(np.asarray(item_topics)[slates]).mean())
    references = episodes.metadata.get("reference_scores", {})
    if "random" in references and "expert" in references and references["expert"] != references["random"]:
        low, high = float(references["random"]), float(references["expert"])
        metrics["normalized_return"] = 100.0 * (metrics["mean_return"] - low) / (high - low)
    for code, name in enumerate(episodes.source_names):
        mine = returns[episodes.sources == code]
        metrics[f"source/{name}/share"] = mine.size / returns.size
        if mine.size:
            metrics[f"source/{name}/mean_return"] = float(mine.mean())
            metrics[f"source/{name}/std_return"] = float(mine.std(ddof=1)) if mine.size > 1 else 0.0
    return {PREFIX + key: value for key, value in metrics.items()}
