"""The GRU belief encoders of the agents: each turns an observation history into a belief state.

Each encoder has its own scratch item table (N x 20) and its own single-layer GRU (input R x [embedding, click] =
210, hidden 20, zero initial state). The tables of all encoders of an agent start as copies of one random N(0, 1)
table, as in the reference. Training re-encodes whole stored trajectories with full back-propagation through time:
`encode` is the plain GRU forward (the cell acting uses, stepped over time; autograd differentiates it), and
`encode_fused` runs the same equations as fused CPU kernels with a hand-written backward pass
(`slate_rl.agents.inputs`, `slate_rl.agents.gru`), for the updates run with `fused_update`. Acting steps the
encoders online, one observation at a time, batched over users.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import nn

from slate_rl.agents.gru import GRUWorkspace, gru_cell, stacked_gru
from slate_rl.agents.inputs import slot_input_gates
from slate_rl.errors import SlateRLError


class GRUBelief(nn.Module):
    """Parameters of one encoder; names follow `torch.nn.GRU` (weight_ih_l0 ...), gate order r, z, n."""

    def __init__(self, items: torch.Tensor, slate_size: int, hidden_dim: int, generator: torch.Generator) -> None:
        super().__init__()
        input_dim = slate_size * (items.shape[1] + 1)
        bound = 1.0 / math.sqrt(hidden_dim)

        def uniform(*shape: int) -> nn.Parameter:  # drawn on the CPU (the generator's), placed with the table
            return nn.Parameter(
                ((torch.rand(*shape, generator=generator, device="cpu") * 2 - 1) * bound).to(items.device)
            )

        self.items = nn.Parameter(items.clone())
        self.weight_ih_l0 = uniform(3 * hidden_dim, input_dim)
        self.weight_hh_l0 = uniform(3 * hidden_dim, hidden_dim)
        self.bias_ih_l0 = uniform(3 * hidden_dim)
        self.bias_hh_l0 = uniform(3 * hidden_dim)


class BeliefEncoders(nn.Module):
    """Named GRU belief encoders (e.g. ('actor', 'critic')) that are encoded together.

    Args:
        names: encoder names; each gets its own item table and GRU.
        num_items, slate_size: catalogue size N and slots R.
        generator: the agent's generator (initialisation; the global RNG is not used).
        item_dim, hidden_dim: 20 and 20 in the paper.
        device: where the encoders live (the agent's device).
    """

    def __init__(
        self,
        names: Sequence[str],
        num_items: int,
        slate_size: int,
        generator: torch.Generator,
        item_dim: int = 20,
        hidden_dim: int = 20,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__()
        self.names = tuple(names)
        self.hidden_dim = hidden_dim
        items = torch.randn(num_items, item_dim, generator=generator, device="cpu").to(device)
        self.encoders = nn.ModuleDict(
            {name: GRUBelief(items, slate_size, hidden_dim, generator) for name in self.names}
        )
        self._hidden: torch.Tensor | None = None  # (G, n, H) online state while acting
        self._workspaces: dict[tuple[Any, ...], GRUWorkspace] = {}  # buffers reused by fused encodes

    def encoder(self, name: str) -> GRUBelief:
        """The encoder called `name` (`nn.ModuleDict` does not keep the type of its modules)."""
        return cast(GRUBelief, self.encoders[name])

    def _tables(self, names: Sequence[str]) -> torch.Tensor:
        return torch.stack([self.encoder(name).items for name in names])

    def _stacked(self, names: Sequence[str]) -> tuple[torch.Tensor, ...]:
        encs = [self.encoders[name] for name in names]
        return tuple(
            torch.stack([getattr(e, key) for e in encs])
            for key in ("weight_ih_l0", "bias_ih_l0", "weight_hh_l0", "bias_hh_l0")
        )

    def encode(self, slates: torch.Tensor, clicks: torch.Tensor, names: Sequence[str] | None = None) -> torch.Tensor:
        """Belief states of whole observation sequences: slates, clicks (B, T, R) -> (G, B, T, H), differentiable;
        [:, :, t] encodes observations 0..t (the GRU cell of `step`, run over time from a zero state)."""
        names = self.names if names is None else tuple(names)
        w_ih, b_ih, w_hh, b_hh = self._stacked(names)
        return encode_stacked(self._tables(names), w_ih, b_ih, w_hh, b_hh, slates.unsqueeze(0), clicks.unsqueeze(0))

    def encode_fused(
        self, slates: torch.Tensor, clicks: torch.Tensor, names: Sequence[str] | None = None
    ) -> torch.Tensor:
        """`encode` with the fused CPU kernels: all encoders in one stacked pass, a hand-written backward. With
        gradients enabled the result lives in a reused buffer: consume it (back-propagate) before the next
        encode of the same shape."""
        device = self.encoder(self.names[0]).items.device
        if device.type != "cpu" or slates.device.type != "cpu":
            raise SlateRLError(
                f"fused_update=true runs fused CPU kernels, but the agent is on {device} and its batch on "
                f"{slates.device}; train on the CPU or drop fused_update"
            )
        names = self.names if names is None else tuple(names)
        w_ih, b_ih, w_hh, b_hh = self._stacked(names)
        gi = slot_input_gates(self._tables(names), w_ih, b_ih, slates, clicks)
        workspace = None
        if torch.is_grad_enabled():
            key = (names, *gi.shape, gi.dtype)
            workspace = self._workspaces.get(key)
            if workspace is None:
                workspace = self._workspaces[key] = GRUWorkspace(
                    gi.shape[0], gi.shape[1], gi.shape[2], self.hidden_dim, gi.dtype
                )
        return stacked_gru(gi, w_hh, b_hh, workspace).permute(1, 2, 0, 3)

    def start(self, num_users: int, names: Sequence[str] | None = None) -> None:
        """Zero the online states of `num_users` users for the encoders `names` (all by default)."""
        count = len(self.names if names is None else names)
        self._hidden = torch.zeros(count, num_users, self.hidden_dim, device=self.encoder(self.names[0]).items.device)

    @torch.no_grad()
    def step(self, slates: torch.Tensor, clicks: torch.Tensor, names: Sequence[str] | None = None) -> torch.Tensor:
        """Advance the online states (same `names` as in `start`) by one observation (n, R); returns (G, n, H)."""
        if self._hidden is None:
            raise SlateRLError("call start() before step()")
        names = self.names if names is None else tuple(names)
        w_ih, b_ih, w_hh, b_hh = self._stacked(names)
        gi = input_gates(self._tables(names), w_ih, b_ih, slates.unsqueeze(0), clicks.unsqueeze(0))
        self._hidden = gru_cell(gi, self._hidden, w_hh.transpose(1, 2), b_hh.unsqueeze(1))
        return self._hidden


def input_gates(
    tables: torch.Tensor, w_ih: torch.Tensor, b_ih: torch.Tensor, slates: torch.Tensor, clicks: torch.Tensor
) -> torch.Tensor:
    """W_ih [E(s_r), c_r]_r + b_ih of G encoders, directly: tables (G, N, D), w_ih (G, 3H, R(D + 1)), b_ih (G, 3H),
    observations slates, clicks (G or 1, M, R) -> (G, M, 3H), in the parameters' dtype (also under bf16 autocast:
    the recurrence runs in fp32). Used while acting and by the plain encode; the fused encode computes them from
    per-slot projections of the tables."""
    groups = torch.arange(tables.shape[0], device=tables.device).view(-1, 1, 1)
    embedded = tables[groups, slates.long()]  # (G, M, R, D)
    clicks = clicks.to(w_ih.dtype).unsqueeze(-1).expand(*embedded.shape[:-1], 1)
    x = torch.cat([embedded, clicks], -1).flatten(2)
    return torch.baddbmm(b_ih.unsqueeze(1), x, w_ih.transpose(1, 2)).to(w_ih.dtype)


def encode_stacked(
    tables: torch.Tensor,
    w_ih: torch.Tensor,
    b_ih: torch.Tensor,
    w_hh: torch.Tensor,
    b_hh: torch.Tensor,
    slates: torch.Tensor,
    clicks: torch.Tensor,
) -> torch.Tensor:
    """Belief states of G encoders (parameters stacked as in `input_gates`, w_hh (G, 3H, H), b_hh (G, 3H)) over
    whole sequences slates, clicks (G or 1, B, T, R) -> (G, B, T, H), differentiable; [:, :, t] encodes observations
    0..t (the GRU cell of `BeliefEncoders.step`, run over time from a zero state)."""
    batch, steps, size = slates.shape[-3:]
    gi = input_gates(
        tables, w_ih, b_ih, slates.reshape(-1, batch * steps, size), clicks.reshape(-1, batch * steps, size)
    )
    gi = gi.view(tables.shape[0], batch, steps, -1)
    h = gi.new_zeros(tables.shape[0], batch, w_hh.shape[-1])
    w_hh_t, b_hh = w_hh.transpose(1, 2), b_hh.unsqueeze(1)
    states = []
    for gi_t in gi.unbind(2):  # unbind, not indexing: its backward stacks the steps' gradients once
        h = gru_cell(gi_t, h, w_hh_t, b_hh)
        states.append(h)
    return torch.stack(states, 2)
