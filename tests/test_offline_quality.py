"""Quality metrics on hand-made datasets with known answers, and the written report."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from slate_rl.data import quality_metrics, write_quality_report
from slate_rl.data.quality import consecutive_overlap
from slate_rl.errors import SlateRLError
from test_offline_helpers import collect, small_env, tiny_episodes

# Two episodes of two steps, slates of two items out of a catalogue of 10; row 0 is the (ignored) reset slate.
SLATES = [[[0, 1], [2, 3], [3, 4]], [[0, 1], [5, 5], [5, 6]]]
CLICKS = [
    [[0, 0], [1, 0], [1, 1]],  # rewards 1, 2 -> return 3
    [[1, 1], [0, 0], [0, 1]],
]  # rewards 0, 1 -> return 1
META = {"env": "hand_made", "env_params": {"num_items": 10}, "reference_scores": {"random": 1.0, "expert": 3.0}}


@pytest.fixture
def tiny():
    return tiny_episodes(SLATES, CLICKS, sources=[0, 1], source_names=("expert", "random", "medium"), metadata=META)


def test_metrics_have_the_known_values(tiny):
    m = quality_metrics(tiny, item_topics=np.arange(10) // 2)
    expected = {
        "num_episodes": 2,
        "num_transitions": 4,
        "mean_return": 2.0,
        "std_return": math.sqrt(2),
        "min_return": 1.0,
        "max_return": 3.0,
        "p05_return": 1.1,
        "p25_return": 1.5,
        "median_return": 2.0,
        "p75_return": 2.5,
        "p95_return": 2.9,
        "normalized_return": 50.0,
        "mean_step_reward": 1.0,
        "std_step_reward": math.sqrt(2 / 3),
        "zero_click_step_share": 0.25,
        "distinct_items_per_slate": 1.75,  # 2, 2, 1 ([5, 5]), 2
        "distinct_topics_per_slate": 1.5,  # topics (1, 1), (1, 2), (2, 2), (2, 3)
        "consecutive_overlap": 0.5,  # item 3 of [3, 4] was in [2, 3]; item 5 of [5, 6] was in [5, 5]
        "unique_items": 5,
        "catalogue_coverage": 0.5,  # items 2, 3, 4, 5, 6 (the reset slate is left out)
        "top10pct_item_share": 3 / 8,
        "top1_item_share": 3 / 8,  # item 5 takes 3 of the 8 slots
        "source/expert/share": 0.5,
        "source/expert/mean_return": 3.0,
        "source/expert/std_return": 0.0,
        "source/random/share": 0.5,
        "source/random/mean_return": 1.0,
        "source/random/std_return": 0.0,
        "source/medium/share": 0.0,
    }
    assert set(m) == {f"quality/{key}" for key in expected}
    for key, value in expected.items():
        assert m[f"quality/{key}"] == pytest.approx(value), key
    assert all(isinstance(value, float) for value in m.values())


def test_overlap_counts_repeated_items_per_slot():
    slates = np.array([[[1, 2, 3], [3, 2, 9], [7, 8, 9]]])  # 2 of 3, then 1 of 3
    assert consecutive_overlap(slates) == pytest.approx(0.5)
    assert math.isnan(consecutive_overlap(slates[:, :1]))


def test_top10pct_share_uses_a_tenth_of_the_catalogue():
    slates = [[[0, 0], [1, 2], [1, 3], [1, 4], [5, 6]]]  # item 1 three times, five others once: 8 slots
    clicks = [[[0, 0]] * 5]
    m = quality_metrics(tiny_episodes(slates, clicks, metadata={"env_params": {"num_items": 20}}))
    assert m["quality/top10pct_item_share"] == pytest.approx(4 / 8)  # 2 items of 20: item 1 and one other
    assert m["quality/top1_item_share"] == pytest.approx(3 / 8)
    assert m["quality/catalogue_coverage"] == pytest.approx(6 / 20)
    assert "quality/normalized_return" not in m and "quality/distinct_topics_per_slate" not in m


def test_metrics_tell_random_slates_from_the_oracle():
    env = small_env()
    random = quality_metrics(collect(env, "random", 20, seed=1))
    oracle = quality_metrics(collect(env, "oracle", 20, epsilon=0.0))
    assert random["quality/distinct_items_per_slate"] == 10.0  # the random policy draws distinct items
    assert random["quality/consecutive_overlap"] < 0.05 < oracle["quality/consecutive_overlap"]
    assert random["quality/catalogue_coverage"] > oracle["quality/catalogue_coverage"]
    assert random["quality/top10pct_item_share"] < oracle["quality/top10pct_item_share"]


def test_catalogue_size_is_required(tiny):
    bare = tiny_episodes(SLATES, CLICKS, metadata={})
    with pytest.raises(SlateRLError, match="num_items"):
        quality_metrics(bare)
    assert quality_metrics(bare, num_items=10)["quality/catalogue_coverage"] == 0.5


def test_report_writes_json_markdown_and_png(tmp_path, tiny):
    metrics = write_quality_report(tiny, tmp_path / "report", item_topics=np.arange(10) // 2)
    assert json.loads((tmp_path / "report" / "quality.json").read_text()) == pytest.approx(metrics)
    text = (tmp_path / "report" / "quality.md").read_text()
    assert text.startswith("# Offline dataset quality: hand_made")
    assert "| expert | 1 | 50.0% | 3.00 | 0.00 |" in text and "| medium | 0 | 0.0% |" in text
    assert "| consecutive-slate overlap | 50.0% | < 50% (not met) |" in text
    assert "Normalised score 50.0" in text
    assert (tmp_path / "report" / "quality.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == ["quality.json", "quality.md", "quality.png"]
