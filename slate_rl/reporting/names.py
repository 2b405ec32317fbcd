"""Display names and table order: methods from the method registry (rows, in its order), environments of the GeMS
paper (WSDM 2023, columns)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from slate_rl.errors import SlateRLError
from slate_rl.methods import get_method, method_ids

# Columns of the paper's table: the three click-model / penalty families on focused, then on diffuse embeddings.
ENV_NAMES: dict[str, str] = {
    "focused_topdown": "TopDown-focused",
    "focused_mix": "Mixed-focused",
    "focused_divpen": "DivPen-focused",
    "diffuse_topdown": "TopDown-diffuse",
    "diffuse_mix": "Mixed-diffuse",
    "diffuse_divpen": "DivPen-diffuse",
}

RANDOM = "random"
ORACLE = "short_term_oracle"
GEMS = "sac_gems"


def method_name(method: str) -> str:
    """The registered display name of a method id (the id itself for a method no longer registered)."""
    try:
        return get_method(method).display
    except SlateRLError:
        return method


def is_privileged(method: str) -> bool:
    """Whether a registered method uses privileged simulator information (its rows come first in the table)."""
    return method in method_ids() and get_method(method).privileged


def method_order(ids: Iterable[str]) -> tuple[str, ...]:
    """The distinct method `ids` in the registry's order (the paper's rows), methods no longer registered last."""
    return paper_order(ids, method_ids())


def env_name(env: str) -> str:
    """The paper's display name of an environment id (the id itself for an environment the paper does not have)."""
    return ENV_NAMES.get(env, env)


def paper_order(ids: Iterable[str], known: Sequence[str]) -> tuple[str, ...]:
    """The distinct `ids` with the `known` ones first in their given order, then the others sorted."""
    present = set(ids)
    return tuple(k for k in known if k in present) + tuple(sorted(present.difference(known)))
