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
    """The registered display name of a method id (the id itself for a method no longer registered); a row of one
    variant of a method, 'sac_gems [gamma=0.9]', keeps its variant: 'SAC+GeMS [gamma=0.9]'."""
    base, sep, variant = method.partition(" [")
    try:
        display = get_method(base).display
    except SlateRLError:
        display = base
    return display + sep + variant


def is_privileged(method: str) -> bool:
    """Whether a registered method uses privileged simulator information (its rows come first in the table)."""
    return method in method_ids() and get_method(method).privileged


def base_method(row: str) -> str:
    """The method id of a table row ('sac_gems' for 'sac_gems [gamma=0.9]')."""
    return row.partition(" [")[0]


def variant_row(method: str, variant: Iterable[tuple[str, str]]) -> str:
    """The row of a variant of `method`, e.g. 'sac_gems [gamma=0.9]' for (('agent.gamma', '0.9'),): parameters by
    their last name part; the method id alone for no variant."""
    fields = param_list(variant)
    return f"{method} [{fields}]" if fields else method


def param_list(pairs: Iterable[tuple[str, str]]) -> str:
    """(param, value) pairs as a label shows them, by the params' last name part: 'gamma=0.9, episodes=20000'."""
    return ", ".join(f"{name.rpartition('.')[2]}={value}" for name, value in pairs)


def row_order(rows: Iterable[str]) -> tuple[str, ...]:
    """The distinct rows in the registry's order of their methods (the paper's rows; methods no longer registered
    after, sorted); the rows of one method's variants together, its plain row first."""
    known = method_ids()

    def position(row: str) -> tuple:
        base = base_method(row)
        return (known.index(base) if base in known else len(known), base, row != base, row)

    return tuple(sorted(set(rows), key=position))


def env_name(env: str) -> str:
    """The paper's display name of an environment id (the id itself for an environment the paper does not have)."""
    return ENV_NAMES.get(env, env)


def paper_order(ids: Iterable[str], known: Sequence[str]) -> tuple[str, ...]:
    """The distinct `ids` with the `known` ones first in their given order, then the others sorted."""
    present = set(ids)
    return tuple(k for k in known if k in present) + tuple(sorted(present.difference(known)))
