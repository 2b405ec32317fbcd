"""SlateQ, QL-TT-TS variant: item-wise long-term values from the critic belief, slates by top-R of (true relevance
x Q); privileged simulator information throughout (relevances, click model, user states).

Acting: epsilon-greedy per user and step with epsilon(g) = end + (start - end) exp(-g / decay), g the training
episode; the random slate is R uniform items with replacement. Update (SARSA-free Q-learning with the slate
decomposition): only transitions with a click; i_t = first clicked item (B1 fixed: of obs_{t+1}); target
y_t = 1 + gamma (1 - d_t) sum_m P_m Q_target(h_{t+1}, j_m), (j_m) = top-R of rel(u) * Q_target(h_{t+1}, .), P_m the
marginal click probability of rank m under the simulator's click model, divided by the diversity penalty when the
next slate would be penalised; d_t = 0 except at the end of an episode with `reference_terminal_end` (otherwise the
last transition bootstraps from h_H, the belief after the final observation). Polyak averaging happens before the
optimiser step, as in the reference. With
`fused_update` the belief is encoded by the fused CPU kernels (`BeliefEncoders.encode_fused`).
"""

from __future__ import annotations

from typing import Any

import torch

from slate_rl.agents.base import EXPLORE, BeliefAgent, Diagnostics, draw
from slate_rl.agents.belief import BeliefEncoders
from slate_rl.agents.buffer import Trajectories
from slate_rl.agents.config import SlateQConfig
from slate_rl.agents.nets import MLP, adam
from slate_rl.agents.pairing import first_clicks
from slate_rl.envs import click_models
from slate_rl.envs.topicrec import TopicRec
from slate_rl.errors import SlateRLError


class SlateQAgent(BeliefAgent):
    """SlateQ over the critic GRU belief; holds the simulator for its privileged relevances and click model."""

    method = "slateq"
    acting_encoders = ("critic",)
    # the target network: copies of `q`'s parameters, registered as buffers q_target_<name> in __init__
    q_target_weight1: torch.Tensor
    q_target_bias1: torch.Tensor
    q_target_weight2: torch.Tensor
    q_target_bias2: torch.Tensor

    def __init__(self, env: TopicRec, config: SlateQConfig, seed: int) -> None:
        super().__init__(env.num_items, env.slate_size, seed, env.device)  # on the simulator's device
        self.env, self.config = env, config
        belief = config.belief
        self.beliefs = BeliefEncoders(
            ("critic",), env.num_items, env.slate_size, self.generator, belief.item_dim, belief.hidden_dim, self.device
        )
        self.q = MLP(belief.hidden_dim, config.hidden, env.num_items, self.generator, self.device)
        for name, value in self.q.named_parameters():
            self.register_buffer(f"q_target_{name}", value.detach().clone())
        self.optimizer = adam(self.parameters(), config.lr)
        self._epsilon = config.epsilon_start

    @property
    def privileged_dim(self) -> int:
        return self.env.embedding_dim

    @property
    def batch_size(self) -> int:
        return self.config.batch_size

    @property
    def buffer_capacity(self) -> int:
        return self.config.capacity

    def privileged_record(self, env: TopicRec) -> torch.Tensor | None:
        """The user after the step: raw (reference, Q5) or with bored topics zeroed (the relevance acting used)."""
        return env.user.clone() if self.config.reference_relevances else env.effective_user()

    def epsilon(self, episode: torch.Tensor | float) -> torch.Tensor:
        """The exploration rate of training episode(s) `episode`, on the CPU (where the acting draws are made)."""
        c = self.config
        decay = torch.exp(-torch.as_tensor(episode, device="cpu") / c.epsilon_decay)
        return c.epsilon_end + (c.epsilon_start - c.epsilon_end) * decay

    def target_q(self, states: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(torch.addmm(self.q_target_bias1, states, self.q_target_weight1.t()))
        return torch.addmm(self.q_target_bias2, hidden, self.q_target_weight2.t())

    def choose(
        self, states: torch.Tensor, mode: str, episode: int, **privileged: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        relevances = privileged.get("relevances")
        if relevances is None:
            relevances = self.env.item_relevances(reference_slicing=self.config.reference_relevances)
        slates = (relevances * self.q(states[0])).topk(self.slate_size, dim=-1).indices
        if mode == EXPLORE:
            num = slates.shape[0]
            self._epsilon = float(self.epsilon(float(episode)))
            rates = self.epsilon(episode + torch.arange(num, device="cpu").float())
            explore = draw(torch.rand, num, generator=self.act_generator, device=self.device) < rates.to(self.device)
            random = draw(torch.randint, self.num_items, slates.shape, generator=self.act_generator, device=self.device)
            slates = torch.where(explore.unsqueeze(1), random, slates)
        return slates, None

    def recommend(self, slates: torch.Tensor, clicks: torch.Tensor, **privileged: torch.Tensor) -> torch.Tensor:
        """Needs `relevances=` (B, N), the simulator's current item relevances of each user (privileged)."""
        if "relevances" not in privileged:
            raise SlateRLError(
                "SlateQ needs the simulator's item relevances to recommend: "
                "recommend(slates, clicks, relevances=env.item_relevances())"
            )
        return super().recommend(slates, clicks, **privileged)

    def next_slate_values(self, next_states: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        """sum_m P_m Q_target(h', j_m) for next belief states (M, H) and the users' states (M, D) at that time."""
        env = self.env
        q_next = self.target_q(next_states)
        relevance = env.item_relevances(user_state=users)
        chosen = (relevance * q_next).topk(self.slate_size, dim=-1).indices
        probs = click_models.marginal_click_probabilities(relevance.gather(1, chosen), env.propensities, env.alpha)
        penalty = env.params.diversity_penalty
        if penalty != 1.0:
            topics = env.item_topics[chosen]
            counts = torch.zeros(topics.shape[0], env.params.num_topics, dtype=torch.long, device=topics.device)
            counts.scatter_add_(1, topics, torch.ones_like(topics))
            penalised = counts.max(1).values >= env.params.diversity_threshold
            if self.config.batch_divpen:
                penalised = penalised.any().expand_as(penalised)
            probs = torch.where(penalised.unsqueeze(1), probs / penalty, probs)
        return (probs * q_next.gather(1, chosen)).sum(1)

    def update(self, batch: Trajectories) -> Diagnostics:
        cfg, hidden = self.config, self.config.belief.hidden_dim
        if batch.privileged is None:
            raise SlateRLError("SlateQ learns from trajectories that carry the users' states (privileged data)")
        encode = self.beliefs.encode_fused if cfg.fused_update else self.beliefs.encode
        # belief states of obs_0 .. obs_H: transition t reads h_t, its target h_{t+1}
        beliefs = encode(batch.slates, batch.clicks)[0]
        states = beliefs[:, :-1].reshape(-1, hidden)
        items, has_click = first_clicks(batch.slates, batch.clicks, cfg.reference_pairing)
        mask = has_click.reshape(-1)
        q_taken = self.q(states[mask]).gather(1, items.reshape(-1, 1)[mask]).squeeze(1)
        with torch.no_grad():
            not_done = batch.bootstrap_mask(cfg.reference_terminal_end).reshape(-1)[mask]
            next_states = beliefs[:, 1:].reshape(-1, hidden)[mask]
            users = batch.privileged.reshape(-1, batch.privileged.shape[-1])[mask]
            target = 1.0 + cfg.gamma * not_done * self.next_slate_values(next_states, users)
        loss = (q_taken - target).pow(2).mean() if bool(mask.any()) else q_taken.sum()
        loss.backward()
        with torch.no_grad():
            torch._foreach_lerp_(
                [self.q_target_weight1, self.q_target_bias1, self.q_target_weight2, self.q_target_bias2],
                [p.detach() for p in self.q.parameters()],
                cfg.tau,
            )
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {
            "loss": loss.detach(),
            "epsilon": torch.tensor(self._epsilon, device=loss.device),
            "q_mean": q_taken.detach().mean().nan_to_num(0.0),
            "clicked_share": mask.float().mean(),
        }

    def training_state_dict(self) -> dict[str, Any]:
        return {**super().training_state_dict(), "optimizer": self.optimizer.state_dict(), "epsilon": self._epsilon}

    def load_training_state_dict(self, state: dict[str, Any]) -> None:
        super().load_training_state_dict(state)
        self.optimizer.load_state_dict(state["optimizer"])
        self._epsilon = state["epsilon"]
