"""The eight methods of the paper by id, with what each needs from upstream stages."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

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
from slate_rl.rankers.base import SlateDecoder
from slate_rl.rankers.decoders import TopKDecoder


@dataclass(frozen=True)
class MethodInfo:
    """display: the paper's name; needs: the upstream artifact ('gems_decoder', 'mf_table' or None);
    privileged: uses simulator internals (the method is only defined inside the simulator)."""

    display: str
    needs: Optional[str] = None
    learns: bool = True
    privileged: bool = False


METHODS: dict[str, MethodInfo] = {
    "sac_gems": MethodInfo("SAC+GeMS", needs="gems_decoder"),
    "sac_topk_ideal": MethodInfo("SAC+TopK (ideal)", privileged=True),
    "sac_topk_mf": MethodInfo("SAC+TopK (MF)", needs="mf_table"),
    "sac_wknn": MethodInfo("SAC+WkNN", needs="mf_table"),
    "slateq": MethodInfo("SlateQ", privileged=True),
    "reinforce_softmax": MethodInfo("REINFORCE+SoftMax"),
    "random": MethodInfo("Random", learns=False),
    "short_term_oracle": MethodInfo("Short-term oracle", learns=False, privileged=True),
}


def method_info(method: str) -> MethodInfo:
    if method not in METHODS:
        raise SlateRLError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
    return METHODS[method]


def build_agent(method: str, env: TopicRec, seed: int, *, gems_decoder: Optional[SlateDecoder] = None,
                mf_table: Optional[torch.Tensor] = None, overrides: Optional[dict[str, Any]] = None) -> Agent:
    """A fresh agent of `method` for `env`, initialised from `seed` (the agent's own generator).

    Args:
        gems_decoder: the frozen GeMS decoder with its action bounds (`GeMSDecoder`), for 'sac_gems'.
        mf_table: the (N, D) MF item table, for 'sac_topk_mf' and 'sac_wknn'.
        overrides: fields of the method's config (SACConfig, WkNNConfig, SlateQConfig or ReinforceConfig).
    """
    info = method_info(method)
    if info.needs == "gems_decoder" and gems_decoder is None:
        raise SlateRLError(f"method {method!r} needs the trained GeMS decoder (gems_decoder=GeMSDecoder...)")
    if info.needs == "mf_table" and mf_table is None:
        raise SlateRLError(f"method {method!r} needs the MF item table (mf_table=(N, D) tensor)")
    if mf_table is not None and tuple(mf_table.shape)[:1] != (env.num_items,):
        raise SlateRLError(f"mf_table must have {env.num_items} rows (got shape {tuple(mf_table.shape)})")
    n, size = env.num_items, env.slate_size
    if not info.learns and overrides:
        raise SlateRLError(f"method {method!r} has no hyper-parameters to override")
    if method == "random":
        return RandomAgent(n, size, seed)
    if method == "short_term_oracle":
        return ShortTermOracleAgent(n, size, seed)
    if method in ("sac_gems", "sac_topk_ideal", "sac_topk_mf"):
        if method == "sac_gems":
            decoder = gems_decoder
        else:
            decoder = TopKDecoder(env.item_embeddings if method == "sac_topk_ideal" else mf_table, size)
        return SACAgent(decoder, n, size, with_overrides(SACConfig(), overrides), seed, method)
    if method == "sac_wknn":
        return WkNNAgent(mf_table, n, size, with_overrides(WkNNConfig(), overrides), seed)
    if method == "slateq":
        return SlateQAgent(env, with_overrides(SlateQConfig(), overrides), seed)
    return ReinforceAgent(n, size, with_overrides(ReinforceConfig(), overrides), seed)
