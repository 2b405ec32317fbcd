"""`load_offline`: one entry point for both offline formats, from a local path (file or folder)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from slate_rl.data.d4rl_npz import read_npz
from slate_rl.data.minari_io import read_minari
from slate_rl.data.offline import OfflineEpisodes
from slate_rl.data.transitions import OfflineTransitions, to_episodes, to_transitions
from slate_rl.errors import SlateRLError

Kind = Literal["episodes", "transitions"]


def load_offline(
    path: str | os.PathLike, kind: Kind = "episodes", oracle: bool = False
) -> OfflineEpisodes | OfflineTransitions:
    """Load an offline dataset as episodes or as D4RL-style transitions.

    `path` is a `.npz` main file, a Minari root / dataset / data folder, a folder holding exactly one of them
    (e.g. a downloaded MLflow artifact folder), or a finished `collect` run (its id or `runs:/<id>`). `oracle` also
    loads the oracle arrays (user states, bored topics, relevances) when the dataset has them.
    """
    if kind not in ("episodes", "transitions"):
        raise SlateRLError(f"kind must be 'episodes' or 'transitions' (got {kind!r})")
    if _is_run_reference(str(path)):
        path = _run_dataset_dir(str(path))
    source = _resolve(Path(path))
    if source.suffix == ".npz":
        transitions = read_npz(source, oracle=oracle)
        return transitions if kind == "transitions" else to_episodes(transitions)
    episodes = read_minari(source, oracle=oracle)
    return episodes if kind == "episodes" else to_transitions(episodes)


def _is_run_reference(text: str) -> bool:
    return text.startswith("runs:/") or (
        len(text) == 32 and all(c in "0123456789abcdef" for c in text) and not Path(text).exists()
    )


def _run_dataset_dir(reference: str) -> Path:
    """The npz dataset folder of a FINISHED collect run (MLflow is imported only for run references)."""
    from slate_rl.tracking.lineage import artifact_dir, get_finished_run, parse_run_uri

    run_id, _ = parse_run_uri(reference)
    return artifact_dir(get_finished_run(run_id, "collect"), "dataset/npz")


def _resolve(path: Path) -> Path:
    """The .npz main file or the Minari folder that `path` designates."""
    if path.is_file():
        if path.suffix != ".npz":
            raise SlateRLError(f"{str(path)!r} is neither a .npz file nor a Minari dataset folder")
        return path
    if not path.is_dir():
        raise SlateRLError(f"offline dataset {str(path)!r} does not exist")
    minari_sets = list(path.rglob("data/metadata.json")) + list(path.glob("metadata.json"))
    npz_files = [p for p in path.rglob("*.npz") if not p.name.endswith("_oracle.npz") and not p.name.startswith(".")]
    if minari_sets and npz_files:
        raise SlateRLError(f"{str(path)!r} holds both a Minari dataset and .npz files; pass one of them")
    if minari_sets:
        return path
    if len(npz_files) == 1:
        return npz_files[0]
    if npz_files:
        raise SlateRLError(
            f"{str(path)!r} holds several .npz datasets ({', '.join(sorted(p.name for p in npz_files))})"
            "; pass one of them"
        )
    raise SlateRLError(f"no offline dataset (Minari folder or .npz file) under {str(path)!r}")
