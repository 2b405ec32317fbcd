"""Small MLP heads with PyTorch's default initialisation drawn from the agent's generator.

Every network of the paper's agents has one hidden layer of 256 ReLU units. `TwinQ` packs the two SAC critics into
one set of tensors so that both are evaluated with a single matmul per layer. The plain updates differentiate these
networks with autograd; the fused SAC update has hand-written derivatives of them (`slate_rl.agents.fused_nets`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


def adam(params: Any, lr: float) -> torch.optim.Adam:
    """Adam with PyTorch's default betas and eps (the paper's), the fused CPU kernel where available."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):  # older torch or unsupported device
        return torch.optim.Adam(params, lr=lr, foreach=True)


def default_init(
    shape: tuple[int, ...], fan_in: int, generator: torch.Generator, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): nn.Linear's default for weights and biases, drawn from the (CPU)
    generator and moved to `device`."""
    bound = 1.0 / math.sqrt(fan_in)
    return ((torch.rand(*shape, generator=generator, device="cpu") * 2 - 1) * bound).to(device)


class MLP(nn.Module):
    """in -> hidden (ReLU) -> out, on `device`."""

    def __init__(
        self, in_dim: int, hidden: int, out_dim: int, generator: torch.Generator, device: torch.device | str = "cpu"
    ) -> None:
        super().__init__()
        self.weight1 = nn.Parameter(default_init((hidden, in_dim), in_dim, generator, device))
        self.bias1 = nn.Parameter(default_init((hidden,), in_dim, generator, device))
        self.weight2 = nn.Parameter(default_init((out_dim, hidden), hidden, generator, device))
        self.bias2 = nn.Parameter(default_init((out_dim,), hidden, generator, device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The output in the parameters' dtype (also under bf16 autocast, which runs the matmuls in bfloat16)."""
        hidden = torch.addmm(self.bias1, x, self.weight1.t()).relu_()
        return torch.addmm(self.bias2, hidden, self.weight2.t()).to(self.bias2.dtype)


class TwinQ(nn.Module):
    """Two critics Q_k([state; action]) = w2_k . relu(W1_k [state; action] + b1_k) + b2_k, k = 1, 2, packed.

    weight1 stacks both first layers ((2 * hidden) x (state_dim + action_dim)); `forward` returns (N, 2).
    """

    def __init__(
        self,
        state_dim: int,
        action_dim: int,
        hidden: int,
        generator: torch.Generator,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__()
        in_dim = state_dim + action_dim
        self.hidden = hidden
        nets = [
            [
                default_init((hidden, in_dim), in_dim, generator, device),
                default_init((hidden,), in_dim, generator, device),
                default_init((hidden,), hidden, generator, device),
                default_init((1,), hidden, generator, device),
            ]
            for _ in range(2)
        ]
        self.weight1 = nn.Parameter(torch.cat([nets[0][0], nets[1][0]]))
        self.bias1 = nn.Parameter(torch.cat([nets[0][1], nets[1][1]]))
        self.weight2 = nn.Parameter(torch.stack([nets[0][2], nets[1][2]]))
        self.bias2 = nn.Parameter(torch.cat([nets[0][3], nets[1][3]]))

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return twin_q(self.params(), state, action)

    def params(self) -> list[torch.Tensor]:
        return [self.weight1, self.bias1, self.weight2, self.bias2]


def twin_q(params: list[torch.Tensor], state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """Evaluate packed twin critics with explicit parameters [weight1, bias1, weight2, bias2] -> (N, 2)."""
    return twin_q_stacked([p.unsqueeze(0) for p in params], state.unsqueeze(0), action.unsqueeze(0))[0]


def twin_q_stacked(params: Sequence[torch.Tensor], state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """Evaluate S stacked packed twin critics (each parameter of `TwinQ` with a leading seed dimension) at states
    (S, N, state_dim) and actions (S, N, action_dim) -> (S, N, 2).

    The first layer is one batched matmul over [state; action]: one pass over the hidden layer's memory, where
    separate state and action products take two (the memory traffic of the hidden layer, not arithmetic, is what these
    critics cost). Under bf16 autocast the first layer runs in bfloat16, the output layer (a product with weight2) in
    the parameters' dtype. A seed's critics give the same float32 values alone (S = 1, `twin_q`) as stacked with other
    seeds, so a seed trained in a group follows the seed trained alone bit for bit.
    """
    weight1, bias1, weight2, bias2 = params
    inputs = torch.cat([state, action], -1)
    hidden = torch.baddbmm(bias1.unsqueeze(1), inputs, weight1.transpose(1, 2)).relu_()
    hidden = hidden.view(*state.shape[:2], 2, -1)
    return (hidden * weight2.unsqueeze(1)).sum(-1) + bias2.unsqueeze(1)
