"""Dataset containers and on-disk formats: logged sessions (GeMS / MF pre-training) and offline RL datasets.

The offline API is importable from here; its modules load on first use (matplotlib and Minari are not needed by
the logged-sessions format).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the same names (explicit re-exports), for type checkers and IDEs
    from slate_rl.data.d4rl_npz import read_npz as read_npz, write_npz as write_npz
    from slate_rl.data.loading import load_offline as load_offline
    from slate_rl.data.minari_io import (
        dataset_id as dataset_id,
        find_minari as find_minari,
        minari_root as minari_root,
        read_minari as read_minari,
        write_minari as write_minari,
    )
    from slate_rl.data.mixing import mix as mix, split_counts as split_counts
    from slate_rl.data.offline import OfflineEpisodes as OfflineEpisodes
    from slate_rl.data.quality import quality_metrics as quality_metrics
    from slate_rl.data.quality_report import write_quality_report as write_quality_report
    from slate_rl.data.recorder import EpisodeRecorder as EpisodeRecorder
    from slate_rl.data.transitions import (
        OfflineTransitions as OfflineTransitions,
        to_episodes as to_episodes,
        to_transitions as to_transitions,
    )

_EXPORTS = {
    "EpisodeRecorder": "recorder",
    "OfflineEpisodes": "offline",
    "OfflineTransitions": "transitions",
    "to_episodes": "transitions",
    "to_transitions": "transitions",
    "mix": "mixing",
    "split_counts": "mixing",
    "write_minari": "minari_io",
    "read_minari": "minari_io",
    "find_minari": "minari_io",
    "minari_root": "minari_io",
    "dataset_id": "minari_io",
    "write_npz": "d4rl_npz",
    "read_npz": "d4rl_npz",
    "load_offline": "loading",
    "quality_metrics": "quality",
    "write_quality_report": "quality_report",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'slate_rl.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"slate_rl.data.{_EXPORTS[name]}"), name)
