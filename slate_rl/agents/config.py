"""Hyper-parameters of the agents; defaults are the paper's (the protocol's counts are in `slate_rl.protocol`)."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from slate_rl.errors import SlateRLError
from slate_rl.precision import check_precision

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")


def with_overrides(config: T, overrides: dict[str, Any] | None) -> T:
    """A copy of a config dataclass with `overrides` applied, each value checked against its field's type (an int
    is taken for a float) and the common ranges; unknown keys are named in the error with the valid ones."""
    if not overrides:
        return config
    types = typing.get_type_hints(type(config))
    known = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise SlateRLError(
            f"unknown hyper-parameter(s) {', '.join(unknown)} (--set); valid ones: {', '.join(sorted(known))}"
        )
    checked = {name: _typed(name, value, types[name]) for name, value in overrides.items()}
    for name, value in checked.items():
        _check_range(name, value)
    return dataclasses.replace(config, **checked)


def _typed(name: str, value: Any, kind: Any) -> Any:
    """`value` as a value of the field type `kind`, or SlateRLError naming the field, the value and the type."""
    if kind is float and isinstance(value, str):  # YAML reads '1e-3' as a string
        with contextlib.suppress(ValueError):
            value = float(value)
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind in (bool, str) and isinstance(value, kind):
        return value
    if kind not in (float, int, bool, str):  # a nested config (belief): checked by its own class
        return value
    expected = {float: "a number", int: "a whole number", bool: "true or false", str: "text"}[kind]
    raise SlateRLError(f"hyper-parameter {name} must be {expected} (got {value!r}); e.g. --set {name}=<value>")


# name -> (lowest, highest, whether the bounds are allowed) for the hyper-parameters every method names alike
_RANGES: dict[str, tuple[float, float, bool, bool]] = {
    "gamma": (0.0, 1.0, True, True),
    "tau": (0.0, 1.0, False, True),
    "alpha": (0.0, math.inf, True, False),
    "epsilon_start": (0.0, 1.0, True, True),
    "epsilon_end": (0.0, 1.0, True, True),
    "epsilon_decay": (0.0, math.inf, False, False),
}
_POSITIVE_INTS = ("hidden", "batch_size", "capacity", "k", "batch_episodes", "item_dim", "hidden_dim")


def _check_range(name: str, value: Any) -> None:
    """SlateRLError when a hyper-parameter that every method names alike lies outside its meaningful range."""
    if name.endswith("lr") and isinstance(value, float) and not value > 0:
        raise SlateRLError(f"hyper-parameter {name} must be > 0 (got {value})")
    if name in _POSITIVE_INTS and isinstance(value, int) and value < 1:
        raise SlateRLError(f"hyper-parameter {name} must be >= 1 (got {value})")
    if name in _RANGES and isinstance(value, float):
        low, high, low_in, high_in = _RANGES[name]
        if not ((low <= value if low_in else low < value) and (value <= high if high_in else value < high)):
            bounds = f"{'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}"
            raise SlateRLError(f"hyper-parameter {name} must lie in {bounds} (got {value})")


@dataclass(frozen=True)
class BeliefConfig:
    """GRU belief: item embedding size, hidden (= belief state) size."""

    item_dim: int = 20
    hidden_dim: int = 20


# fused_update: run the update on the fused CPU kernels with hand-derived gradients (faster on CPU, the same results
# up to float rounding) instead of the plain autograd update; refused on other devices.
# precision (SAC family): 'fp32' (default) or 'bf16': the update's forward passes (belief GRUs, critic and actor
# losses) under bfloat16 autocast, parameters, optimiser states and losses in fp32 (`slate_rl.precision`); acting
# and evaluation stay fp32. Not with fused_update (its kernels are fp32).
# REFERENCE_SWITCHES: the bool fields of a config whose True reproduces a behaviour of the reference code (what
# train_online's reference_bugs turns on; a new switch joins it by being listed there).
# reference_pairing (B1): True credits transition t with the first click of obs_t as the reference does; False
# (default) with obs_{t+1}, the observation its action produced (SlateQ, REINFORCE and WkNN's critic input).
# reference_terminal_end (SAC family, SlateQ): True treats the last transition of an episode as terminal, as the
# reference does (no bootstrap in its TD target); False (default) as a truncation by the time limit: the target
# bootstraps from the belief after the episode's final observation.


@dataclass(frozen=True)
class SACConfig:
    """SAC family (TopK, GeMS, WkNN).

    reference_temperature (Q9): True reproduces the reference (log alpha starts at 0 and the initial `alpha` is used
    only in the first update; the temperature loss multiplies alpha, not log alpha; the log-probability omits the
    log-scale Jacobian of the action box). False: log alpha starts at log(alpha), loss on log alpha, Jacobian kept.
    """

    gamma: float = 0.8
    tau: float = 0.002
    q_lr: float = 1e-3
    pi_lr: float = 3e-3
    alpha_lr: float = 1e-3
    alpha: float = 0.2
    auto_entropy: bool = True
    hidden: int = 256
    batch_size: int = 20
    capacity: int = 10_000
    reference_temperature: bool = True
    reference_terminal_end: bool = False
    fused_update: bool = False
    precision: str = "fp32"
    belief: BeliefConfig = BeliefConfig()

    REFERENCE_SWITCHES: ClassVar[tuple[str, ...]] = ("reference_temperature", "reference_terminal_end")

    def __post_init__(self) -> None:
        check_precision(self.precision)
        if self.fused_update and self.precision != "fp32":
            raise SlateRLError(
                f"fused_update=true runs fp32 kernels and cannot train in precision={self.precision}; drop "
                "fused_update (the plain update runs under bf16 autocast) or use precision=fp32"
            )


@dataclass(frozen=True)
class WkNNConfig(SACConfig):
    """SAC+WkNN: k nearest items per slot. refine_fill: what the critic sees in the slots after the one being
    chosen during the greedy refinement: 'candidate' (the reference: the candidate repeated) or 'proto' (the
    proto-action's own slot queries).

    reference_item_table (B2): True: the kNN items are a frozen copy of the critic belief's initial (random) item
    table, as in the reference (the MF table is then unused); False: the given (MF) table.
    reference_knn_layout (B3): True: the kNN decoder reads slot r's query from proto-action components r, r + R,
    r + 2R, ... (the reference's interleaved layout; the critic and the action box stay slot-major); False: slot r's
    query is the contiguous block r*D .. (r+1)*D - 1, the layout of the critic input and the box.
    reference_refinement (B4): True: the greedy refinement scores candidates with the target Q1 fed the actor's
    belief state, when acting and in the critic targets (only the actor encoder is stepped while acting); False:
    with the critic's belief state, the online Q1 when acting and the target Q1 in the targets.
    """

    k: int = 10
    refine_fill: str = "candidate"
    reference_pairing: bool = False
    reference_item_table: bool = False
    reference_knn_layout: bool = False
    reference_refinement: bool = False

    REFERENCE_SWITCHES: ClassVar[tuple[str, ...]] = (
        *SACConfig.REFERENCE_SWITCHES,
        "reference_pairing",
        "reference_item_table",
        "reference_knn_layout",
        "reference_refinement",
    )


@dataclass(frozen=True)
class SlateQConfig:
    """SlateQ (QL-TT-TS). reference_relevances (Q5): True reproduces the reference (acting on the mis-sliced
    boredom mask, targets on the raw user state); False: the correct effective user (bored topics zeroed) in both.
    batch_divpen (Q6): True reproduces the reference's batch-wide diversity-penalty decision in the targets; False
    decides it per next slate."""

    gamma: float = 0.8
    tau: float = 0.002
    lr: float = 1e-3
    hidden: int = 256
    batch_size: int = 20
    capacity: int = 10_000
    epsilon_start: float = 1.0
    epsilon_end: float = 0.01
    epsilon_decay: float = 1000.0
    reference_relevances: bool = False
    batch_divpen: bool = False
    reference_pairing: bool = False
    reference_terminal_end: bool = False
    fused_update: bool = False
    belief: BeliefConfig = BeliefConfig()

    REFERENCE_SWITCHES: ClassVar[tuple[str, ...]] = (
        "reference_relevances",
        "batch_divpen",
        "reference_pairing",
        "reference_terminal_end",
    )


@dataclass(frozen=True)
class ReinforceConfig:
    """REINFORCE+SoftMax (capacity 1 / batch 1 in the paper: each update trains on one episode)."""

    gamma: float = 0.8
    lr: float = 3e-3
    hidden: int = 256
    reference_pairing: bool = False
    fused_update: bool = False
    belief: BeliefConfig = BeliefConfig()

    REFERENCE_SWITCHES: ClassVar[tuple[str, ...]] = ("reference_pairing",)
