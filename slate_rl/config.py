"""Preset loading: the named environments (the paper's six and harder variants) and the `quick` / `paper` stage
presets (YAML under `experiments/`)."""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import sys
from pathlib import Path
from typing import Any, ClassVar, Iterable

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
    """Names of all preset environments: the paper's six in its order, then the variants."""
    return tuple(_read_yaml("envs.yaml")["environments"])


def paper_env_names() -> tuple[str, ...]:
    """The six environments of the paper's results table, in its column order (what 'all' means in comparisons)."""
    return tuple(_read_yaml("envs.yaml")["paper_environments"])


def resolve_env_list(text: str) -> list[str]:
    """'all' (or '') -> the paper's six environments; else the comma-separated names, each checked."""
    if text.strip() in ("", "all"):
        return list(paper_env_names())
    return [check_env_name(name.strip()) for name in text.split(",") if name.strip()]


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


def parse_env_params(items: Iterable[str]) -> dict[str, Any]:
    """Simulator overrides from `--env-param KEY=VALUE` values; one value may hold several, 'KEY=VALUE,KEY=VALUE'
    (as MLflow's `-P env_param=...` passes them). Empty values are ignored. Keys are checked by the stage config."""
    parts = [part for item in items for part in re.split(r",(?=\s*[A-Za-z_]\w*\s*=)", item) if part.strip()]
    return parse_assignments(parts, "--env-param")


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
        """Flat dict for MLflow params (dict values are expanded as 'name.key'). Simulator overrides (`env_params`)
        are left out: the stages log them as part of the environment spec (`env.<key>`)."""
        flat: dict[str, Any] = {}
        for key, value in dataclasses.asdict(self).items():
            if key == "env_params":
                continue
            if isinstance(value, dict):
                flat.update({f"{key}.{k}": v for k, v in value.items()})
            else:
                flat[key] = value
        return flat

    def changed_fields(self, exclude: Iterable[str] = ()) -> dict[str, Any]:
        """The fields whose value differs from the field's declared default, flat like `as_params` (the required
        `env` and `preset` always count). Lineage identities are built from these, so that adding a field with a
        default leaves the identity of every existing configuration -- and the finished runs found by it -- as it
        was. The price: changing a field's default changes what its runs mean, so treat it as a new field (a new
        name), never as an edit. An int given for a float field counts as that float."""
        changed: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            if field.name in exclude:
                continue
            value = getattr(self, field.name)
            if isinstance(value, dict):  # dict fields (empty by default): each entry counts
                changed.update({f"{field.name}.{k}": v for k, v in value.items()})
                continue
            default = field.default
            if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if default is dataclasses.MISSING or value != default:
                changed[field.name] = value
        return changed


def _required(cls: type, name: str) -> bool:
    field = {f.name: f for f in dataclasses.fields(cls)}[name]
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
