"""Validation of logged (slate, clicks) tensors, shared by GeMS, the action bounds and MF."""

from __future__ import annotations

import torch

from slate_rl.errors import SlateRLError

ID_DTYPES = (torch.int16, torch.int32, torch.int64)
CLICK_DTYPES = (torch.uint8, torch.bool, torch.int8, torch.int16, torch.int32, torch.int64)


def check_logged(slates: torch.Tensor, clicks: torch.Tensor) -> None:
    """Raise SlateRLError unless `slates` and `clicks` are same-shaped (n_sessions, T, R) id / click tensors."""
    if not isinstance(slates, torch.Tensor) or not isinstance(clicks, torch.Tensor):
        raise SlateRLError("slates and clicks must be torch tensors")
    if slates.dim() != 3 or slates.shape != clicks.shape:
        raise SlateRLError(
            f"slates and clicks must both have shape (n_sessions, T, R); got {tuple(slates.shape)} "
            f"and {tuple(clicks.shape)}"
        )
    if slates.dtype not in ID_DTYPES:
        raise SlateRLError(f"slates must hold integer item ids (int16/int32/int64), got {slates.dtype}")
    if clicks.dtype not in CLICK_DTYPES:
        raise SlateRLError(f"clicks must be uint8, bool or integer 0/1, got {clicks.dtype}")
    if slates.shape[0] == 0:
        raise SlateRLError("the logged data hold no session")
