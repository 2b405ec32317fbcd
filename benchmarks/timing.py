"""What the benchmarks share: the `--device` option and waiting for a GPU's queued work before reading a clock."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

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


def timed(fn: Callable[[], object], repeats: int, device: torch.device) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds of `repeats` calls (each ends when `device` has done its work)."""
    wall, cpu = [], []
    for _ in range(repeats):
        synchronize(device)
        w, c = time.perf_counter(), time.process_time()
        fn()
        synchronize(device)
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return wall, cpu
