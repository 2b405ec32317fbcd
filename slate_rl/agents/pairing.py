"""Which clicked item a transition is credited with (bug B1 of the reference).

Step t's action a_t produced obs_{t+1}; h_t already encodes obs_t, which came from the previous action. The corrected
pairing credits transition t with the first clicked item of obs_{t+1}; the reference's pairing uses obs_t (at t = 0
the reset slate).
"""

from __future__ import annotations

import torch


def first_clicks(
    slates: torch.Tensor, clicks: torch.Tensor, reference_pairing: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """For trajectories slates, clicks (B, H + 1, R): (item, has_click), both (B, H), of each transition t.

    item is the first clicked item of obs_{t+1} (obs_t with `reference_pairing`), 0 where there is no click.
    """
    window = slice(0, -1) if reference_pairing else slice(1, None)
    slates, clicks = slates[:, window], clicks[:, window]
    clicked = clicks > 0
    first = clicked.to(torch.uint8).argmax(-1, keepdim=True)  # index of the first maximum = first click
    return slates.gather(-1, first).squeeze(-1), clicked.any(-1)
