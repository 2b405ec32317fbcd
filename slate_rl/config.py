"""Preset loading: the six paper environments and the `quick` / `paper` stage presets (YAML under `experiments/`)."""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
from pathlib import Path
from typing import Any, ClassVar

import yaml

from slate_rl.errors import SlateRLError

PRESETS = ("quick", "paper")


def experiments_dir() -> Path:
    """The folder holding the YAML presets: $SLATE_RL_EXPERIMENTS, the source checkout, or the installed copy."""
    candidates = []
    if os.environ.get("SLATE_RL_EXPERIMENTS"):
        candidates.append(Path(os.environ["SLATE_RL_EXPERIMENTS"]))
    candidates.append(Path(__file__).resolve().parent.parent / "experiments")
    candidates.append(Path(sys.prefix) / "share" / "slate-rl" / "experiments")
    for path in candidates:
        if (path / "envs.yaml").is_file():
            return path
    raise SlateRLError(
        "cannot find the presets folder 'experiments/' (looked in: "
        + ", ".join(str(p) for p in candidates)
        + "); install slate-rl from its source checkout (`pip install -e .`) or set SLATE_RL_EXPERIMENTS"
    )


@functools.lru_cache(maxsize=None)
def _read_yaml(name: str) -> dict[str, Any]:
    path = experiments_dir() / name
    with open(path) as handle:
        return yaml.safe_load(handle) or {}


def env_names() -> tuple[str, ...]:
    """Names of the preset environments, in the paper's order."""
    return tuple(_read_yaml("envs.yaml")["environments"])


def check_env_name(name: str) -> str:
    """Return `name` if it is a preset environment, else raise with the list of valid names."""
    names = env_names()
    if name not in names:
        raise SlateRLError(f"unknown environment {name!r}; choose one of: {', '.join(names)}")
    return name


def env_preset(name: str) -> dict[str, Any]:
    """All simulator parameters of a preset environment (common values merged with the environment's own)."""
    data = _read_yaml("envs.yaml")
    check_env_name(name)
    return {**data["common"], **data["environments"][name]}


def embedding_seed(kind: str) -> int:
    """Seed of the generated item-embedding table called `kind` ('focused' or 'diffuse')."""
    seeds = _read_yaml("envs.yaml")["embedding_seeds"]
    if kind not in seeds:
        raise SlateRLError(f"unknown item-embedding table {kind!r}; choose one of {', '.join(seeds)} or give a file path")
    return int(seeds[kind])


def stage_preset(preset: str, stage: str) -> dict[str, Any]:
    """Default parameters of `stage` under `preset` ('quick' or 'paper')."""
    if preset not in PRESETS:
        raise SlateRLError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    return dict(_read_yaml(f"{preset}.yaml").get(stage, {}))


def resolve(preset: str, stage: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """Preset values of `stage` updated with the overrides that were given (None means 'not given')."""
    config = stage_preset(preset, stage)
    config.update({key: value for key, value in overrides.items() if value is not None})
    return config


def parse_assignments(items: tuple[str, ...] | list[str], what: str = "override") -> dict[str, Any]:
    """['key=value', ...] -> {key: YAML-parsed value} (so '3' is an int, '0.5' a float, 'null' None)."""
    result: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SlateRLError(f"{what} {item!r} must look like key=value")
        result[key.strip()] = yaml.safe_load(value) if value.strip() else None
    return result


@dataclasses.dataclass
class StageConfig:
    """Base of the typed stage configs: preset values, then explicit overrides, then validation."""

    stage: ClassVar[str] = ""
    env: str
    preset: str

    @classmethod
    def resolve(cls, env: str, preset: str, **overrides: Any) -> "StageConfig":
        check_env_name(env)
        values = resolve(preset, cls.stage, overrides)
        known = {f.name for f in dataclasses.fields(cls)} - {"env", "preset"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SlateRLError(f"{cls.stage}: unknown parameter(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
        missing = sorted(name for name in known if name not in values and _required(cls, name))
        if missing:
            raise SlateRLError(f"{cls.stage}: no value for {', '.join(missing)} in preset {preset!r}; pass them explicitly")
        config = cls(env=env, preset=preset, **values)
        config.validate()
        return config

    def validate(self) -> None:
        """Raise SlateRLError naming the first out-of-range value."""

    def as_params(self) -> dict[str, Any]:
        """Flat dict for MLflow params (dict values are expanded as 'name.key')."""
        flat: dict[str, Any] = {}
        for key, value in dataclasses.asdict(self).items():
            if isinstance(value, dict):
                flat.update({f"{key}.{k}": v for k, v in value.items()})
            else:
                flat[key] = value
        return flat


def _required(cls: type, name: str) -> bool:
    field = {f.name: f for f in dataclasses.fields(cls)}[name]
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
