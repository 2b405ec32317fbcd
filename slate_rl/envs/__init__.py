"""The batched TopicRec simulator of the GeMS benchmark: `make(name)` builds a named environment (the paper's six,
ENV_NAMES, or a harder variant of `config.env_names()`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from slate_rl import config
from slate_rl.envs.embeddings import (
    EmbeddingSource,
    fingerprint,
    generate_item_embeddings,
    load_item_embeddings,
    validate_item_embeddings,
)
from slate_rl.envs.params import EnvParams
from slate_rl.envs.randomness import DEFAULT_SIM_SEED
from slate_rl.envs.topicrec import TopicRec

__all__ = [
    "DEFAULT_SIM_SEED",
    "ENV_NAMES",
    "EnvParams",
    "TopicRec",
    "env_params",
    "fingerprint",
    "generate_item_embeddings",
    "load_item_embeddings",
    "make",
    "resolve_item_embeddings",
]

ENV_NAMES = config.paper_env_names()


def env_params(name: str, **overrides: Any) -> EnvParams:
    """Parameters of preset environment `name` with `overrides` applied (any EnvParams field)."""
    return EnvParams.from_dict({**config.env_preset(name), **overrides})


def resolve_item_embeddings(params: EnvParams, item_embeddings: EmbeddingSource | None = None) -> torch.Tensor:
    """The validated item table: the given tensor / array / file, else the one `params.item_embeddings` names."""
    source: Any = params.item_embeddings if item_embeddings is None else item_embeddings
    origin = "item embeddings"
    if isinstance(source, np.ndarray):
        source = torch.from_numpy(source)
    if isinstance(source, (str, Path)):
        text = str(source)
        if text in ("focused", "diffuse"):
            return generate_item_embeddings(
                config.embedding_seed(text),
                params.num_items,
                params.num_topics,
                params.topic_size,
                params.embedding_exponent,
            )
        origin = f"item embeddings {text!r}"
        source = load_item_embeddings(text)
    return validate_item_embeddings(source, params.num_items, params.embedding_dim, origin)


def make(
    name: str,
    *,
    item_embeddings: EmbeddingSource | None = None,
    sim_seed: int = DEFAULT_SIM_SEED,
    device: str | torch.device = "cpu",
    **overrides: Any,
) -> TopicRec:
    """Build preset environment `name` (one of `config.env_names()`: the paper's ENV_NAMES and the variants).

    Args:
        item_embeddings: a (num_items, 20) tensor / array or a .pt / .npy file (e.g. the paper's own tables);
            by default the table the preset names is generated from its seed.
        sim_seed: seed of the simulator's generator (users and clicks).
        device: where the state tensors live.
        overrides: any simulator parameter, e.g. `boredom_threshold=3`.
    """
    params = env_params(name, **overrides)
    table = resolve_item_embeddings(params, item_embeddings)
    return TopicRec(params, table, sim_seed=sim_seed, device=device, name=name)


from slate_rl.envs.gym import register_envs  # noqa: E402  (registration needs make() defined above)

register_envs()
