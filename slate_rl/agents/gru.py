"""The GRU cell of the belief encoders, and a fused stack of G of them over time with a hand-written backward pass.

`gru_cell` is the plain cell: acting steps it, and the plain `BeliefEncoders.encode` runs it over time under autograd.
The rest of this module is the fused path (`fused_update`).

The belief encoders are tiny (hidden size 20, batch 20, 100 steps): their cost is the number of small kernels, not
arithmetic. `nn.GRU` on CPU records every gate operation for autograd; here the G encoders of an agent (actor and
critic) advance together, the forward is five kernels per step (one in-place batched matmul adds the r, z
pre-activations and W_hn h + b_hn to their precomputed parts) and stores what the backward needs, and the backward
is two kernels per step (back-propagation through time written out, the z * dh term folded into the matmul) plus
one batched matmul for the weight and bias gradients.
The time loop works feature-major: the state of a group is an (H, B) block and its gates a (3H, B) block, so each
elementwise kernel runs over a few contiguous runs of H x B values rather than B rows of H (about twice as fast at
these sizes), and gates are sliced without strides.
Gate order and equations are those of `torch.nn.GRU` (r, z, n; h' = (1 - z) * n + z * h), so the results match
it to float rounding (tested). The buffers and their per-step views can be kept in a `GRUWorkspace` and reused
from one update to the next.
"""

from __future__ import annotations

from typing import Any

import torch


def gru_cell(gi: torch.Tensor, h: torch.Tensor, w_hh_t: torch.Tensor, b_hh: torch.Tensor) -> torch.Tensor:
    """One step for G stacked GRUs: gi (G, B, 3H) input gates (bias included), h (G, B, H), w_hh_t (G, H, 3H)
    (transposed recurrent weights), b_hh (G, 1, 3H). Returns the new hidden state (G, B, H)."""
    hidden = h.shape[-1]
    gh = torch.baddbmm(b_hh, h, w_hh_t)
    rz = torch.sigmoid(gi[..., : 2 * hidden] + gh[..., : 2 * hidden])
    n = torch.tanh(torch.addcmul(gi[..., 2 * hidden :], rz[..., :hidden], gh[..., 2 * hidden :]))
    return torch.lerp(n, h, rz[..., hidden:])


class GRUWorkspace:
    """Buffers of one sequence shape (T, G, B, H), feature-major ((.., H, B) blocks), and their per-step views.

    Reuse is safe as long as each forward's backward runs before the next forward that uses the workspace (autograd's
    version counters raise an error otherwise); `busy` makes a second concurrent forward allocate its own buffers.
    """

    def __init__(
        self,
        steps: int,
        groups: int,
        batch: int,
        hidden: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        def new(*shape: int) -> torch.Tensor:
            return torch.empty(*shape, dtype=dtype, device=device)

        h = hidden
        self.shape = (steps, groups, batch, hidden)
        self.busy = False
        # gates[t] = [r, z, W_hn h_{t-1} + b_hn], prefilled with [gi_rz + b_hrz, b_hn] and completed in place
        self.gates = new(steps, groups, 3 * h, batch)
        self.gi_n, self.n = new(steps, groups, h, batch), new(steps, groups, h, batch)
        self.states = new(steps + 1, groups, h, batch)  # states[0] = h_{-1} = 0, states[t + 1] = h_t
        # backward: factors[t] = d[pre-activations of r, z; W_hn h + b_hn; h_{t-1} directly] / d h_t
        self.factors, self.d_aug = new(steps, groups, 4 * h, batch), new(steps, groups, 4 * h, batch)
        self.d_h = new(steps, groups, h, batch)  # prefilled with the output gradients, completed in place
        self.d_gi = new(steps, batch, groups, 3 * h)  # row-major per observation, as `SlotInputGates` reads it
        self.gates_t, self.gi_n_t, self.n_t, self.states_t = (
            x.unbind(0) for x in (self.gates, self.gi_n, self.n, self.states)
        )
        self.rz_t, self.r_t = self.gates[:, :, : 2 * h].unbind(0), self.gates[:, :, :h].unbind(0)
        self.z_t, self.ghn_t = self.gates[:, :, h : 2 * h].unbind(0), self.gates[:, :, 2 * h :].unbind(0)
        self.factors_t = self.factors.view(steps, groups, 4, h, batch).unbind(0)
        self.d_aug_t = self.d_aug.view(steps, groups, 4, h, batch).unbind(0)
        self.d_aug_flat_t, self.d_h_t = self.d_aug.unbind(0), self.d_h.unbind(0)


class StackedGRUSequence(torch.autograd.Function):
    """Hidden states of G GRUs over T steps from a zero initial state.

    forward(gi (T, G, B, 3H) time-major input gates with b_ih included (any strides), w_hh (G, 3H, H), b_hh (G, 3H),
    workspace) -> h (T, G, B, H) (a view of the workspace), h[t] = state after inputs 0..t. The gradient returned for
    gi is a view of a (T, B, G, 3H) buffer.
    """

    @staticmethod
    def forward(
        ctx: Any, gi: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor, workspace: GRUWorkspace | None
    ) -> torch.Tensor:
        steps, groups, batch, width = gi.shape
        hidden = width // 3
        if workspace is None or workspace.busy or workspace.shape != (steps, groups, batch, hidden):
            workspace = GRUWorkspace(steps, groups, batch, hidden, gi.dtype, gi.device)
        ws = workspace
        ws.busy = True
        gi_t = gi.transpose(2, 3)  # (T, G, 3H, B)
        torch.add(gi_t[:, :, : 2 * hidden], b_hh[:, : 2 * hidden, None], out=ws.gates[:, :, : 2 * hidden])
        ws.gates[:, :, 2 * hidden :] = b_hh[:, 2 * hidden :, None]
        ws.gi_n.copy_(gi_t[:, :, 2 * hidden :])
        ws.states[0].zero_()
        for t in range(steps):
            h = ws.states_t[t]
            ws.gates_t[t].baddbmm_(w_hh, h)
            ws.rz_t[t].sigmoid_()
            torch.addcmul(ws.gi_n_t[t], ws.r_t[t], ws.ghn_t[t], out=ws.n_t[t]).tanh_()
            torch.lerp(ws.n_t[t], h, ws.z_t[t], out=ws.states_t[t + 1])
        ctx.workspace = ws
        ctx.save_for_backward(w_hh, ws.states, ws.gates, ws.n)
        if not any(ctx.needs_input_grad[:3]):  # no backward will come
            ws.busy = False
        return ws.states[1:].transpose(2, 3)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:
        w_hh, states, gates, n = ctx.saved_tensors
        ws: GRUWorkspace = ctx.workspace
        steps, groups, hidden, batch = n.shape
        h_prev = states[:-1]
        r, z, gh_n = gates[:, :, :hidden], gates[:, :, hidden : 2 * hidden], gates[:, :, 2 * hidden :]
        # d(pre-activation)/d(h_t) factors, all known before the loop:
        # a_r: a_n * gh_n * r (1 - r); a_z: (h_prev - n) z (1 - z); gh_n: a_n * r with a_n = (1 - z)(1 - n^2);
        # and z, the direct path h_t -> h_{t+1}
        r_z = gates[:, :, : 2 * hidden]
        slope = torch.addcmul(r_z, r_z, r_z, value=-1.0)  # s (1 - s) of both sigmoid gates at once
        d_an = torch.addcmul(n.new_ones(()), n, n, value=-1.0).mul_(1 - z)
        f = ws.factors.view(steps, groups, 4, hidden, batch)
        torch.mul(d_an * gh_n, slope[:, :, :hidden], out=f[:, :, 0])
        torch.mul(h_prev - n, slope[:, :, hidden:], out=f[:, :, 1])
        torch.mul(d_an, r, out=f[:, :, 2])
        f[:, :, 3] = z
        # dh_{t-1} = go_{t-1} + [W_hh^T | I] [d_gh_t; z_t dh_t]: one matmul per step
        w_aug_t = torch.cat(
            [w_hh, torch.eye(hidden, dtype=w_hh.dtype, device=w_hh.device).expand(groups, -1, -1)], 1
        ).transpose(1, 2)
        ws.d_h.copy_(grad_out.transpose(2, 3))
        for t in range(steps - 1, -1, -1):
            torch.mul(ws.factors_t[t], ws.d_h_t[t].unsqueeze(1), out=ws.d_aug_t[t])
            if t > 0:
                ws.d_h_t[t - 1].baddbmm_(w_aug_t, ws.d_aug_flat_t[t])
        d_gh = ws.d_aug[:, :, : 3 * hidden]
        d_gi = ws.d_gi.permute(0, 2, 3, 1)  # (T, G, 3H, B) view of the (T, B, G, 3H) buffer
        d_gi[:, :, : 2 * hidden] = d_gh[:, :, : 2 * hidden]
        torch.mul(ws.d_h, d_an, out=d_gi[:, :, 2 * hidden :])
        # weight and bias gradients in one batched matmul: sum_t d_gh_t [h_{t-1}; 1]^T
        d_gh_g = d_gh.permute(1, 2, 0, 3).reshape(groups, 3 * hidden, steps * batch)
        h_aug = h_prev.new_ones(groups, hidden + 1, steps, batch)
        h_aug[:, :hidden] = h_prev.permute(1, 2, 0, 3)
        d_wb = torch.bmm(d_gh_g, h_aug.view(groups, hidden + 1, steps * batch).transpose(1, 2))
        ws.busy = False
        return ws.d_gi.transpose(1, 2), d_wb[..., :hidden], d_wb[..., hidden], None


def stacked_gru(
    gi: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor, workspace: GRUWorkspace | None = None
) -> torch.Tensor:
    """Differentiable `StackedGRUSequence`: gi (T, G, B, 3H), w_hh (G, 3H, H), b_hh (G, 3H) -> (T, G, B, H).

    With a `workspace` of the matching shape, its buffers are reused (the output is one of them: consume it, e.g.
    by back-propagating, before the next call with the same workspace)."""
    return StackedGRUSequence.apply(gi, w_hh, b_hh, workspace)
