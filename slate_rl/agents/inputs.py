"""GRU input gates of slate observations for whole trajectories, with a hand-written backward pass.

The input of an encoder at step t is x_t = [E(s_1), c_1, ..., E(s_R), c_R] (R x (D + 1)); its gates are
W_ih x_t + b_ih = sum_r W_r E(s_r) + sum_r c_r w_r + b_ih, with W_r the (3H x D) block of slot r. Instead of building
x for every step (B * T rows of 210 values, twice per encoder in the backward pass) the item table is projected once
per slot (P_r = E W_r^T, N x 3H), the gates are gathered sums of projected rows, and the backward pass accumulates
gradients per item before two small matmuls per slot. Half the arithmetic of the direct form, same result to float
rounding (tested against the direct formula through the encoders).
Everything runs slot by slot, on (N, G x 3H) tables of about 0.5 MB that stay in cache: tables for all slots at
once (5 MB, written, then read back) cost more in memory traffic than the extra kernels do.
"""

from __future__ import annotations

from typing import Any

import torch


class SlotInputGates(torch.autograd.Function):
    """forward(items (G, N, D), w_ih (G, 3H, R * (D + 1)), b_ih (G, 3H), slates (B, T, R) int64, clicks (B, T, R)
    float) -> input gates (T, G, B, 3H), time-major as `StackedGRUSequence` takes them (any strides)."""

    @staticmethod
    def forward(
        ctx: Any,
        items: torch.Tensor,
        w_ih: torch.Tensor,
        b_ih: torch.Tensor,
        slates: torch.Tensor,
        clicks: torch.Tensor,
    ) -> torch.Tensor:
        groups, _, dim = items.shape
        batch, steps, size = slates.shape
        gates = w_ih.shape[1]
        w = w_ih.view(groups, gates, size, dim + 1)
        w_slots = w[..., :dim].permute(2, 0, 3, 1)  # (R, G, D, 3H): W_r^T of each encoder
        item_ids = slates.transpose(0, 1).reshape(steps * batch, size).t().contiguous()  # (R, T * B)

        def picked(r: int) -> torch.Tensor:  # slot r's input gates (G, T * B, 3H)
            return torch.bmm(items, w_slots[r]).index_select(1, item_ids[r])

        gi = picked(0)
        for r in range(1, size):
            gi.add_(picked(r))
        gi = gi.view(groups, steps, batch, gates).transpose(0, 1)
        clicks_tb = clicks.transpose(0, 1).reshape(steps * batch, size)
        w_clicks = w[..., dim].permute(2, 0, 1).reshape(size, groups * gates)
        gi += torch.addmm(b_ih.reshape(1, -1), clicks_tb, w_clicks).view(steps, batch, groups, gates).transpose(1, 2)
        ctx.save_for_backward(items, w_ih, item_ids, clicks_tb)
        return gi

    @staticmethod
    def backward(ctx: Any, d_gi: torch.Tensor) -> tuple[Any, ...]:
        items, w_ih, item_ids, clicks_tb = ctx.saved_tensors
        groups, num_items, dim = items.shape
        size = item_ids.shape[0]
        steps, _, batch, gates = d_gi.shape
        w_slots = w_ih.view(groups, gates, size, dim + 1)[..., :dim].permute(2, 0, 3, 1)
        d_tb = d_gi.transpose(1, 2).reshape(steps * batch, groups * gates)  # a view for `StackedGRUSequence`'s grad
        d_bias = d_tb.sum(0).view(groups, gates)
        d_w_clicks = (clicks_tb.t() @ d_tb).view(size, groups, gates)
        d_items_t = items.new_zeros(groups, dim, num_items)
        d_w_items = items.new_empty(groups, dim, size, gates)
        per_item = d_tb.new_empty(num_items, groups * gates)  # gradient per item at slot r, the encoders side by side
        for r in range(size):
            per_item.zero_().index_add_(0, item_ids[r], d_tb)
            per_encoder = per_item.view(num_items, groups, gates).transpose(0, 1)  # (G, N, 3H)
            d_items_t.baddbmm_(w_slots[r], per_encoder.transpose(1, 2))  # transposed product: faster here
            torch.bmm(items.transpose(1, 2), per_encoder, out=d_w_items[:, :, r])
        d_w = d_gi.new_empty(groups, gates, size, dim + 1)
        d_w[..., :dim] = d_w_items.permute(0, 3, 2, 1)
        d_w[..., dim] = d_w_clicks.permute(1, 2, 0)
        return d_items_t.transpose(1, 2), d_w.view(groups, gates, -1), d_bias, None, None


def slot_input_gates(
    items: torch.Tensor, w_ih: torch.Tensor, b_ih: torch.Tensor, slates: torch.Tensor, clicks: torch.Tensor
) -> torch.Tensor:
    """Differentiable `SlotInputGates`: (T, G, B, 3H) input gates of trajectories slates, clicks (B, T, R)."""
    return SlotInputGates.apply(items, w_ih, b_ih, slates.long(), clicks.to(items.dtype))
