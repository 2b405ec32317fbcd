"""Logged sessions (the ε-greedy data GeMS and MF are trained on): a compact, documented on-disk format.

A dataset is a folder:

    meta.json           format name and version, environment and its parameters, seeds, sizes, summary statistics
    slates.npy          int16   (n_sessions, episode_length, slate_size)   item ids shown at steps 1..H
    clicks.npy          uint8   (n_sessions, episode_length, ceil(slate_size / 8))   clicks, bit-packed along the
                                slate (numpy.packbits, bitorder='little': bit r of the packed bytes = slot r)
    reset_clicks.npy    uint8   (n_sessions, slate_size)   clicks on the initial slate (the reset observation)
    initial_slate.npy   int16   (slate_size,)   the fixed slate every session starts with

Every array is one contiguous .npy file, so the folder loads with memory mapping. `meta.json` is written last:
a folder without it is incomplete and is refused by the loader.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from slate_rl.atomic import write_json
from slate_rl.errors import SlateRLError

FORMAT_NAME = "slate-rl/logged-sessions"
FORMAT_VERSION = 1
_ARRAYS = ("slates.npy", "clicks.npy", "reset_clicks.npy", "initial_slate.npy")


@dataclass
class LoggedSessions:
    """Logged sessions in memory (numpy arrays, possibly memory-mapped) with their metadata."""

    slates: np.ndarray  # int16 (n, H, R)
    packed_clicks: np.ndarray  # uint8 (n, H, ceil(R / 8))
    reset_clicks: np.ndarray  # uint8 (n, R)
    initial_slate: np.ndarray  # int16 (R,)
    meta: dict[str, Any]

    @property
    def n_sessions(self) -> int:
        return int(self.slates.shape[0])

    @property
    def env(self) -> str:
        return str(self.meta["env"])

    def clicks(self, sessions: slice | np.ndarray | None = None) -> np.ndarray:
        """Clicks as uint8 0/1 of shape (n, H, R) (optionally of some sessions only)."""
        packed = self.packed_clicks if sessions is None else self.packed_clicks[sessions]
        size = self.slates.shape[2]
        return np.unpackbits(packed, axis=-1, count=size, bitorder="little")

    @classmethod
    def from_episodes(cls, episodes: Any) -> LoggedSessions:
        """The sessions of an offline dataset (`OfflineEpisodes`, e.g. a collect run's): its policies' slates and
        clicks at steps 1..T, the reset observation's clicks, and the metadata GeMS / MF training reads."""
        slates = np.ascontiguousarray(episodes.slates[:, 1:])
        return cls(
            slates=slates,
            packed_clicks=np.packbits(episodes.clicks[:, 1:], axis=-1, bitorder="little"),
            reset_clicks=np.ascontiguousarray(episodes.clicks[:, 0]),
            initial_slate=np.ascontiguousarray(episodes.slates[0, 0]),
            meta={
                **episodes.metadata,
                "n_sessions": episodes.num_episodes,
                "episode_length": episodes.horizon,
                "slate_size": episodes.slate_size,
                "num_items": episodes.num_items,
                "policy": "offline dataset (" + ", ".join(episodes.source_names) + ")",
            },
        )

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(slates int16, clicks uint8) as torch tensors of shape (n, H, R), loaded into memory."""
        return torch.from_numpy(np.array(self.slates)), torch.from_numpy(self.clicks())


class LoggedSessionsWriter:
    """Writes a dataset folder chunk by chunk (memory-mapped arrays), then `finish(stats)` writes meta.json.

    The folder is assembled under `<path>.partial` and renamed to `path` only by `finish`, so an interrupted
    write never leaves a folder that looks complete.
    """

    def __init__(
        self,
        path: str | Path,
        n_sessions: int,
        episode_length: int,
        slate_size: int,
        initial_slate: np.ndarray,
        meta: dict[str, Any],
    ) -> None:
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".partial")
        if self.path.exists():
            raise SlateRLError(f"dataset folder {str(self.path)!r} already exists; choose another path")
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        packed = (slate_size + 7) // 8
        self.slates = np.lib.format.open_memmap(
            self.tmp / "slates.npy", "w+", np.int16, (n_sessions, episode_length, slate_size)
        )
        self.clicks = np.lib.format.open_memmap(
            self.tmp / "clicks.npy", "w+", np.uint8, (n_sessions, episode_length, packed)
        )
        self.reset_clicks = np.lib.format.open_memmap(
            self.tmp / "reset_clicks.npy", "w+", np.uint8, (n_sessions, slate_size)
        )
        np.save(self.tmp / "initial_slate.npy", np.asarray(initial_slate, dtype=np.int16))
        self.meta = dict(meta)

    def write_chunk(self, start: int, slates: np.ndarray, clicks: np.ndarray, reset_clicks: np.ndarray) -> None:
        """Sessions start..start+m-1: slates and 0/1 clicks (m, H, R), clicks on the initial slate (m, R)."""
        stop = start + len(slates)
        self.slates[start:stop] = slates
        self.clicks[start:stop] = np.packbits(clicks.astype(np.uint8), axis=-1, bitorder="little")
        self.reset_clicks[start:stop] = reset_clicks

    def finish(self, stats: dict[str, Any]) -> Path:
        for array in (self.slates, self.clicks, self.reset_clicks):
            array.flush()
        del self.slates, self.clicks, self.reset_clicks
        meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION, **self.meta, "stats": stats}
        write_json(self.tmp / "meta.json", meta)
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Remove the partial folder."""
        for name in ("slates", "clicks", "reset_clicks"):
            if hasattr(self, name):
                delattr(self, name)
        shutil.rmtree(self.tmp, ignore_errors=True)


def load_logged_sessions(path: str | Path, mmap: bool = True) -> LoggedSessions:
    """Open a dataset folder (memory-mapped by default), checking format, completeness and shapes."""
    path = Path(path)
    meta_path = path / "meta.json"
    if not path.is_dir():
        raise SlateRLError(f"logged dataset folder {str(path)!r} does not exist")
    if not meta_path.is_file():
        raise SlateRLError(f"{str(path)!r} has no meta.json: it is not a logged dataset, or its writing did not finish")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT_NAME:
        raise SlateRLError(f"{str(path)!r} holds a {meta.get('format')!r} dataset, not {FORMAT_NAME!r}")
    if int(meta.get("version", 0)) > FORMAT_VERSION:
        raise SlateRLError(
            f"{str(path)!r} uses format version {meta['version']}; this slate-rl reads up to "
            f"{FORMAT_VERSION}: upgrade slate-rl"
        )
    missing = [name for name in _ARRAYS if not (path / name).is_file()]
    if missing:
        raise SlateRLError(f"{str(path)!r} is incomplete: missing {', '.join(missing)}")
    mode: Literal["r"] | None = "r" if mmap else None
    data = LoggedSessions(
        slates=np.load(path / "slates.npy", mmap_mode=mode, allow_pickle=False),
        packed_clicks=np.load(path / "clicks.npy", mmap_mode=mode, allow_pickle=False),
        reset_clicks=np.load(path / "reset_clicks.npy", mmap_mode=mode, allow_pickle=False),
        initial_slate=np.load(path / "initial_slate.npy", allow_pickle=False),
        meta=meta,
    )
    n, horizon, size = data.slates.shape
    expected = {"packed_clicks": (n, horizon, (size + 7) // 8), "reset_clicks": (n, size), "initial_slate": (size,)}
    for name, shape in expected.items():
        if tuple(getattr(data, name).shape) != shape:
            raise SlateRLError(
                f"{str(path)!r} is corrupt: {name} has shape {getattr(data, name).shape}, expected {shape}"
            )
    return data
