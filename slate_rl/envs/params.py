"""Typed simulator parameters (the TopicRec constructor arguments of the benchmark)."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from slate_rl.errors import SlateRLError

CLICK_MODELS = ("tdPBM", "mixPBM", "custom")


@dataclass(frozen=True)
class EnvParams:
    """Every parameter of the TopicRec simulator; defaults are the paper's common values (not the argparse ones)."""

    item_embeddings: str = "focused"  # 'focused' / 'diffuse' (generated) or a .pt / .npy file path
    click_model: str = "tdPBM"  # 'tdPBM', 'mixPBM' or 'custom' (general propensity matrix)
    diversity_penalty: float = 1.0
    num_items: int = 1000
    slate_size: int = 10
    num_topics: int = 10
    topic_size: int = 2
    episode_length: int = 100
    env_alpha: float = 1.0  # attractiveness multiplier; forced to 1.0 by tdPBM / mixPBM
    env_propensities: Sequence[float] | None = None  # slate_size x (slate_size + 1) values, 'custom' model only
    rel_threshold: float | None = None
    prop_threshold: float | None = None
    diversity_threshold: int = 4
    click_only_once: bool = False
    env_offset: float = 0.28
    env_slope: float = 100.0
    env_omega: float = 0.9
    recent_items_maxlen: int = 10
    short_term_boost: float = 1.0
    boredom_threshold: int = 5
    boredom_moving_window: int = 5
    bored_timeout: int = 5
    embedding_exponent: float = 1.0
    reference_quirks: bool = True  # reproduce the reference's Q2-Q4 (see docs/fidelity.md)

    @property
    def embedding_dim(self) -> int:
        return self.num_topics * self.topic_size

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> EnvParams:
        """Build from a mapping, naming any unknown key or value of the wrong type (ints are taken as floats)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SlateRLError(
                f"unknown simulator parameter(s) {', '.join(unknown)}; valid ones: {', '.join(sorted(known))}"
            )
        params = cls(**{name: _typed(name, value) for name, value in values.items()})
        params.validate()
        return params

    def replace(self, **changes: Any) -> EnvParams:
        return EnvParams.from_dict({**dataclasses.asdict(self), **changes})

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        """Raise SlateRLError naming the first parameter that is out of range."""
        positive_ints = (
            "num_items",
            "slate_size",
            "num_topics",
            "topic_size",
            "episode_length",
            "recent_items_maxlen",
            "boredom_threshold",
            "boredom_moving_window",
            "bored_timeout",
        )
        for name in positive_ints:
            if int(getattr(self, name)) < 1:
                raise SlateRLError(f"simulator parameter {name} must be >= 1 (got {getattr(self, name)})")
        if self.slate_size > self.num_items:
            raise SlateRLError(f"slate_size ({self.slate_size}) cannot exceed num_items ({self.num_items})")
        if self.num_topics < self.slate_size and self.slate_size % self.num_topics:
            raise SlateRLError(
                f"with fewer topics than slots, slate_size ({self.slate_size}) must be a multiple of "
                f"num_topics ({self.num_topics}) to build the initial slate"
            )
        if self.click_model not in CLICK_MODELS:
            raise SlateRLError(f"unknown click_model {self.click_model!r}; choose one of: {', '.join(CLICK_MODELS)}")
        if self.click_model == "custom":
            expected = self.slate_size * (self.slate_size + 1)
            if self.env_propensities is None or len(self.env_propensities) != expected:
                raise SlateRLError(
                    "click_model 'custom' needs env_propensities with slate_size x (slate_size + 1) = "
                    f"{expected} values"
                )
        if self.diversity_penalty <= 0:
            raise SlateRLError(f"diversity_penalty must be > 0 (got {self.diversity_penalty})")
        if not 0.0 <= self.env_omega <= 1.0:
            raise SlateRLError(f"env_omega must lie in [0, 1] (got {self.env_omega})")
        if self.embedding_exponent <= 0:
            raise SlateRLError(f"embedding_exponent must be > 0 (got {self.embedding_exponent})")


_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def _typed(name: str, value: Any) -> Any:
    """`value` checked against the type of parameter `name` (an int given for a float becomes a float)."""
    hint = typing.get_type_hints(EnvParams)[name]
    optional = type(None) in typing.get_args(hint)
    kind = next((a for a in typing.get_args(hint) if a is not type(None)), hint) if optional else hint
    if value is None and optional:
        return None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typing.get_origin(kind) is not None:  # Sequence[float]: a list of numbers
        if isinstance(value, (list, tuple)) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
        ):
            return [float(v) for v in value]
        expected = "a list of numbers"
    elif isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    else:
        expected = _TYPE_NAMES[kind]
    raise SlateRLError(f"simulator parameter {name} must be {expected}{' or null' if optional else ''} (got {value!r})")
