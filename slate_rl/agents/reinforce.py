"""REINFORCE+SoftMax: a softmax over the catalogue from the actor belief.

Training slates are R i.i.d. draws (duplicates allowed); evaluation slates the R most probable items. Each update
trains on one episode: L = -sum_t G_t log(1 - (1 - pi(i_t | h_t))^R + 1e-6) over the steps with a click, i_t the
first clicked item (B1 fixed: of obs_{t+1}), G_t the discounted return from t; no baseline, a sum over steps, updates
from the first episode on the uniform warm-up data without correction (Q8, as in the paper). With `fused_update` the
belief is encoded by the fused CPU kernels (`BeliefEncoders.encode_fused`).
"""

from __future__ import annotations

from typing import Any

import torch

from slate_rl.agents.base import EXPLORE, BeliefAgent, Diagnostics
from slate_rl.agents.belief import BeliefEncoders
from slate_rl.agents.buffer import Trajectories
from slate_rl.agents.config import ReinforceConfig
from slate_rl.agents.nets import MLP, adam
from slate_rl.agents.pairing import first_clicks


def discounted_returns(rewards: torch.Tensor, gamma: float) -> torch.Tensor:
    """G_t = sum_{k >= t} gamma^(k - t) r_k for rewards (B, H), as one matmul."""
    steps = rewards.shape[-1]
    index = torch.arange(steps, dtype=rewards.dtype, device=rewards.device)
    power = index.unsqueeze(0) - index.unsqueeze(1)  # [t, k] = k - t
    weights = torch.where(power >= 0, gamma ** power.clamp(min=0), 0.0)
    return rewards @ weights.T


class ReinforceAgent(BeliefAgent):
    """REINFORCE with a softmax slate policy (actor encoder only)."""

    method = "reinforce_softmax"
    on_policy = True
    updates_in_warmup = True
    acting_encoders = ("actor",)

    def __init__(
        self, num_items: int, slate_size: int, config: ReinforceConfig, seed: int, device: torch.device | str = "cpu"
    ) -> None:
        super().__init__(num_items, slate_size, seed, device)
        self.config = config
        belief = config.belief
        self.beliefs = BeliefEncoders(
            ("actor",), num_items, slate_size, self.generator, belief.item_dim, belief.hidden_dim, self.device
        )
        self.policy = MLP(belief.hidden_dim, config.hidden, num_items, self.generator, self.device)
        self.optimizer = adam(self.parameters(), config.lr)

    def choose(
        self, states: torch.Tensor, mode: str, episode: int, **privileged: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        logits = self.policy(states[0])
        if mode == EXPLORE:  # sampled on the CPU, the acting generator's device
            probs = torch.softmax(logits, dim=-1).cpu()
            items = torch.multinomial(probs, self.slate_size, replacement=True, generator=self.act_generator)
            return items.to(self.device), None
        return logits.topk(self.slate_size, dim=-1).indices, None

    def update(self, batch: Trajectories) -> Diagnostics:
        hidden = self.config.belief.hidden_dim
        encode = self.beliefs.encode_fused if self.config.fused_update else self.beliefs.encode
        states = encode(batch.slates[:, :-1], batch.clicks[:, :-1])[0].reshape(-1, hidden)
        log_probs = torch.log_softmax(self.policy(states), dim=-1)
        items, has_click = first_clicks(batch.slates, batch.clicks, self.config.reference_pairing)
        returns = discounted_returns(batch.rewards, self.config.gamma).reshape(-1)
        prob = log_probs.gather(1, items.reshape(-1, 1)).squeeze(1).exp()
        in_slate = torch.log(1 - (1 - prob).pow(self.slate_size) + 1e-6)
        loss = -(returns * in_slate * has_click.reshape(-1)).sum()
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            entropy = -(log_probs.exp() * log_probs).sum(-1).mean()
            return {"loss": loss.detach(), "return": batch.rewards.sum() / batch.slates.shape[0], "entropy": entropy}

    def training_state_dict(self) -> dict[str, Any]:
        return {**super().training_state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_training_state_dict(self, state: dict[str, Any]) -> None:
        super().load_training_state_dict(state)
        self.optimizer.load_state_dict(state["optimizer"])
