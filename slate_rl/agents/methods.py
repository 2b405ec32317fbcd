"""Agents of the registered methods: `build_agent` and one builder per built-in method.

Every builder has the signature the method registry names, `builder(env, seed, config, inputs)`: `config` is the
method's hyper-parameter dataclass with the overrides applied (None for a method without one) and `inputs` maps each
of the method's needs (`slate_rl.methods.Need`) to its upstream artifact; `build_agent` checks both before calling it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch

from slate_rl.agents.base import Agent
from slate_rl.agents.baselines import RandomAgent, ShortTermOracleAgent
from slate_rl.agents.config import ReinforceConfig, SACConfig, SlateQConfig, WkNNConfig, with_overrides
from slate_rl.agents.reinforce import ReinforceAgent
from slate_rl.agents.sac import SACAgent
from slate_rl.agents.slateq import SlateQAgent
from slate_rl.agents.wknn import WkNNAgent
from slate_rl.envs.topicrec import TopicRec
from slate_rl.errors import SlateRLError
from slate_rl.methods import Need, get_method, method_ids
from slate_rl.rankers.base import SlateDecoder
from slate_rl.rankers.decoders import TopKDecoder

Inputs = Mapping[Need, Any]


def build_agent(
    method: str,
    env: TopicRec,
    seed: int,
    *,
    gems_decoder: SlateDecoder | None = None,
    mf_table: torch.Tensor | None = None,
    overrides: dict[str, Any] | None = None,
) -> Agent:
    """A fresh agent of the registered `method` for `env`, initialised from `seed` (the agent's own generator), on
    the simulator's device (`env.device`; the upstream inputs are moved there).

    Args:
        gems_decoder: the frozen GeMS decoder with its action bounds (`GeMSDecoder`), for methods that need GEMS.
        mf_table: the (N, D) MF item table, for methods that need MF.
        overrides: fields of the method's config class (e.g. SACConfig); refused for a method without one.
    """
    spec = get_method(method)
    if gems_decoder is not None:
        gems_decoder = gems_decoder.to(env.device)
    if mf_table is not None:
        mf_table = mf_table.to(env.device)
    inputs = {need: value for need, value in ((Need.GEMS, gems_decoder), (Need.MF, mf_table)) if value is not None}
    missing = [need.description for need in spec.needs if need not in inputs]
    if missing:
        raise SlateRLError(f"method {method!r} needs {' and '.join(missing)}")
    if mf_table is not None and tuple(mf_table.shape)[:1] != (env.num_items,):
        raise SlateRLError(f"mf_table must have {env.num_items} rows (got shape {tuple(mf_table.shape)})")
    config_class = spec.load_config()
    if overrides and "fused_update" in overrides and "fused_update" not in _field_names(config_class):
        raise SlateRLError(
            f"method {method!r} has no fused update; drop fused_update (it applies to {_fused_methods()})"
        )
    if config_class is None and overrides:
        raise SlateRLError(f"method {method!r} has no hyper-parameters to override")
    config = None if config_class is None else with_overrides(config_class(), overrides)
    if getattr(config, "fused_update", False) and env.device.type != "cpu":
        raise SlateRLError(
            f"fused_update=true runs fused CPU kernels, but this run is on {env.device}; drop fused_update or run "
            "with --device cpu"
        )
    return spec.load_builder()(env, seed, config, inputs)


def _field_names(config_class: type | None) -> set[str]:
    return {field.name for field in dataclasses.fields(config_class)} if config_class is not None else set()


def _fused_methods() -> str:
    """The registered methods whose config has a `fused_update` switch, comma-separated."""
    return ", ".join(m for m in method_ids() if "fused_update" in _field_names(get_method(m).load_config()))


def build_random(env: TopicRec, seed: int, config: None, inputs: Inputs) -> Agent:
    return RandomAgent(env.num_items, env.slate_size, seed, env.device)


def build_short_term_oracle(env: TopicRec, seed: int, config: None, inputs: Inputs) -> Agent:
    return ShortTermOracleAgent(env.num_items, env.slate_size, seed, env.device)


def build_sac_gems(env: TopicRec, seed: int, config: SACConfig, inputs: Inputs) -> Agent:
    return SACAgent(inputs[Need.GEMS], env.num_items, env.slate_size, config, seed, "sac_gems", env.device)


def build_sac_topk_ideal(env: TopicRec, seed: int, config: SACConfig, inputs: Inputs) -> Agent:
    decoder = TopKDecoder(env.item_embeddings, env.slate_size)
    return SACAgent(decoder, env.num_items, env.slate_size, config, seed, "sac_topk_ideal", env.device)


def build_sac_topk_mf(env: TopicRec, seed: int, config: SACConfig, inputs: Inputs) -> Agent:
    decoder = TopKDecoder(inputs[Need.MF], env.slate_size)
    return SACAgent(decoder, env.num_items, env.slate_size, config, seed, "sac_topk_mf", env.device)


def build_sac_wknn(env: TopicRec, seed: int, config: WkNNConfig, inputs: Inputs) -> Agent:
    return WkNNAgent(inputs[Need.MF], env.num_items, env.slate_size, config, seed, env.device)


def build_slateq(env: TopicRec, seed: int, config: SlateQConfig, inputs: Inputs) -> Agent:
    return SlateQAgent(env, config, seed)


def build_reinforce_softmax(env: TopicRec, seed: int, config: ReinforceConfig, inputs: Inputs) -> Agent:
    return ReinforceAgent(env.num_items, env.slate_size, config, seed, env.device)
