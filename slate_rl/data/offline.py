"""Offline RL episodes in memory: `OfflineEpisodes`, the container every offline format is written from and read into.

Layout (E episodes, horizon T, slate size R; all arrays contiguous numpy):

    slates           int16   (E, T+1, R)   o_t's slate; row 0 is the reset observation (the fixed initial slate)
    clicks           uint8   (E, T+1, R)   o_t's clicks (0/1); row 0 holds the clicks on the initial slate
    rewards          float32 (E, T)        r_t = clicks[:, t+1].sum(): the clicks the slate chosen after o_t received
    sources          int16   (E,)          code of the policy that produced each episode, into `source_names`
    source_names     tuple of str          e.g. ('expert', 'expert_noisy', 'medium', 'random')
    actions          float32 (E, T, A)     optional policy action a_t (e.g. the GeMS latent) chosen after seeing o_t
    user_states      float32 (E, T+1, D)   optional oracle: the user vector after o_t was generated (drift included)
    bored            bool    (E, T+1, K)   optional oracle: the topics the user was bored of when o_t's clicks fell
    item_relevances  float16 (E, T+1, N)   optional oracle, large (10,000 episodes: 2 GB): every item's relevance
                                           for the user after o_t
    metadata         dict (JSON-serialisable)

Semantics. The slate action a_t is the slate of the next observation, `slates[:, t+1]`; the episode ends by
**truncation** at the fixed horizon (nothing terminates). A policy acting at t has seen o_0..o_t, so a belief state
for a_t must be built from rows 0..t only.

Metadata conventions (the `collect` stage fills them):

    env              preset name, e.g. 'focused_topdown' (needed to write Minari, which records `SlateRL/<env>-v0`)
    env_params       the simulator's parameters (EnvParams.as_dict())
    embeddings       fingerprint of the item table
    reference_scores {'random': mean return, 'expert': mean return} on the same environment (score normalisation)
    sources          {source name: {model version / alias / run id, epsilon, seed, ...}}
    anything else    per-collection facts (seed, sim_seed, ...); `mix` moves them into each part's `sources` entries
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from slate_rl.errors import SlateRLError

ORACLE_FIELDS = ("user_states", "bored", "item_relevances")
OPTIONAL_FIELDS = ("actions", *ORACLE_FIELDS)
# Keys that describe the environment itself: every part of a mix must agree on them.
ENV_KEYS = ("env", "env_params", "embeddings")
# Keys the writers add to the stored metadata (recomputed on every write, removed again on loading).
RESERVED_KEYS = ("format", "return_stats")
SOURCE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

_DTYPES = {
    "slates": np.int16,
    "clicks": np.uint8,
    "rewards": np.float32,
    "sources": np.int16,
    "actions": np.float32,
    "user_states": np.float32,
    "bored": np.bool_,
    "item_relevances": np.float16,
}


def json_safe(value: Any, where: str = "metadata") -> Any:
    """`value` as plain JSON types (numpy scalars and arrays converted); SlateRLError naming what cannot be stored."""

    def default(obj: Any) -> Any:
        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
        raise TypeError(type(obj).__name__)

    try:
        return json.loads(json.dumps(value, default=default, allow_nan=True))
    except (TypeError, ValueError) as exc:
        raise SlateRLError(
            f"{where} must be JSON-serialisable (plain numbers, strings, lists, dicts); "
            f"it holds a {exc}: convert it before building the dataset"
        ) from exc


@dataclass(eq=False)
class OfflineEpisodes:
    """Complete episodes of one environment, with per-episode source labels (see the module docs for the layout)."""

    slates: np.ndarray
    clicks: np.ndarray
    rewards: np.ndarray
    sources: np.ndarray
    source_names: Sequence[str]
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
    actions: np.ndarray | None = None
    user_states: np.ndarray | None = None
    bored: np.ndarray | None = None
    item_relevances: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.source_names = tuple(str(name) for name in self.source_names)
        self.metadata = json_safe(dict(self.metadata))
        for name in ("slates", "clicks", "rewards", "sources", *OPTIONAL_FIELDS):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, np.ascontiguousarray(value))
        self._validate()

    # ------------------------------------------------------------------ sizes
    @property
    def num_episodes(self) -> int:
        return int(self.slates.shape[0])

    @property
    def horizon(self) -> int:
        """Steps per episode (T); every episode has T+1 observations."""
        return int(self.rewards.shape[1])

    @property
    def slate_size(self) -> int:
        return int(self.slates.shape[2])

    @property
    def num_items(self) -> int | None:
        """Catalogue size from metadata['env_params'], if recorded."""
        value = self.metadata.get("env_params", {}).get("num_items")
        return None if value is None else int(value)

    @property
    def has_oracle(self) -> bool:
        return any(getattr(self, name) is not None for name in ORACLE_FIELDS)

    # ------------------------------------------------------------------ views
    def returns(self) -> np.ndarray:
        """Undiscounted return (total clicks) of every episode, float64 (E,)."""
        return self.rewards.sum(axis=1, dtype=np.float64)

    def source_counts(self) -> dict[str, int]:
        counts = np.bincount(self.sources, minlength=len(self.source_names))
        return {name: int(count) for name, count in zip(self.source_names, counts, strict=True)}

    def return_stats(self) -> dict[str, Any]:
        """Mean / std / min / median / max of the returns, overall and per source."""
        returns = self.returns()
        stats: dict[str, Any] = {"all": _summary(returns), "by_source": {}}
        for code, name in enumerate(self.source_names):
            mine = returns[self.sources == code]
            if mine.size:
                stats["by_source"][name] = _summary(mine)
        return stats

    def select(self, indices: np.ndarray) -> OfflineEpisodes:
        """The episodes at `indices` (a copy), with the same source names and metadata."""
        indices = np.asarray(indices, dtype=np.int64)
        taken = {name: getattr(self, name)[indices] for name in ("slates", "clicks", "rewards", "sources")}
        optional = {name: getattr(self, name)[indices] for name in OPTIONAL_FIELDS if getattr(self, name) is not None}
        return OfflineEpisodes(**taken, **optional, source_names=self.source_names, metadata=self.metadata)

    # ------------------------------------------------------------------ checks
    def _validate(self) -> None:
        for name, dtype in _DTYPES.items():
            value = getattr(self, name)
            if value is not None and value.dtype != dtype:
                raise SlateRLError(
                    f"OfflineEpisodes.{name} must have dtype {np.dtype(dtype).name}, got "
                    f"{value.dtype}: cast it with .astype(np.{np.dtype(dtype).name})"
                )
        if self.slates.ndim != 3:
            raise SlateRLError(f"slates must have shape (episodes, horizon + 1, slate_size), got {self.slates.shape}")
        n, steps, size = self.slates.shape
        if n < 1 or steps < 2:
            raise SlateRLError(f"need at least one episode of at least one step, got slates {self.slates.shape}")
        horizon = steps - 1
        expected = {"clicks": (n, steps, size), "rewards": (n, horizon), "sources": (n,)}
        if self.actions is not None:
            expected["actions"] = (n, horizon, self.actions.shape[-1] if self.actions.ndim == 3 else -1)
        for name in ORACLE_FIELDS:
            value = getattr(self, name)
            if value is not None:
                expected[name] = (n, steps, value.shape[-1] if value.ndim == 3 else -1)
        for name, shape in expected.items():
            if tuple(getattr(self, name).shape) != shape:
                raise SlateRLError(
                    f"OfflineEpisodes.{name} has shape {getattr(self, name).shape}, expected {shape} "
                    f"(from slates {self.slates.shape}: episodes, horizon + 1 observations, slate size)"
                )
        reserved = sorted(set(RESERVED_KEYS) & set(self.metadata))
        if reserved:
            raise SlateRLError(f"metadata keys {reserved} are reserved for the writers; rename them")
        self._validate_values()
        self._validate_sources()

    def _validate_values(self) -> None:
        if int(self.slates.min()) < 0:
            raise SlateRLError(
                "slates hold negative item ids: record the slate the simulator returns in obs['slate'] "
                "(oracle placeholders -1 already filled), not the policy's request"
            )
        num_items = self.num_items
        if num_items is not None and int(self.slates.max()) >= num_items:
            raise SlateRLError(f"slates hold item id {int(self.slates.max())} but the catalogue has {num_items} items")
        if int(self.clicks.max()) > 1:
            raise SlateRLError("clicks must be 0/1")
        expected = self.clicks[:, 1:].sum(axis=2, dtype=np.float32)
        if not np.array_equal(self.rewards, expected):
            raise SlateRLError(
                "rewards[:, t] must equal clicks[:, t + 1].sum() (the clicks on the slate chosen after "
                "observation t); the arrays are misaligned by a step or come from different episodes"
            )

    def _validate_sources(self) -> None:
        names = self.source_names
        if not names or len(set(names)) != len(names):
            raise SlateRLError(f"source_names must be non-empty and distinct, got {list(names)}")
        bad = [name for name in names if not SOURCE_NAME.match(name)]
        if bad:
            raise SlateRLError(
                f"source names {bad} must start with a letter or digit and use only letters, digits, "
                "'_', '.' and '-' (they become metric names)"
            )
        if int(self.sources.min()) < 0 or int(self.sources.max()) >= len(names):
            raise SlateRLError(f"sources must be codes in [0, {len(names) - 1}] into source_names {list(names)}")


def _summary(values: np.ndarray) -> dict[str, float]:
    std = float(values.std(ddof=1)) if values.size > 1 else 0.0
    return {
        "count": int(values.size),
        "mean": float(values.mean()),
        "std": std,
        "min": float(values.min()),
        "median": float(np.median(values)),
        "max": float(values.max()),
    }
