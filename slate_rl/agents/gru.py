"""A stack of G independent single-layer GRUs run in one time loop, with a hand-written backward pass.

The belief encoders are tiny (hidden size 20, batch 20, 100 steps): their cost is the number of small kernels, not
arithmetic. `nn.GRU` on CPU records every gate operation for autograd; here the G encoders of an agent (actor and
critic) advance together on (G, B, H) tensors, the forward is five kernels per step (one batched matmul gives the
r, z pre-activations with their biases and W_hn h + b_hn at once) and stores what the backward needs, and the
backward is three kernels per step (back-propagation through time written out) plus one batched matmul for the
weight gradient.
Gate order and equations are those of `torch.nn.GRU` (r, z, n; h' = (1 - z) * n + z * h), so the results match
it to float rounding (tested). The per-step buffers and their views can be kept in a `GRUWorkspace` and reused from
one update to the next.
"""

from __future__ import annotations

from typing import Any, Optional

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
    """Buffers of one sequence shape (T, G, B, H) and their per-step views, built once.

    Reuse is safe as long as each forward's backward runs before the next forward that uses the workspace (autograd's
    version counters raise an error otherwise); `busy` makes a second concurrent forward allocate its own buffers.
    """

    def __init__(self, steps: int, groups: int, batch: int, hidden: int, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu") -> None:
        new = lambda *shape: torch.empty(*shape, dtype=dtype, device=device)
        h = hidden
        self.shape = (steps, groups, batch, hidden)
        self.busy = False
        # gates[t] = [r, z, W_hn h_{t-1} + b_hn]: one baddbmm per step from [gi_rz + b_hrz, b_hn]
        self.base, self.gates = new(steps, groups, batch, 3 * h), new(steps, groups, batch, 3 * h)
        self.gi_n, self.n, self.out = (new(steps, groups, batch, h) for _ in range(3))
        self.d_gh, self.d_h = new(steps, groups, batch, 3, h), new(steps, groups, batch, h)
        self.base_t, self.gates_t = self.base.unbind(0), self.gates.unbind(0)
        self.rz_t, self.r_t = self.gates[..., : 2 * h].unbind(0), self.gates[..., :h].unbind(0)
        self.z_t, self.ghn_t = self.gates[..., h : 2 * h].unbind(0), self.gates[..., 2 * h :].unbind(0)
        self.gi_n_t, self.n_t, self.out_t = self.gi_n.unbind(0), self.n.unbind(0), self.out.unbind(0)
        self.dgh_t, self.dh_t = self.d_gh.unbind(0), self.d_h.unbind(0)
        self.dgh_flat = self.d_gh.view(steps, groups, batch, 3 * h).unbind(0)


class StackedGRUSequence(torch.autograd.Function):
    """Hidden states of G GRUs over T steps from a zero initial state.

    forward(gi (T, G, B, 3H) time-major input gates with b_ih included, w_hh (G, 3H, H), b_hh (G, 3H), workspace)
    -> h (T, G, B, H), h[t] = state after inputs 0..t.
    """

    @staticmethod
    def forward(ctx: Any, gi: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor,
                workspace: Optional[GRUWorkspace]) -> torch.Tensor:
        steps, groups, batch, width = gi.shape
        hidden = width // 3
        if workspace is None or workspace.busy or workspace.shape != (steps, groups, batch, hidden):
            workspace = GRUWorkspace(steps, groups, batch, hidden, gi.dtype, gi.device)
        ws = workspace
        ws.busy = True
        torch.add(gi[..., : 2 * hidden], b_hh[:, : 2 * hidden].unsqueeze(1), out=ws.base[..., : 2 * hidden])
        ws.base[..., 2 * hidden :] = b_hh[:, 2 * hidden :].unsqueeze(1)
        ws.gi_n.copy_(gi[..., 2 * hidden :])
        w_t = w_hh.transpose(1, 2)
        h = gi.new_zeros(groups, batch, hidden)
        for t in range(steps):
            torch.baddbmm(ws.base_t[t], h, w_t, out=ws.gates_t[t])
            ws.rz_t[t].sigmoid_()
            torch.addcmul(ws.gi_n_t[t], ws.r_t[t], ws.ghn_t[t], out=ws.n_t[t]).tanh_()
            torch.lerp(ws.n_t[t], h, ws.z_t[t], out=ws.out_t[t])
            h = ws.out_t[t]
        ctx.workspace = ws
        ctx.save_for_backward(w_hh, ws.out, ws.gates, ws.n)
        if not any(ctx.needs_input_grad[:3]):  # no backward will come
            ws.busy = False
        return ws.out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:
        w_hh, out, gates, n = ctx.saved_tensors
        ws: GRUWorkspace = ctx.workspace
        steps, groups, batch, hidden = out.shape
        r, z, gh_n = gates[..., :hidden], gates[..., hidden : 2 * hidden], gates[..., 2 * hidden :]
        h_prev = torch.cat([out.new_zeros(1, groups, batch, hidden), out[:-1]])
        # d(pre-activation)/d(h_t) factors, all known before the loop:
        # a_n: (1 - z)(1 - n^2); a_z: (h_prev - n) z (1 - z); a_r: a_n * gh_n * r (1 - r); gh_n: a_n * r
        d_an = (1 - z) * (1 - n * n)
        factors = torch.cat([d_an * gh_n * r * (1 - r), (h_prev - n) * z * (1 - z), d_an * r], -1)
        f_t = factors.view(steps, groups, batch, 3, hidden).unbind(0)
        grad_out = grad_out.contiguous()
        go_t = grad_out.unbind(0)
        dgh_t, dgh_flat, dh_t, z_t = ws.dgh_t, ws.dgh_flat, ws.dh_t, ws.z_t
        dh_t[steps - 1].copy_(go_t[steps - 1])
        for t in range(steps - 1, -1, -1):
            torch.mul(f_t[t], dh_t[t].unsqueeze(2), out=dgh_t[t])
            if t > 0:
                torch.baddbmm(torch.addcmul(go_t[t - 1], dh_t[t], z_t[t]), dgh_flat[t], w_hh, out=dh_t[t - 1])
        d_gh = ws.d_gh.view(steps, groups, batch, 3 * hidden)
        d_gi = torch.cat([d_gh[..., : 2 * hidden], ws.d_h * d_an], -1)
        d_w = torch.bmm(d_gh.permute(1, 3, 0, 2).reshape(groups, 3 * hidden, steps * batch),
                        h_prev.permute(1, 0, 2, 3).reshape(groups, steps * batch, hidden))
        d_b = d_gh.sum((0, 2))
        ws.busy = False
        return d_gi, d_w, d_b, None


def stacked_gru(gi: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor,
                workspace: Optional[GRUWorkspace] = None) -> torch.Tensor:
    """Differentiable `StackedGRUSequence`: gi (T, G, B, 3H), w_hh (G, 3H, H), b_hh (G, 3H) -> (T, G, B, H).

    With a `workspace` of the matching shape, its buffers are reused (the output is one of them: consume it, e.g.
    by back-propagating, before the next call with the same workspace)."""
    return StackedGRUSequence.apply(gi, w_hh, b_hh, workspace)
