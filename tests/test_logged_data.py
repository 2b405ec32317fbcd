"""The logged-sessions format: round trip, bit packing, completeness checks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from slate_rl.data.logged import LoggedSessionsWriter, load_logged_sessions
from slate_rl.errors import SlateRLError


def _write(path, n=7, horizon=4, size=10, seed=0):
    rng = np.random.default_rng(seed)
    slates = rng.integers(0, 1000, (n, horizon, size)).astype(np.int16)
    clicks = rng.integers(0, 2, (n, horizon, size)).astype(np.uint8)
    reset = rng.integers(0, 2, (n, size)).astype(np.uint8)
    writer = LoggedSessionsWriter(path, n, horizon, size, np.arange(size), {"env": "focused_mix"})
    writer.write_chunk(0, slates[:3], clicks[:3], reset[:3])
    writer.write_chunk(3, slates[3:], clicks[3:], reset[3:])
    writer.finish({"mean_return": 1.5})
    return slates, clicks, reset


def test_round_trip_preserves_every_field(tmp_path):
    slates, clicks, reset = _write(tmp_path / "data")
    data = load_logged_sessions(tmp_path / "data")
    assert data.n_sessions == 7 and data.env == "focused_mix"
    np.testing.assert_array_equal(data.slates, slates)
    np.testing.assert_array_equal(data.clicks(), clicks)
    np.testing.assert_array_equal(data.clicks(slice(2, 5)), clicks[2:5])
    np.testing.assert_array_equal(data.reset_clicks, reset)
    np.testing.assert_array_equal(data.initial_slate, np.arange(10))
    assert data.meta["stats"] == {"mean_return": 1.5}
    slate_t, click_t = data.tensors()
    assert slate_t.dtype.itemsize == 2 and click_t.shape == (7, 4, 10)


def test_clicks_are_packed_to_two_bytes_per_slate(tmp_path):
    _write(tmp_path / "data")
    assert np.load(tmp_path / "data" / "clicks.npy").shape == (7, 4, 2)


def test_unfinished_folder_is_refused(tmp_path):
    writer = LoggedSessionsWriter(tmp_path / "data", 2, 3, 10, np.arange(10), {"env": "x"})
    writer.write_chunk(0, np.zeros((2, 3, 10), np.int16), np.zeros((2, 3, 10), np.uint8), np.zeros((2, 10), np.uint8))
    assert not (tmp_path / "data").exists()  # still under data.partial
    with pytest.raises(SlateRLError, match="does not exist"):
        load_logged_sessions(tmp_path / "data")
    writer.abort()
    assert not (tmp_path / "data.partial").exists()


def test_wrong_format_and_corruption_are_named(tmp_path):
    _write(tmp_path / "data")
    meta = json.loads((tmp_path / "data" / "meta.json").read_text())
    (tmp_path / "data" / "meta.json").write_text(json.dumps({**meta, "format": "other"}))
    with pytest.raises(SlateRLError, match="not 'slate-rl/logged-sessions'"):
        load_logged_sessions(tmp_path / "data")
    (tmp_path / "data" / "meta.json").write_text(json.dumps(meta))
    np.save(tmp_path / "data" / "reset_clicks.npy", np.zeros((3, 10), np.uint8))
    with pytest.raises(SlateRLError, match="corrupt: reset_clicks"):
        load_logged_sessions(tmp_path / "data")


def test_existing_destination_is_not_overwritten(tmp_path):
    _write(tmp_path / "data")
    with pytest.raises(SlateRLError, match="already exists"):
        LoggedSessionsWriter(tmp_path / "data", 1, 1, 10, np.arange(10), {})
