"""Preset loading: the named environments (the paper's six and harder variants) and the `quick` / `paper` stage
presets.

The YAML files ship inside the package (slate_rl/presets/, which the source checkout also shows as `experiments/`).
A user overrides them without touching the package: $SLATE_RL_PRESETS names a folder of their own YAML files, and a
file there replaces the packaged file of the same name.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import sys
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import yaml

from slate_rl.errors import SlateRLError

if TYPE_CHECKING:
    if sys.version_info >= (3, 11):
        from importlib.resources.abc import Traversable
    else:
        from importlib.abc import Traversable

PRESETS = ("quick", "paper")
OVERRIDE_VARIABLE = "SLATE_RL_PRESETS"


def packaged_presets() -> Traversable:
    """The folder of preset files shipped inside the package."""
    return resources.files("slate_rl") / "presets"


def override_dir() -> Path | None:
    """The user's folder of preset files ($SLATE_RL_PRESETS), or None when the variable is unset or empty."""
    folder = os.environ.get(OVERRIDE_VARIABLE, "")
    if not folder:
        return None
    path = Path(folder).expanduser()
    known = sorted(item.name for item in packaged_presets().iterdir() if item.name.endswith(".yaml"))
    if not path.is_dir():
        raise SlateRLError(
            f"{OVERRIDE_VARIABLE}={folder!r} is not a folder; point it at a folder holding your own "
            f"copies of any of {', '.join(known)}, or unset it to use the packaged presets"
        )
    unknown = sorted(
        item.name for item in path.iterdir() if item.suffix in (".yaml", ".yml") and item.name not in known
    )
    if unknown:
        raise SlateRLError(
            f"{OVERRIDE_VARIABLE}: {', '.join(unknown)} in {path} would replace no preset file; "
            f"name your copies like the packaged ones: {', '.join(known)}"
        )
    return path


def preset_file(name: str) -> Traversable:
    """Preset file `name`: the user's copy in $SLATE_RL_PRESETS if there is one, else the packaged one."""
    folder = override_dir()
    if folder is not None and (folder / name).is_file():
        return folder / name
    packaged = packaged_presets() / name
    if not packaged.is_file():
        raise SlateRLError(
            f"the preset file {name} is missing from the installed package ({packaged}); reinstall slate-rl"
        )
    return packaged


def _read_yaml(name: str) -> dict[str, Any]:
    return _parse(name, os.environ.get(OVERRIDE_VARIABLE, ""))


@functools.cache
def _parse(name: str, override: str) -> dict[str, Any]:
    """Preset file `name` parsed once per value of the override variable (`override` is only the cache key)."""
    return yaml.safe_load(preset_file(name).read_text()) or {}


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
        raise SlateRLError(
            f"unknown item-embedding table {kind!r}; choose one of {', '.join(seeds)} or give a file path"
        )
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


def parse_env_params(items: Iterable[str], what: str = "--env-param") -> dict[str, Any]:
    """Simulator overrides from `--env-param KEY=VALUE` values (or other `what` options of that form); one value
    may hold several, 'KEY=VALUE,KEY=VALUE' (as MLflow's `-P env_param=...` passes them). Empty values are ignored.
    Keys are checked by the stage config."""
    parts = [part for item in items for part in re.split(r",(?=\s*[A-Za-z_]\w*\s*=)", item) if part.strip()]
    return parse_assignments(parts, what)


@dataclasses.dataclass
class StageConfig:
    """Base of the typed stage configs: preset values, then explicit overrides, then validation."""

    stage: ClassVar[str] = ""
    env: str
    preset: str

    @classmethod
    def resolve(cls, env: str, preset: str, **overrides: Any) -> StageConfig:
        check_env_name(env)
        values = resolve(preset, cls.stage, overrides)
        known = {f.name for f in dataclasses.fields(cls)} - {"env", "preset"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SlateRLError(
                f"{cls.stage}: unknown parameter(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}"
            )
        missing = sorted(name for name in known if name not in values and _required(cls, name))
        if missing:
            raise SlateRLError(
                f"{cls.stage}: no value for {', '.join(missing)} in preset {preset!r}; pass them explicitly"
            )
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
