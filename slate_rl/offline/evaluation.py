"""What the offline stage reports about a learned policy: its normalised score and its behaviour on the test users."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from slate_rl.data.offline import OfflineEpisodes
from slate_rl.data.quality import PREFIX, quality_metrics

# The dataset-quality metrics that describe a policy's behaviour (the rest describe returns, already reported).
BEHAVIOUR = (
    "distinct_items_per_slate",
    "distinct_topics_per_slate",
    "consecutive_overlap",
    "unique_items",
    "catalogue_coverage",
    "top10pct_item_share",
    "top1_item_share",
)


def normalised_score(value: float, random: float, expert: float) -> float:
    """100 (R - R_random) / (R_expert - R_random): 0 is the random policy, 100 the expert (the D4RL convention).
    NaN (undefined) when the expert reference does not exceed the random one, e.g. a random-only dataset with no
    registered expert: any number would only measure noise between two near-equal references."""
    if not expert > random:
        return math.nan
    return 100.0 * (float(value) - float(random)) / (float(expert) - float(random))


def behaviour(
    slates: torch.Tensor, clicks: torch.Tensor, num_items: int, item_topics: np.ndarray, env_params: dict[str, Any]
) -> dict[str, float]:
    """Diversity, coverage and repetition of played episodes (slates / clicks (M, T+1, R), row 0 the reset
    observation), computed like a dataset's quality report: names without the `quality/` prefix."""
    clicks_np = clicks.numpy().astype(np.uint8)
    episodes = OfflineEpisodes(
        slates=slates.numpy().astype(np.int16),
        clicks=clicks_np,
        rewards=clicks_np[:, 1:].sum(axis=2, dtype=np.float32),
        sources=np.zeros(slates.shape[0], dtype=np.int16),
        source_names=("policy",),
        metadata={"env_params": env_params},
    )
    metrics = quality_metrics(episodes, num_items=num_items, item_topics=item_topics)
    return {name: metrics[PREFIX + name] for name in BEHAVIOUR}
