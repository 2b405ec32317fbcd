"""Method and environment ids of the GeMS paper (WSDM 2023): display names and the order of its results table."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

# Rows of the paper's table: the methods that use privileged simulator information first (they exist only inside
# the simulator), then the others, ending with the paper's own method.
METHOD_NAMES: dict[str, str] = {
    "short_term_oracle": "Short-term oracle",
    "sac_topk_ideal": "SAC+TopK (ideal)",
    "slateq": "SlateQ",
    "random": "Random",
    "reinforce_softmax": "REINFORCE+SoftMax",
    "sac_wknn": "SAC+WkNN",
    "sac_topk_mf": "SAC+TopK (MF)",
    "sac_gems": "SAC+GeMS",
}
PRIVILEGED_METHODS: frozenset[str] = frozenset({"short_term_oracle", "sac_topk_ideal", "slateq"})

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
    """The paper's display name of a method id (the id itself for a method the paper does not have)."""
    return METHOD_NAMES.get(method, method)


def env_name(env: str) -> str:
    """The paper's display name of an environment id (the id itself for an environment the paper does not have)."""
    return ENV_NAMES.get(env, env)


def paper_order(ids: Iterable[str], known: Sequence[str]) -> tuple[str, ...]:
    """The distinct `ids` with the `known` ones first in their given order, then the others sorted."""
    present = set(ids)
    return tuple(k for k in known if k in present) + tuple(sorted(present.difference(known)))
