"""The canonical offline format: a Minari dataset (HDF5 backend) with id `slate-rl/<env>/<name>-v<version>`.

Written under a Minari root folder `<root>` as `<root>/slate-rl/<env>/<name>-v0/data/{main_data.hdf5, metadata.json}`
(plus Minari's namespace files), through Minari's public `create_dataset_from_buffers`, one `EpisodeBuffer` per
episode. Per episode (T steps):

    observations   {'slate': int16 (T+1, R), 'clicks': int8 (T+1, R)}   o_0 (reset observation) .. o_T
    actions        int16 (T, R)   the slate shown at step t+1 (= observations['slate'][1:])
    rewards        float32 (T,)   clicks on that slate
    terminations   all False;  truncations True at the last step (the fixed horizon truncates)
    infos          'source' int16 (T+1,): the episode's source code (names in the metadata);
                   'policy_action' float32 (T+1, A): row t+1 holds a_t, row 0 is NaN (only if actions were recorded);
                   'user_state', 'bored', 'item_relevances': the oracle arrays with o_t in row t (if recorded)

The dataset records the gymnasium spec `SlateRL/<env>-v0` with the simulator's parameters (and sim seed) as kwargs,
so `dataset.recover_environment()` rebuilds the environment; reference scores become Minari's `ref_min_score`
(random) / `ref_max_score` (expert) for `minari.get_normalized_score`. The metadata of `OfflineEpisodes` is stored in
Minari's metadata.json under the key 'slate_rl', with a `format` block (horizon, 'episode_end': 'truncation',
source names) and `return_stats`.

Loading: `read_minari(path)` for a root, dataset or data folder; or plain Minari,
`with minari_root(root): minari.load_dataset("slate-rl/<env>/<name>-v0")` (or `minari.MinariDataset(data_folder)`).
The dataset is assembled in a hidden folder under `<root>` and moved into place when complete.

Cost: Minari's HDF5 storage holds every episode as its own group of about ten small datasets, and
`create_dataset_from_buffers` is its only public writing route (DataCollector is slower and needs jax). Measured on
10,000 episodes x 100 steps with 32-d policy actions (benchmarks/bench_offline_formats.py, 2 busy cores): 84 s to
write, 435 MB, about 50 s to load, against 13 s, 147 MB and 2 s for the compressed .npz. Minari is the interchange
format; training code should load the .npz.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from gymnasium.envs.registration import EnvSpec

from slate_rl.data.offline import ORACLE_FIELDS, OfflineEpisodes
from slate_rl.errors import SlateRLError

NAMESPACE = "slate-rl"
METADATA_KEY = "slate_rl"
FORMAT_NAME = "slate-rl/offline-episodes"
FORMAT_VERSION = 1
# The gymnasium registration of slate_rl.envs.gym (string entry points, as Minari requires to store the spec).
ENV_ID = "SlateRL/{env}-v0"
ENTRY_POINT = "slate_rl.envs.gym:SlateRLEnv"
VECTOR_ENTRY_POINT = "slate_rl.envs.gym:SlateRLVectorEnv"
_INFO_NAMES = {"user_states": "user_state", "bored": "bored", "item_relevances": "item_relevances"}
_NAME = re.compile(r"^[A-Za-z0-9_]+$")
PathLike = str | os.PathLike


def dataset_id(env: str, name: str, version: int = 0) -> str:
    """`slate-rl/<env>/<name>-v<version>`; names use letters, digits and '_'."""
    for label, value in (("env", env), ("name", name)):
        if not _NAME.match(str(value)):
            raise SlateRLError(f"dataset {label} {value!r} may only use letters, digits and '_'")
    return f"{NAMESPACE}/{env}/{name}-v{int(version)}"


@contextlib.contextmanager
def minari_root(root: PathLike) -> Iterator[Path]:
    """Point MINARI_DATASETS_PATH at `root` inside the block (for `minari.load_dataset`), restoring it afterwards."""
    previous = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(Path(root).resolve())
    try:
        yield Path(root)
    finally:
        if previous is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = previous


def env_spec(metadata: dict[str, Any]) -> EnvSpec:
    """The gymnasium spec that rebuilds the dataset's environment (name, simulator parameters, sim seed)."""
    if "env" not in metadata:
        raise SlateRLError(
            "metadata['env'] (the environment preset name) is needed to write a Minari dataset; "
            "build the episodes with EpisodeRecorder.for_env(env, ...)"
        )
    env = str(metadata["env"])
    kwargs: dict[str, Any] = {"name": env, **metadata.get("env_params", {})}
    if "sim_seed" in metadata:
        kwargs["sim_seed"] = int(metadata["sim_seed"])
    return EnvSpec(
        id=ENV_ID.format(env=env), entry_point=ENTRY_POINT, vector_entry_point=VECTOR_ENTRY_POINT, kwargs=kwargs
    )


def write_minari(
    episodes: OfflineEpisodes,
    root: PathLike,
    name: str,
    *,
    version: int = 0,
    author: str = "slate-rl",
    author_email: str | None = None,
    code_permalink: str | None = None,
    description: str | None = None,
) -> Path:
    """Write `episodes` as Minari dataset `slate-rl/<env>/<name>-v<version>` under `root`; returns its folder."""
    import minari

    root = Path(root)
    spec = env_spec(episodes.metadata)
    ds_id = dataset_id(str(episodes.metadata["env"]), name, version)
    final = root / ds_id
    if final.exists():
        raise SlateRLError(
            f"Minari dataset {ds_id!r} already exists under {str(root)!r}; choose another name or version"
        )
    stored = {
        **episodes.metadata,
        "return_stats": episodes.return_stats(),
        "format": {
            "name": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "horizon": episodes.horizon,
            "episode_end": "truncation",
            "source_names": list(episodes.source_names),
            "infos": sorted(_info_keys(episodes)),
        },
    }
    references = episodes.metadata.get("reference_scores", {})
    scores = (
        {"ref_min_score": float(references["random"]), "ref_max_score": float(references["expert"])}
        if "random" in references and "expert" in references
        else {}
    )
    tmp_root = root / f".{NAMESPACE}-{episodes.metadata['env']}-{name}-v{int(version)}.{os.getpid()}.partial"
    shutil.rmtree(tmp_root, ignore_errors=True)
    try:
        with minari_root(tmp_root), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*is set to None", category=UserWarning)
            dataset = minari.create_dataset_from_buffers(
                ds_id,
                _buffers(episodes),
                env=spec,
                algorithm_name=f"{NAMESPACE} collect",
                author=author,
                author_email=author_email,
                code_permalink=code_permalink,
                description=_description(episodes, description),
                **scores,
            )
            dataset.storage.update_metadata({METADATA_KEY: stored})
        _move_into_place(tmp_root, root, ds_id)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    return final


def _info_keys(episodes: OfflineEpisodes) -> list[str]:
    keys = ["source"] + (["policy_action"] if episodes.actions is not None else [])
    return keys + [_INFO_NAMES[name] for name in ORACLE_FIELDS if getattr(episodes, name) is not None]


def _buffers(episodes: OfflineEpisodes) -> Iterator[Any]:
    from minari.data_collector.episode_buffer import EpisodeBuffer

    horizon = episodes.horizon
    terminations = np.zeros(horizon, dtype=bool)
    truncations = np.zeros(horizon, dtype=bool)
    truncations[-1] = True
    clicks = episodes.clicks.view(np.int8)  # the MultiBinary space's dtype; values are 0/1
    for i in range(episodes.num_episodes):
        infos: dict[str, np.ndarray] = {"source": np.full(horizon + 1, episodes.sources[i], dtype=np.int16)}
        if episodes.actions is not None:
            infos["policy_action"] = np.concatenate(
                [np.full((1, episodes.actions.shape[2]), np.nan, dtype=np.float32), episodes.actions[i]]
            )
        for field in ORACLE_FIELDS:
            value = getattr(episodes, field)
            if value is not None:
                infos[_INFO_NAMES[field]] = value[i]
        yield EpisodeBuffer(
            id=i,
            observations={"slate": episodes.slates[i], "clicks": clicks[i]},
            actions=episodes.slates[i, 1:],
            rewards=episodes.rewards[i],
            terminations=terminations,
            truncations=truncations,
            infos=infos,
        )


def _description(episodes: OfflineEpisodes, extra: str | None) -> str:
    counts = ", ".join(f"{name} {count:,}" for name, count in episodes.source_counts().items())
    text = (
        f"slate-rl offline dataset on {episodes.metadata['env']}: {episodes.num_episodes:,} episodes of "
        f"{episodes.horizon} steps (sources: {counts}). Observations are the shown slate and its clicks, from the "
        "reset observation on; the action is the next slate; the reward is its clicks. Episodes end by "
        "truncation at the fixed horizon (terminations are all False). infos['source'] holds each episode's "
        "source code; the names and the full metadata are in metadata['slate_rl']."
    )
    return f"{text} {extra}" if extra else text


def _move_into_place(tmp_root: Path, root: Path, ds_id: str) -> None:
    """Move the finished dataset folder from the temporary root to `root`, with Minari's namespace files."""
    parts = ds_id.split("/")[:-1]
    for depth in range(1, len(parts) + 1):
        namespace = Path(*parts[:depth])
        (root / namespace).mkdir(parents=True, exist_ok=True)
        for marker in (tmp_root / namespace).glob("namespace_metadata.json"):
            if not (root / namespace / marker.name).exists():
                shutil.copy2(marker, root / namespace / marker.name)
    os.replace(tmp_root / ds_id, root / ds_id)


def find_minari(path: PathLike) -> Path:
    """The `data` folder of the one Minari dataset at `path` (a root folder, a dataset folder or its data folder)."""
    path = Path(path)
    if (path / "metadata.json").is_file():
        return path
    if (path / "data" / "metadata.json").is_file():
        return path / "data"
    found = sorted(p.parent for p in path.rglob("data/metadata.json")) if path.is_dir() else []
    if len(found) == 1:
        return found[0]
    if not found:
        raise SlateRLError(f"no Minari dataset (data/metadata.json) under {str(path)!r}")
    names = ", ".join(str(p.parent.relative_to(path)) for p in found)
    raise SlateRLError(f"{str(path)!r} holds several Minari datasets ({names}); pass the folder of one of them")


def read_minari(path: PathLike, oracle: bool = True) -> OfflineEpisodes:
    """Load a slate-rl Minari dataset back into `OfflineEpisodes` (with its oracle arrays if `oracle`)."""
    import minari

    data_path = find_minari(path)
    dataset = minari.MinariDataset(data_path)
    stored = dict(dataset.storage.metadata.get(METADATA_KEY) or {})
    fmt = stored.pop("format", {})
    stored.pop("return_stats", None)
    if fmt.get("name") != FORMAT_NAME:
        raise SlateRLError(
            f"the Minari dataset {dataset.id!r} was not written by slate-rl (no "
            f"metadata[{METADATA_KEY!r}] of format {FORMAT_NAME!r})"
        )
    if int(fmt.get("version", 0)) > FORMAT_VERSION:
        raise SlateRLError(
            f"{dataset.id!r} uses format version {fmt['version']}; this slate-rl reads up to "
            f"{FORMAT_VERSION}: upgrade slate-rl"
        )
    columns: dict[str, list[np.ndarray]] = {}
    for episode in dataset.iterate_episodes():
        _check_episode(dataset.id, episode, int(fmt["horizon"]))
        infos = episode.infos
        row = {
            "slates": episode.observations["slate"],
            "clicks": episode.observations["clicks"].view(np.uint8),
            "rewards": episode.rewards,
            "sources": infos["source"][:1],
        }
        if "policy_action" in infos:
            row["actions"] = infos["policy_action"][1:]
        if oracle:
            row.update({field: infos[key] for field, key in _INFO_NAMES.items() if key in infos})
        for key, value in row.items():
            columns.setdefault(key, []).append(value)
    arrays = {key: np.stack(values) for key, values in columns.items()}
    arrays["sources"] = arrays["sources"][:, 0]
    return OfflineEpisodes(**arrays, source_names=fmt["source_names"], metadata=stored)


def _check_episode(ds_id: str, episode: Any, horizon: int) -> None:
    if len(episode) != horizon or episode.terminations.any() or not episode.truncations[-1]:
        raise SlateRLError(
            f"episode {episode.id} of {ds_id!r} is not a complete {horizon}-step episode ending by truncation"
        )
    if not np.array_equal(episode.actions, episode.observations["slate"][1:]):
        raise SlateRLError(f"episode {episode.id} of {ds_id!r}: actions differ from the next observations' slates")
