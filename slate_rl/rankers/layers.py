"""Small network builders shared by the GeMS VAE and its frozen decoder (no Lightning needed to rebuild a decoder)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def mlp(in_dim: int, hidden: Sequence[int], out_dim: int | None = None) -> nn.Sequential:
    """Linear + ReLU for every hidden width, then a final Linear to `out_dim` (none if out_dim is None)."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, int(width)), nn.ReLU()]
        in_dim = int(width)
    if out_dim is not None:
        layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)
