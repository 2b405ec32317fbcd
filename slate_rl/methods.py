"""The method registry: every method of slate-rl -- online agents, offline algorithms, baselines -- is one entry.

An entry says what the rest of the toolkit needs to know about a method: its id and display name, its family, whether
it uses privileged simulator information, which upstream artifacts it acts through, its hyper-parameter class and the
function that builds its agent. Command-line help, validation, report names, policy export and upstream resolution
all read this registry, so a new method is one agent file plus one `register_method` call:

    register_method(MethodSpec("my_method", "My method", "online", builder="my_package.agents:build_my_agent",
                               config="my_package.agents:MyConfig", needs=(Need.MF,)))

The builder is called as `builder(env, seed, config, inputs)`: `config` is an instance of the config class with the
run's overrides applied (None for a method without one) and `inputs` maps each of the method's needs to its artifact.
This module imports no torch: config classes and builders are imported only when an agent is built.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import re
from collections.abc import Callable, Collection
from typing import Any

from slate_rl.errors import SlateRLError

FAMILIES = ("online", "offline", "baseline")
ONLINE_FAMILIES = ("online", "baseline")  # trained (baselines: only tested) in the simulator by train_online


class Need(enum.Enum):
    """An upstream artifact a method acts through; the value names the train_online parameter that gives its run."""

    GEMS = "gems"  # the trained GeMS decoder, with its action bounds, of a pretrain_gems run
    MF = "mf"  # the MF item table of a train_mf run

    @property
    def description(self) -> str:
        return {
            Need.GEMS: "the trained GeMS decoder (a pretrain_gems run)",
            Need.MF: "the MF item table (a train_mf run)",
        }[self]


Reference = str | Callable[..., Any]  # "module:name", imported when first used, or the object itself


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """One method: `id` as in run names and tags, `display` as in tables, `family` (online, offline or baseline),
    `privileged` when it uses simulator internals, the upstream `needs`, the hyper-parameter `config` class (None:
    no hyper-parameters) and the agent `builder`."""

    id: str
    display: str
    family: str
    builder: Reference
    config: Reference | None = None
    privileged: bool = False
    needs: tuple[Need, ...] = ()

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9_]*", self.id):
            raise SlateRLError(f"method id {self.id!r} must be lower-case letters, digits and '_' (e.g. sac_gems)")
        if self.family not in FAMILIES:
            raise SlateRLError(f"method {self.id!r}: family must be one of {', '.join(FAMILIES)} (got {self.family!r})")
        if not all(isinstance(need, Need) for need in self.needs):
            raise SlateRLError(f"method {self.id!r}: needs must be Need members, e.g. (Need.MF,) (got {self.needs!r})")
        for name in ("builder", "config"):
            value = getattr(self, name)
            if isinstance(value, str) and not re.fullmatch(r"[\w.]+:\w+", value):
                raise SlateRLError(f"method {self.id!r}: {name} must look like 'package.module:name' (got {value!r})")

    def load_builder(self) -> Callable[..., Any]:
        """The agent builder, `builder(env, seed, config, inputs) -> Agent`."""
        return _load(self.builder)

    def load_config(self) -> type | None:
        """The hyper-parameter dataclass, or None for a method without hyper-parameters."""
        return None if self.config is None else _load(self.config)


def _load(reference: Reference) -> Any:
    if not isinstance(reference, str):
        return reference
    module, _, name = reference.partition(":")
    return getattr(importlib.import_module(module), name)


_AGENTS = "slate_rl.agents.methods"
_CONFIGS = "slate_rl.agents.config"
_OFFLINE = "slate_rl.offline"

# In the order of the paper's results table: the methods with privileged information first, the paper's own last.
_REGISTRY: dict[str, MethodSpec] = {
    spec.id: spec
    for spec in (
        MethodSpec(
            "short_term_oracle", "Short-term oracle", "baseline", f"{_AGENTS}:build_short_term_oracle", privileged=True
        ),
        MethodSpec(
            "sac_topk_ideal",
            "SAC+TopK (ideal)",
            "online",
            f"{_AGENTS}:build_sac_topk_ideal",
            f"{_CONFIGS}:SACConfig",
            privileged=True,
        ),
        MethodSpec(
            "slateq", "SlateQ", "online", f"{_AGENTS}:build_slateq", f"{_CONFIGS}:SlateQConfig", privileged=True
        ),
        MethodSpec("random", "Random", "baseline", f"{_AGENTS}:build_random"),
        MethodSpec(
            "reinforce_softmax",
            "REINFORCE+SoftMax",
            "online",
            f"{_AGENTS}:build_reinforce_softmax",
            f"{_CONFIGS}:ReinforceConfig",
        ),
        MethodSpec(
            "sac_wknn", "SAC+WkNN", "online", f"{_AGENTS}:build_sac_wknn", f"{_CONFIGS}:WkNNConfig", needs=(Need.MF,)
        ),
        MethodSpec(
            "sac_topk_mf",
            "SAC+TopK (MF)",
            "online",
            f"{_AGENTS}:build_sac_topk_mf",
            f"{_CONFIGS}:SACConfig",
            needs=(Need.MF,),
        ),
        MethodSpec(
            "sac_gems", "SAC+GeMS", "online", f"{_AGENTS}:build_sac_gems", f"{_CONFIGS}:SACConfig", needs=(Need.GEMS,)
        ),
        # offline algorithms (stage train_offline); they act through the ranker the run chooses, so they need no
        # upstream artifact of their own: a GeMS decoder when one is given, else TopK over the item table
        MethodSpec("bc", "BC", "offline", f"{_OFFLINE}.bc:build", f"{_OFFLINE}.bc:BCConfig"),
        MethodSpec("td3_bc", "TD3+BC", "offline", f"{_OFFLINE}.td3_bc:build", f"{_OFFLINE}.td3_bc:TD3BCConfig"),
        MethodSpec("iql", "IQL", "offline", f"{_OFFLINE}.iql:build", f"{_OFFLINE}.iql:IQLConfig"),
        MethodSpec("cql", "CQL", "offline", f"{_OFFLINE}.cql:build", f"{_OFFLINE}.cql:CQLConfig"),
    )
}


def method_ids(family: str | Collection[str] | None = None) -> tuple[str, ...]:
    """The registered ids in table order; only those of `family` (one family or several) when given."""
    families = FAMILIES if family is None else (family,) if isinstance(family, str) else tuple(family)
    return tuple(spec.id for spec in _REGISTRY.values() if spec.family in families)


def get_method(method_id: str, families: Collection[str] | None = None) -> MethodSpec:
    """The entry of `method_id`; raises naming every registered id when there is none, and when `families` is given
    and the method is of another family (e.g. an offline algorithm given to train_online)."""
    spec = _REGISTRY.get(method_id)
    if spec is None:
        choices = _REGISTRY if families is None else method_ids(families)
        raise SlateRLError(f"unknown method {method_id!r}; choose one of: {', '.join(choices)}")
    if families is not None and spec.family not in families:
        raise SlateRLError(
            f"method {method_id!r} is of the {spec.family} family, which does not run here; choose "
            f"one of: {', '.join(method_ids(families))}"
        )
    return spec


def register_method(spec: MethodSpec) -> MethodSpec:
    """Add `spec` after the registered methods; raises if its id is taken."""
    if spec.id in _REGISTRY:
        raise SlateRLError(f"method {spec.id!r} is already registered; unregister it first or pick another id")
    _REGISTRY[spec.id] = spec
    return spec


def unregister_method(method_id: str) -> MethodSpec:
    """Remove a registered method (e.g. one a test or notebook added); returns its entry."""
    return _REGISTRY.pop(get_method(method_id).id)
