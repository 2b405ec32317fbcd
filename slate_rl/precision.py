"""The arithmetic precision of training: 'fp32' (default) or 'bf16'.

With 'bf16' the forward passes of training (the SAC-family agent updates, GeMS pretraining) run under
`torch.autocast` to bfloat16: matrix products read bfloat16 copies of their operands. Everything else stays fp32:
the parameters, their gradients and the optimiser states, and what comes out of a network (cast back to its
parameters' dtype at its output), so that sampling, losses and their reductions are computed in fp32. Acting and
evaluation always run in fp32.

Light to import (no torch at module level): the configs validate `precision` with `check_precision`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from slate_rl.errors import SlateRLError

if TYPE_CHECKING:
    import torch

PRECISIONS = ("fp32", "bf16")
LIGHTNING_PRECISION = {"fp32": "32-true", "bf16": "bf16-mixed"}  # Lightning's Trainer(precision=...)


def check_precision(precision: str) -> str:
    """`precision` if it is one of PRECISIONS, else a SlateRLError naming them."""
    if precision not in PRECISIONS:
        raise SlateRLError(f"precision must be one of {', '.join(PRECISIONS)} (got {precision!r})")
    return precision


def autocast(precision: str, device: torch.device | str) -> torch.autocast:
    """The context for the forward passes of training on `device`: bfloat16 autocast for 'bf16', disabled for
    'fp32'."""
    import torch

    device_type = torch.device(device).type
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=check_precision(precision) == "bf16")
