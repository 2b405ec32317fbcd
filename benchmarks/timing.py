"""What the benchmarks share: the `--device` option and waiting for a GPU's queued work before reading a clock."""

from __future__ import annotations

import argparse

import torch

from slate_rl.devices import resolve_device


def add_device_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        default="cpu",
        type=resolve_device,
        help="where the simulator, buffers and networks live: cpu, cuda or cuda:K (default cpu)",
    )


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on `device` (CUDA runs asynchronously; a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
