"""The device a stage runs on (`--device cpu|cuda|cuda:K`): checked before any run is created.

`check_device` only reads the text (no torch import, for the command line); `resolve_device` also checks that the
machine has that device. Everything of a run lives on it: the simulator, the replay buffer, the agent and its
evaluation. Random numbers are still drawn on the CPU and then moved (the simulator's and the agents' alike), so a
run meets the same users and takes the same random actions on every device.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from slate_rl.errors import SlateRLError

if TYPE_CHECKING:
    import torch

DEVICE_TAG = "device"  # the run tag that records where a run ran
_PATTERN = re.compile(r"cpu|cuda(:\d+)?")


def check_device(text: str) -> str:
    """`text` stripped if it names a device slate-rl runs on ('cpu', 'cuda' or 'cuda:K'), else a SlateRLError."""
    name = str(text).strip().lower()
    if not _PATTERN.fullmatch(name):
        raise SlateRLError(f"device must be cpu, cuda or cuda:K with K a GPU number, e.g. cuda:0 (got {text!r})")
    return name


def resolve_device(text: str | torch.device) -> torch.device:
    """The torch device `text` names, checked to exist on this machine (a clear SlateRLError, not a CUDA trace)."""
    import torch

    name = check_device(str(text))
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise SlateRLError(f"CUDA is not available on this machine; use --device cpu (got --device {name})")
    device = torch.device(name)
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise SlateRLError(
            f"--device {name}: this machine has {count} GPU(s), numbered 0 to {count - 1}; choose one of them"
        )
    return device
