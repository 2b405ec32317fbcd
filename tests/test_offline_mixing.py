"""Mixing sources: counts, labels, metadata, reproducibility, refusals; split_counts."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from slate_rl.data import mix, split_counts
from slate_rl.errors import SlateRLError
from test_offline_helpers import collect, small_env


@pytest.fixture(scope="module")
def parts():
    env = small_env()
    expert = collect(env, "expert", 6, epsilon=0.0, seed=1, oracle=True)
    references = {"random": 1.0, "expert": 9.0}
    expert = dataclasses.replace(expert, metadata={**expert.metadata, "reference_scores": references})
    noisy = collect(env, "expert_noisy", 8, epsilon=0.3, seed=2, oracle=True)
    random = collect(env, "random", 5, seed=3, oracle=True)
    return expert, noisy, random


def _episode_keys(episodes):
    """Each episode as bytes of its slates and clicks, to follow episodes through a mix."""
    return [episodes.slates[i].tobytes() + episodes.clicks[i].tobytes() for i in range(episodes.num_episodes)]


def test_mix_keeps_counts_labels_and_episodes(parts):
    expert, noisy, random = parts
    mixed = mix([(expert, 2), (noisy, 8), (random, 3)], seed=5, total=13)
    assert mixed.num_episodes == 13
    assert mixed.source_names == ("expert", "expert_noisy", "random")
    assert mixed.source_counts() == {"expert": 2, "expert_noisy": 8, "random": 3}
    originals = {}
    for part in parts:
        originals.update({key: (part.source_names[0], i) for i, key in enumerate(_episode_keys(part))})
    for i, key in enumerate(_episode_keys(mixed)):
        name, index = originals[key]  # every mixed episode is an original one, with its own label and oracle
        assert mixed.source_names[mixed.sources[i]] == name
        part = parts[("expert", "expert_noisy", "random").index(name)]
        np.testing.assert_array_equal(mixed.user_states[i], part.user_states[index])
        np.testing.assert_array_equal(mixed.rewards[i], part.rewards[index])
    assert len(set(_episode_keys(mixed))) == 13  # drawn without replacement
    assert not (np.diff(mixed.sources) >= 0).all()  # shuffled, not grouped by source


def test_mix_metadata_keeps_each_source_and_the_environment(parts):
    expert, noisy, random = parts
    mixed = mix([(expert, 2), (noisy, 4), (random, 5)], seed=0)
    meta = mixed.metadata
    assert meta["env"] == "focused_topdown" and meta["env_params"] == expert.metadata["env_params"]
    assert meta["reference_scores"] == {"random": 1.0, "expert": 9.0}
    assert meta["sources"]["expert_noisy"] == {
        "policy": "epsilon_greedy_0.3",
        "seed": 2,
        "sim_seed": 7,
        "episodes": 4,
        "episodes_available": 8,
    }
    assert meta["sources"]["random"]["episodes"] == 5 and meta["sources"]["random"]["policy"] == "random"
    assert meta["mix"] == {"seed": 0, "episodes": {"expert": 2, "expert_noisy": 4, "random": 5}}
    assert "sim_seed" not in meta  # per-collection keys moved into the source entries


def test_mix_is_reproducible_and_seeded(parts):
    expert, noisy, _ = parts
    first, again = mix([(expert, 3), (noisy, 3)], seed=1), mix([(expert, 3), (noisy, 3)], seed=1)
    other = mix([(expert, 3), (noisy, 3)], seed=2)
    np.testing.assert_array_equal(first.slates, again.slates)
    np.testing.assert_array_equal(first.sources, again.sources)
    assert _episode_keys(first) != _episode_keys(other)


def test_mixing_a_mix_keeps_labels(parts):
    expert, noisy, random = parts
    inner = mix([(expert, 3), (noisy, 3)], seed=0)
    outer = mix([(inner, 6), (random, 2)], seed=1)
    assert outer.source_counts() == {"expert": 3, "expert_noisy": 3, "random": 2}
    assert outer.metadata["sources"]["expert"]["mix"]["seed"] == 0  # the inner mix's record moved into its sources


def test_mix_refuses_bad_parts(parts):
    expert, noisy, random = parts
    with pytest.raises(SlateRLError, match="add up to 5, not the requested total 6"):
        mix([(expert, 2), (noisy, 3)], seed=0, total=6)
    with pytest.raises(SlateRLError, match="has 6 episodes; 7 requested"):
        mix([(expert, 7)], seed=0)
    with pytest.raises(SlateRLError, match="has 5 episodes; 0 requested"):
        mix([(expert, 1), (random, 0)], seed=0)
    with pytest.raises(SlateRLError, match="already come from an earlier part"):
        mix([(expert, 1), (expert, 1)], seed=0)
    other_env = collect(small_env("focused_mix"), "medium", 2)
    with pytest.raises(SlateRLError, match="metadata\\['env'\\]"):
        mix([(random, 1), (dataclasses.replace(other_env, user_states=None), 1)], seed=0)
    harder = collect(small_env(boredom_threshold=3), "medium", 2, oracle=True)
    with pytest.raises(SlateRLError, match="env_params"):
        mix([(random, 1), (harder, 1)], seed=0)
    with pytest.raises(SlateRLError, match="only some parts have 'bored'"):
        mix([(random, 1), (dataclasses.replace(noisy, bored=None), 1)], seed=0)
    rescored = dataclasses.replace(
        random, metadata={**random.metadata, "reference_scores": {"random": 2.0, "expert": 9.0}}
    )
    with pytest.raises(SlateRLError, match="disagree on reference_scores"):
        mix([(expert, 1), (rescored, 1)], seed=0)
    with pytest.raises(SlateRLError, match="at least one"):
        mix([], seed=0)


def test_split_counts_by_largest_remainder():
    assert split_counts(10_000, {"expert": 0.1, "expert_noisy": 0.4, "medium": 0.3, "random": 0.2}) == {
        "expert": 1000,
        "expert_noisy": 4000,
        "medium": 3000,
        "random": 2000,
    }
    counts = split_counts(10, {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3})
    assert sum(counts.values()) == 10 and sorted(counts.values()) == [3, 3, 4]
    with pytest.raises(SlateRLError, match="add up to 1"):
        split_counts(100, {"a": 0.5, "b": 0.4})
    with pytest.raises(SlateRLError, match="non-negative"):
        split_counts(100, {"a": 1.5, "b": -0.5})
