"""A trained policy as one self-contained payload (a dict of tensors and plain values) and back.

The payload holds what rebuilding the agent needs without any upstream run: the method and its overrides, the
agent's weights (decoder and action bounds included), the environment's parameters and item table (SlateQ and
TopK (ideal) act through them), and where it came from. Stages write it to files; this module does no I/O.
"""

from __future__ import annotations

from typing import Any

import torch

from slate_rl.agents.base import Agent
from slate_rl.agents.methods import build_agent
from slate_rl.envs.params import EnvParams
from slate_rl.envs.topicrec import TopicRec
from slate_rl.errors import SlateRLError
from slate_rl.methods import Need, get_method
from slate_rl.rankers.decoders import GeMSDecoder

POLICY_FORMAT = "slate-rl/policy"
POLICY_VERSION = 1


def policy_payload(
    agent: Agent,
    env: TopicRec,
    *,
    seed: int,
    overrides: dict[str, Any] | None = None,
    episode: int = 0,
    mf_table: torch.Tensor | None = None,
    info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything needed to rebuild `agent` (of a registered method, `slate_rl.methods`) for `env`."""
    payload: dict[str, Any] = {
        "format": POLICY_FORMAT,
        "version": POLICY_VERSION,
        "method": agent.method,
        "seed": int(seed),
        "overrides": dict(overrides or {}),
        "episode": int(episode),
        "env": env.name,
        "env_params": env.params.as_dict(),
        "item_embeddings": env.item_embeddings.detach().cpu().clone(),
        "weights": {k: v.detach().cpu().clone() for k, v in agent.state_dict().items()},
        "info": dict(info or {}),
    }
    needs = get_method(agent.method).needs
    decoder = getattr(agent, "decoder", None)
    if isinstance(decoder, GeMSDecoder):  # the methods that need one, and offline policies acting through one
        payload["gems_decoder"] = decoder.save_payload()
    elif Need.GEMS in needs:
        raise SlateRLError(f"a {agent.method} policy acts through a GeMS decoder, but the agent has none")
    if Need.MF in needs:
        if mf_table is None:
            raise SlateRLError(f"a {agent.method} policy needs its MF item table in the payload")
        payload["mf_table"] = mf_table.detach().cpu().clone()
    return payload


def check_payload(payload: Any) -> dict[str, Any]:
    """Raise unless `payload` is a policy payload this version of slate-rl can read."""
    if not isinstance(payload, dict) or payload.get("format") != POLICY_FORMAT:
        raise SlateRLError("not a slate-rl policy (expected a payload with format 'slate-rl/policy')")
    if int(payload.get("version", 0)) > POLICY_VERSION:
        raise SlateRLError(
            f"policy format version {payload['version']} is newer than this slate-rl reads "
            f"({POLICY_VERSION}); upgrade slate-rl"
        )
    return payload


def agent_from_payload(
    payload: dict[str, Any], env: TopicRec | None = None, device: str | torch.device = "cpu"
) -> tuple[Agent, TopicRec]:
    """Rebuild the agent (in eval mode) and the environment it was trained on, on `device` (or act in the given
    `env`, on its device)."""
    check_payload(payload)
    if env is None:
        params = EnvParams.from_dict(payload["env_params"])
        env = TopicRec(params, payload["item_embeddings"], name=payload["env"], device=device)
    decoder = GeMSDecoder.from_payload(payload["gems_decoder"]) if "gems_decoder" in payload else None
    agent = build_agent(
        payload["method"],
        env,
        payload["seed"],
        gems_decoder=decoder,
        mf_table=payload.get("mf_table"),
        overrides=payload["overrides"] or None,
    )
    try:
        agent.load_state_dict(payload["weights"])
    except RuntimeError as exc:
        raise SlateRLError(
            f"the stored weights do not fit a {payload['method']} agent with this configuration: {exc}"
        ) from exc
    return agent.eval(), env
