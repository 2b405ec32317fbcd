"""The environment spec: which simulator a run played or learned from, in a form runs can record and compare.

A spec is the preset environment's name, the simulator parameters that differ from that preset, and the fingerprint
of the item-embedding table's values (never its path: the same table at two paths is the same simulator).
Only overrides enter lineage keys, so a preset's values, like a config field's default, must never be edited in
place (finished runs would then claim the new values): add a new named environment instead.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import yaml

from slate_rl import config
from slate_rl.envs.embeddings import EmbeddingSource, fingerprint
from slate_rl.envs.params import EnvParams
from slate_rl.envs.topicrec import TopicRec
from slate_rl.errors import SlateRLError

PARAM_PREFIX = "env."
NAME_PARAM = "env.name"
TABLE_PARAM = "env.item_table"
TABLE_KEY = "item_embeddings"  # the EnvParams field that names the table: covered by the fingerprint instead


@dataclasses.dataclass(frozen=True)
class EnvSpec:
    """Preset name, parameter overrides (only those that differ from the preset) and item-table fingerprint."""

    name: str
    overrides: dict[str, Any]
    item_table: str

    @classmethod
    def of(cls, env: TopicRec) -> EnvSpec:
        """The spec of a built simulator (its name must be a preset environment)."""
        return cls.from_params_of(env.name, env.params.as_dict(), fingerprint(env.item_embeddings))

    @classmethod
    def from_params_of(cls, name: str, params: Mapping[str, Any], item_table: str) -> EnvSpec:
        """The spec of environment `name` run with the full simulator parameters `params`."""
        preset = _preset(name)
        actual = EnvParams.from_dict({**preset, **{k: v for k, v in params.items() if k != TABLE_KEY}}).as_dict()
        overrides = {k: v for k, v in sorted(actual.items()) if k != TABLE_KEY and v != preset[k]}
        return cls(name, overrides, item_table)

    @classmethod
    def build(
        cls, name: str, env_params: Mapping[str, Any] | None = None, item_embeddings: EmbeddingSource | None = None
    ) -> EnvSpec:
        """The spec of preset `name` with `env_params` overrides and an item table (default: the preset's)."""
        from slate_rl.envs import env_params as preset_params, resolve_item_embeddings

        params = preset_params(name, **dict(env_params or {}))
        table = resolve_item_embeddings(params, item_embeddings if item_embeddings not in ("", None) else None)
        return cls.from_params_of(name, params.as_dict(), fingerprint(table))

    def params(self) -> dict[str, Any]:
        """Every simulator parameter of the spec (the preset's values with the overrides), the table excepted."""
        values = {**_preset(self.name), **self.overrides}
        values.pop(TABLE_KEY, None)
        return values

    def as_params(self) -> dict[str, Any]:
        """MLflow params (and lineage identity entries): env.name, env.<overridden parameter>, env.item_table."""
        return {
            NAME_PARAM: self.name,
            **{PARAM_PREFIX + k: v for k, v in self.overrides.items()},
            TABLE_PARAM: self.item_table,
        }

    @classmethod
    def from_params(cls, logged: Mapping[str, str]) -> EnvSpec | None:
        """The spec a run logged with `as_params` (None when it logged none)."""
        if NAME_PARAM not in logged or TABLE_PARAM not in logged:
            return None
        overrides = {
            k[len(PARAM_PREFIX) :]: yaml.safe_load(v) if v != "" else None
            for k, v in logged.items()
            if k.startswith(PARAM_PREFIX) and k not in (NAME_PARAM, TABLE_PARAM)
        }
        return cls.from_params_of(logged[NAME_PARAM], overrides, logged[TABLE_PARAM])

    def as_dict(self) -> dict[str, Any]:
        """Plain form for payloads and metadata files (`from_dict` reads it back)."""
        return {"name": self.name, "overrides": dict(self.overrides), "item_table": self.item_table}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EnvSpec:
        return cls.from_params_of(str(data["name"]), dict(data["overrides"]), str(data["item_table"]))

    def differences(self, other: EnvSpec) -> list[tuple[str, Any, Any]]:
        """(what, value here, value in `other`) for the environment name, each simulator parameter and the item
        table where the two specs differ; empty when they describe the same simulator."""
        found: list[tuple[str, Any, Any]] = []
        if self.name != other.name:
            found.append(("environment", self.name, other.name))
        mine, theirs = self.params(), other.params()
        found += [(k, mine[k], theirs[k]) for k in sorted(mine) if mine[k] != theirs.get(k)]
        if self.item_table != other.item_table:
            found.append(("item table fingerprint", self.item_table, other.item_table))
        return found

    def summary(self) -> str:
        """One line, e.g. 'diffuse_mix boredom_threshold=3 table=1a2b...'."""
        return " ".join([self.name, *(f"{k}={v}" for k, v in self.overrides.items()), f"table={self.item_table}"])


def _preset(name: str) -> dict[str, Any]:
    try:
        return EnvParams.from_dict(config.env_preset(name)).as_dict()
    except SlateRLError as exc:
        raise SlateRLError(f"environment spec of {name!r}: {exc}") from exc
