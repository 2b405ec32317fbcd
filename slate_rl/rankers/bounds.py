"""RL action boxes: from an item table (TopK, kNN) or from the GeMS encoder's aggregated posterior."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from slate_rl.errors import SlateRLError
from slate_rl.rankers.checks import check_logged

if TYPE_CHECKING:
    from slate_rl.rankers.gems import GeMS


@dataclass(frozen=True)
class ActionBounds:
    """Per-dimension box centre +- scale (the SAC actor outputs centre + scale * tanh(x))."""

    center: torch.Tensor
    scale: torch.Tensor

    @classmethod
    def from_min_max(cls, low: torch.Tensor, high: torch.Tensor) -> ActionBounds:
        """Box [low, high]: scale = (high - low) / 2, centre = low + scale (as the reference computes it)."""
        if low.shape != high.shape or bool((high < low).any()):
            raise SlateRLError("action bounds need low <= high, with equal shapes")
        scale = (high - low) / 2
        return cls(low + scale, scale)

    @property
    def low(self) -> torch.Tensor:
        return self.center - self.scale

    @property
    def high(self) -> torch.Tensor:
        return self.center + self.scale

    def tile(self, times: int) -> ActionBounds:
        """The box repeated `times` times, block after block (slot-major: block r = slot r)."""
        return ActionBounds(self.center.repeat(times), self.scale.repeat(times))


def table_bounds(item_table: torch.Tensor) -> ActionBounds:
    """Per-dimension min / max of an (N, D) item table (TopK ranker's box)."""
    if item_table.dim() != 2 or item_table.shape[0] == 0:
        raise SlateRLError(f"item_table must be a non-empty (N, D) tensor (got shape {tuple(item_table.shape)})")
    table = item_table.detach().float()
    return ActionBounds.from_min_max(table.min(dim=0).values, table.max(dim=0).values)


@torch.no_grad()
def gems_action_bounds(
    vae: GeMS, slates: torch.Tensor, clicks: torch.Tensor, num_sessions: int = 1000, chunk_size: int = 16384
) -> ActionBounds:
    """GeMS latent box from the encoder over the first `num_sessions` logged sessions (all of them if fewer).

    For every slate: sigma = exp(logvar / 2) (the proper standard deviation, whatever the training convention);
    per latent dimension low = min(mu - sigma), high = max(mu + sigma). Runs the encoder on chunks of `chunk_size`
    slates (one pass, bounded memory) on the VAE's device.
    """
    check_logged(slates, clicks)
    if int(num_sessions) < 1 or int(chunk_size) < 1:
        raise SlateRLError(f"num_sessions and chunk_size must be >= 1 (got {num_sessions}, {chunk_size})")
    width = slates.shape[-1]
    flat_slates = slates[: int(num_sessions)].reshape(-1, width)
    flat_clicks = clicks[: int(num_sessions)].reshape(-1, width)
    device = vae.item_embeddings.weight.device
    lows, highs = [], []
    for start in range(0, flat_slates.shape[0], int(chunk_size)):
        chunk = slice(start, start + int(chunk_size))
        mu, logvar = vae.encode(flat_slates[chunk].to(device, torch.long), flat_clicks[chunk].to(device, torch.float32))
        sigma = (0.5 * logvar).exp()
        lows.append((mu - sigma).amin(dim=0))
        highs.append((mu + sigma).amax(dim=0))
    return ActionBounds.from_min_max(torch.stack(lows).amin(dim=0), torch.stack(highs).amax(dim=0))
