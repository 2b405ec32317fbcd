"""SAC+WkNN (Wolpertinger: SAC proto-action, k nearest items per slot, critic refinement), with the reference's bugs
fixed (docs/fidelity.md; each has a switch that restores the reference, see WkNNConfig):

* B2: the k-nearest-neighbour item table is the given (MF) table, not a frozen copy of a random belief table;
* B3: one slot-major layout everywhere (slot r = components r*D .. (r+1)*D - 1 of the proto-action, of the critic
  input and of the action box);
* B4: the greedy refinement scores candidates with the critic's own belief state h^C (both encoders are stepped
  while acting), with the online Q1 when acting and the target Q1 in the critic targets (the reference: target
  Q1 fed the actor state, in both places); the target value itself is min(Q1, Q2) of the targets, as in SAC;
* B1: the critic sees the embeddings of the slate the action produced (obs_{t+1}), not of obs_t.

The proto-action (R * D) comes from the SAC actor; each slot takes the k Euclidean-nearest items, then slots are
fixed one after another, each keeping the candidate of highest critic value; the critic input holds the items
already chosen, the candidate, and in the remaining slots either the candidate repeated (refine_fill='candidate',
the reference) or the proto-action's own queries ('proto'). The first critic layer is linear in the slot inputs, so
each candidate costs one gathered row of a projected table instead of a full critic evaluation.
"""

from __future__ import annotations

import torch

from slate_rl.agents.buffer import Trajectories
from slate_rl.agents.config import WkNNConfig
from slate_rl.agents.nets import twin_q
from slate_rl.agents.sac import SACBase
from slate_rl.errors import SlateRLError
from slate_rl.rankers.decoders import KNNDecoder

REFINE_ROWS = 256  # rows refined at once (keeps the (rows, k, 2 x hidden) pre-activations in cache)


class WkNNAgent(SACBase):
    """Wolpertinger SAC over item embeddings; stores no continuous action (the slate is in the observations)."""

    method = "sac_wknn"
    acting_encoders: tuple[str, ...] = ("actor", "critic")
    config: WkNNConfig
    decoder: KNNDecoder

    def __init__(
        self,
        item_table: torch.Tensor,
        num_items: int,
        slate_size: int,
        config: WkNNConfig,
        seed: int,
        device: torch.device | str = "cpu",
    ) -> None:
        """item_table: the (N, D) kNN table (MF); unused with `reference_item_table` (B2), whose table is the critic
        belief's initial one, known once the encoders exist (its box is set then)."""
        if config.refine_fill not in ("candidate", "proto"):
            raise SlateRLError(f"refine_fill must be 'candidate' or 'proto' (got {config.refine_fill!r})")
        decoder = None
        if config.reference_item_table:
            action_dim = slate_size * config.belief.item_dim
            center = torch.zeros(action_dim, device=device)
            scale = torch.ones(action_dim, device=device)
        else:
            decoder = KNNDecoder(item_table.to(device), slate_size, config.k, config.reference_knn_layout)
            action_dim, center, scale = decoder.action_dim, decoder.action_center, decoder.action_scale
        super().__init__(num_items, slate_size, action_dim, action_dim, center, scale, config, seed, device)
        if decoder is None:  # B2: a frozen copy of the critic belief's random table, taken before any training
            critic_items = self.beliefs.encoder("critic").items.detach()
            decoder = KNNDecoder(critic_items, slate_size, config.k, config.reference_knn_layout)
            self.action_center.copy_(decoder.action_center)
            self.action_scale.copy_(decoder.action_scale)
        self.decoder = decoder.requires_grad_(False)
        self.item_dim = int(decoder.item_table.shape[1])
        # B4: the reference refines with the actor's state only, so only the actor encoder is stepped while acting
        self.acting_encoders = ("actor",) if config.reference_refinement else ("actor", "critic")

    def choose(
        self, states: torch.Tensor, mode: str, episode: int, **privileged: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        proto = self.policy_action(states[0], mode)
        if self.config.reference_refinement:  # B4: the target Q1 at the actor's state
            return self.refine(states[0], proto, self.target_params()), None
        return self.refine(states[1], proto, self.q.params()), None

    def critic_actions(self, batch: Trajectories) -> torch.Tensor:
        window = slice(0, -1) if self.config.reference_pairing else slice(1, None)
        return self.decoder.item_table[batch.slates[:, window]].reshape(-1, self.action_dim)

    def target_values(
        self, critic_states: torch.Tensor, actions: torch.Tensor, actor_states: torch.Tensor
    ) -> torch.Tensor:
        params = self.target_params()
        slates = self.refine(actor_states if self.config.reference_refinement else critic_states, actions, params)
        embedded = self.decoder.item_table[slates].flatten(1)
        return twin_q(params, critic_states, embedded).min(1).values

    @torch.no_grad()
    def refine(self, critic_states: torch.Tensor, proto: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
        """Greedy slot-by-slot choice among the k nearest items of each slot, scored by the first critic of the packed
        twin `params` (online or target) at the belief states `critic_states` (the actor's with
        `reference_refinement`): slates (n, R)."""
        candidates = self.decoder.candidates(proto)  # (n, R, k)
        hidden = params[2].shape[1]
        weight1, bias1, weight2, bias2 = params[0][:hidden], params[1][:hidden], params[2][0], params[3][0]  # Q1
        state_dim, size, dim = critic_states.shape[1], self.slate_size, self.item_dim
        slot_weights = weight1[:, state_dim:].reshape(-1, size, dim).transpose(0, 1)  # (R, h, D)
        table = self.decoder.item_table
        if self.config.refine_fill == "candidate":  # candidate at slot r and every later slot: sum of W_s, s >= r
            candidate_weights = slot_weights.flip(0).cumsum(0).flip(0)
        else:
            candidate_weights = slot_weights
        # first-layer contribution of every item as a candidate of every slot (R, N, h), when cheaper than per row
        projected = None
        if candidates.numel() > table.shape[0]:
            projected = torch.einsum("nd,rhd->rnh", table, candidate_weights)
        base = torch.addmm(bias1, critic_states, weight1[:, :state_dim].t())  # (n, h): state and bias part
        later = None
        if self.config.refine_fill == "proto":  # the proto-action's queries in the slots after r: suffix sums
            per_slot = torch.einsum("nrd,rhd->rnh", self.decoder.slot_queries(proto), slot_weights)
            later = per_slot.flip(0).cumsum(0).flip(0)
        chosen = torch.empty(proto.shape[0], size, dtype=torch.long, device=proto.device)
        for start in range(0, proto.shape[0], REFINE_ROWS):
            rows = slice(start, start + REFINE_ROWS)
            for slot in range(size):
                cand = candidates[rows, slot]
                pre = projected[slot][cand] if projected is not None else table[cand] @ candidate_weights[slot].t()
                pre += base[rows].unsqueeze(1)
                if later is not None and slot + 1 < size:
                    pre += later[slot + 1, rows].unsqueeze(1)
                values = pre.relu_() @ weight2 + bias2  # (n, k)
                best = values.argmax(1, keepdim=True)
                chosen[rows, slot] = cand.gather(1, best).squeeze(1)
                base[rows] += table[chosen[rows, slot]] @ slot_weights[slot].t()
        return chosen
