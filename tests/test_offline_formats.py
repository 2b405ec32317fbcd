"""The two offline formats (Minari, D4RL-style .npz) and load_offline: round trips, labels, metadata, refusals."""

from __future__ import annotations

import dataclasses
import json
import shutil

import gymnasium
import minari
import numpy as np
import pytest

import slate_rl.envs  # noqa: F401  (registers SlateRL/<env>-v0)
from slate_rl.data import (
    OfflineEpisodes,
    OfflineTransitions,
    dataset_id,
    load_offline,
    minari_root,
    mix,
    read_minari,
    write_minari,
    write_npz,
)
from slate_rl.data.d4rl_npz import oracle_path
from slate_rl.data.minari_io import ENTRY_POINT, VECTOR_ENTRY_POINT
from slate_rl.errors import SlateRLError
from test_offline_helpers import HORIZON, collect, small_env

REFERENCES = {"random": 10.0, "expert": 40.0}


@pytest.fixture(scope="module")
def mixed() -> OfflineEpisodes:
    env = small_env()
    expert = collect(env, "expert", 4, epsilon=0.1, seed=1, action_dim=5, oracle=True)
    random = collect(env, "random", 3, seed=2, action_dim=5, oracle=True)
    episodes = mix([(expert, 4), (random, 3)], seed=0)
    return dataclasses.replace(episodes, metadata={**episodes.metadata, "reference_scores": REFERENCES})


def _assert_same(loaded: OfflineEpisodes, original: OfflineEpisodes, oracle: bool = True) -> None:
    names = ("slates", "clicks", "rewards", "sources", "actions") + (("user_states", "bored") if oracle else ())
    for name in names:
        np.testing.assert_array_equal(getattr(loaded, name), getattr(original, name), err_msg=name)
        assert getattr(loaded, name).dtype == getattr(original, name).dtype, name
    assert loaded.source_names == original.source_names
    assert loaded.metadata == original.metadata


def test_entry_points_match_the_gymnasium_registration():
    spec = gymnasium.spec("SlateRL/focused_topdown-v0")
    assert (spec.entry_point, spec.vector_entry_point) == (ENTRY_POINT, VECTOR_ENTRY_POINT)


def test_minari_dataset_loads_with_plain_minari(tmp_path, mixed):
    folder = write_minari(mixed, tmp_path, "mixed")
    ds_id = dataset_id("focused_topdown", "mixed")
    assert ds_id == "slate-rl/focused_topdown/mixed-v0" and folder == tmp_path / ds_id
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left
    with minari_root(tmp_path):
        dataset = minari.load_dataset(ds_id)
    assert dataset.total_episodes == 7 and dataset.total_steps == 7 * HORIZON
    for i, episode in enumerate(dataset.iterate_episodes()):
        np.testing.assert_array_equal(episode.observations["slate"], mixed.slates[i])
        np.testing.assert_array_equal(episode.observations["clicks"], mixed.clicks[i])
        np.testing.assert_array_equal(episode.actions, mixed.slates[i, 1:])
        np.testing.assert_array_equal(episode.rewards, mixed.rewards[i])
        assert not episode.terminations.any() and episode.truncations.tolist() == [False] * (HORIZON - 1) + [True]
        assert (episode.infos["source"] == mixed.sources[i]).all() and len(episode.infos["source"]) == HORIZON + 1
        assert np.isnan(episode.infos["policy_action"][0]).all()
        np.testing.assert_array_equal(episode.infos["policy_action"][1:], mixed.actions[i])
        np.testing.assert_array_equal(episode.infos["user_state"], mixed.user_states[i])
        assert dataset.observation_space.contains({k: v[0] for k, v in episode.observations.items()})
    stored = dataset.storage.metadata
    assert stored["slate_rl"]["format"]["source_names"] == ["expert", "random"]
    assert stored["slate_rl"]["format"]["episode_end"] == "truncation"
    assert stored["slate_rl"]["sources"]["expert"]["episodes"] == 4
    assert stored["slate_rl"]["return_stats"]["all"]["count"] == 7
    assert "truncation" in stored["description"]
    assert minari.get_normalized_score(dataset, np.array([25.0])) == pytest.approx([0.5])


def test_minari_recovers_a_working_environment(tmp_path, mixed):
    folder = write_minari(mixed, tmp_path, "mixed")
    env = minari.MinariDataset(folder / "data").recover_environment()
    assert env.spec.id == "SlateRL/focused_topdown-v0"
    obs, _ = env.reset(seed=0)
    np.testing.assert_array_equal(obs["slate"], mixed.slates[0, 0])  # the same initial slate
    for t in range(HORIZON):  # the recorded horizon, not the preset's 100 steps
        *_, terminated, truncated, _ = env.step(env.action_space.sample())
        assert not terminated and truncated == (t == HORIZON - 1)


def test_minari_round_trip_through_read_minari(tmp_path, mixed):
    folder = write_minari(mixed, tmp_path, "mixed", version=2)
    for path in (tmp_path, folder, folder / "data"):  # a root, a dataset folder, a data folder
        _assert_same(read_minari(path), mixed)
    no_oracle = read_minari(folder, oracle=False)
    assert no_oracle.user_states is None and no_oracle.bored is None


def test_minari_refuses_overwrites_and_missing_env(tmp_path, mixed):
    write_minari(mixed, tmp_path, "mixed")
    with pytest.raises(SlateRLError, match="already exists"):
        write_minari(mixed, tmp_path, "mixed")
    anonymous = dataclasses.replace(mixed, metadata={k: v for k, v in mixed.metadata.items() if k != "env"})
    with pytest.raises(SlateRLError, match="metadata\\['env'\\]"):
        write_minari(anonymous, tmp_path, "other")
    with pytest.raises(SlateRLError, match="letters, digits"):
        write_minari(mixed, tmp_path, "bad/name")
    unknown = dataclasses.replace(mixed, metadata={**mixed.metadata, "env": "nowhere"})
    with pytest.raises(SlateRLError, match="unknown environment 'nowhere'"):
        write_minari(unknown, tmp_path, "third")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # the partial dataset was removed
    write_minari(mixed, tmp_path, "second")
    with pytest.raises(SlateRLError, match="several Minari datasets"):
        read_minari(tmp_path)


def test_npz_layout_and_round_trip(tmp_path, mixed):
    main, sidecar = write_npz(mixed, tmp_path / "mixed.npz")
    assert sidecar == oracle_path(main) == tmp_path / "mixed_oracle.npz"
    with np.load(main, allow_pickle=False) as archive:  # a plain numpy load, no pickle
        keys = set(archive.files)
        assert archive["slates"].shape == (7 * HORIZON, 10) and archive["next_slates"].dtype == np.int16
        assert archive["timeouts"].sum() == 7 and not archive["terminals"].any()
        assert archive["source_names"].tolist() == ["expert", "random"]
        meta = json.loads(str(archive["metadata_json"]))
    assert keys == {
        "slates",
        "clicks",
        "next_slates",
        "next_clicks",
        "rewards",
        "terminals",
        "timeouts",
        "episode_ids",
        "timesteps",
        "sources",
        "actions",
        "source_names",
        "metadata_json",
    }
    assert meta["format"]["episode_end"] == "truncation" and meta["format"]["horizon"] == HORIZON
    assert meta["return_stats"]["by_source"]["random"]["count"] == 3
    transitions = load_offline(main, kind="transitions", oracle=True)
    assert isinstance(transitions, OfflineTransitions) and len(transitions) == 7 * HORIZON
    np.testing.assert_array_equal(transitions["sources"], np.repeat(mixed.sources, HORIZON))
    assert transitions.metadata == mixed.metadata
    np.testing.assert_array_equal(transitions.oracle["bored"], mixed.bored)
    _assert_same(load_offline(main, oracle=True), mixed)
    assert load_offline(main).user_states is None  # the sidecar is read on request only


def test_npz_uncompressed_loads_the_same(tmp_path, mixed):
    write_npz(mixed, tmp_path / "mixed.npz", compress=False, oracle=False)
    assert not oracle_path(tmp_path / "mixed.npz").exists()
    _assert_same(load_offline(tmp_path / "mixed.npz"), mixed, oracle=False)


def test_npz_refuses_overwrites_foreign_sidecars_and_other_files(tmp_path, mixed):
    write_npz(mixed, tmp_path / "a.npz")
    with pytest.raises(SlateRLError, match="already exists"):
        write_npz(mixed, tmp_path / "a.npz")
    write_npz(mixed.select(np.arange(3)), tmp_path / "b.npz")
    shutil.copy(tmp_path / "b_oracle.npz", tmp_path / "a_oracle.npz")
    with pytest.raises(SlateRLError, match="belongs to another dataset"):
        load_offline(tmp_path / "a.npz", oracle=True)
    (tmp_path / "b_oracle.npz").unlink()
    with pytest.raises(SlateRLError, match=r"sidecar .* is missing"):
        load_offline(tmp_path / "b.npz", oracle=True)
    np.savez(tmp_path / "plain.npz", x=np.zeros(3))
    with pytest.raises(SlateRLError, match="not written by slate-rl"):
        load_offline(tmp_path / "plain.npz")
    with pytest.raises(SlateRLError, match=r"must end in \.npz"):
        write_npz(mixed, tmp_path / "c.npy")


def test_load_offline_finds_the_dataset_in_an_artifact_folder(tmp_path, mixed):
    write_minari(mixed, tmp_path / "artifacts" / "minari", "mixed")
    write_npz(mixed, tmp_path / "artifacts" / "d4rl" / "mixed.npz")
    transitions = load_offline(tmp_path / "artifacts" / "minari", kind="transitions")
    np.testing.assert_array_equal(
        transitions["next_slates"], load_offline(tmp_path / "artifacts" / "d4rl", kind="transitions")["next_slates"]
    )
    _assert_same(load_offline(tmp_path / "artifacts" / "d4rl", oracle=True), mixed)
    with pytest.raises(SlateRLError, match=r"both a Minari dataset and \.npz files"):
        load_offline(tmp_path / "artifacts")
    with pytest.raises(SlateRLError, match="does not exist"):
        load_offline(tmp_path / "nothing")
    with pytest.raises(SlateRLError, match="kind must be"):
        load_offline(tmp_path / "artifacts" / "d4rl", kind="steps")
