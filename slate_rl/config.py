"""Preset loading: the six paper environments and the `quick` / `paper` stage presets (YAML under `experiments/`)."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Any

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
