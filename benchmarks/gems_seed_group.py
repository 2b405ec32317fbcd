"""Training throughput of S GeMS VAEs stacked (`GeMSGroup`, `pretrain-gems --seeds`) against one GeMS trained alone.

Paper shapes: 1,000 items, slates of 10, item embeddings of 20, latent d = 32, encoder [512, 256], decoder [256, 512],
batches of 256 synthetic logged slates (each seed its own batch, as its own shuffling gives it). One seed alone takes
the plain step of a single-seed run (`GeMS.loss_terms`, backward, fused Adam); a group of S takes one stacked step.
Reports the median wall and CPU milliseconds per step after warm-up steps and the summed throughput in slates/s
(S x 256 slates per group step), measured in rounds, each configuration keeping its best median.

    python benchmarks/gems_seed_group.py                        # 1 seed alone vs 10 stacked, 1 thread, 3 rounds
    python benchmarks/gems_seed_group.py --seeds 1 4 10 --steps 20 --rounds 3
    python benchmarks/gems_seed_group.py --device cuda --seeds 1 10 20
    python benchmarks/gems_seed_group.py --precision bf16             # the group in bf16, the seed alone in fp32
"""

from __future__ import annotations

import argparse
import os
import statistics
from collections.abc import Callable

import torch

from slate_rl.rankers.data import SeedBatches, SlateSamples
from slate_rl.rankers.gems import GeMS
from slate_rl.rankers.gems_group import GeMSGroup
from timing import add_device_option, timed

BATCH = 256


def synthetic_samples(n: int, device: torch.device) -> SlateSamples:
    """Uniform random slates (int16) with ~10% clicks (uint8): the shapes and dtypes of logged data."""
    generator = torch.Generator().manual_seed(0)
    slates = torch.randint(0, 1000, (n, 10), generator=generator, dtype=torch.int16)
    clicks = (torch.rand(n, 10, generator=generator) < 0.1).to(torch.uint8)
    return SlateSamples(slates, clicks).to(device)


def single_step(samples: SlateSamples, device: torch.device) -> Callable[[], object]:
    """One seed's training step as its single-seed run takes it."""
    model = GeMS(seed=0).to(device)
    optimiser = model.configure_optimizers()
    batch = samples.batch(slice(0, BATCH))

    def step() -> None:
        loss = model.loss_terms(*batch)["loss"]
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()

    return step


def group_step(samples: SlateSamples, size: int, device: torch.device, precision: str) -> Callable[[], object]:
    """One stacked step of `size` seeds, each on its own batch."""
    group = GeMSGroup([GeMS(seed=seed) for seed in range(size)], device, precision)
    orders = [torch.Generator().manual_seed(seed) for seed in range(size)]
    batch = next(iter(SeedBatches(samples, BATCH, True, orders)))
    return lambda: group.step(*batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[10], help="group sizes S to measure")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement (median)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before each measurement")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over all configurations (best kept)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="the group's (alone: fp32)")
    add_device_option(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    samples = synthetic_samples(BATCH * 4, args.device)
    print(f"GeMS paper shapes, batch {BATCH}, {args.threads} thread(s), device {args.device}, group {args.precision}")
    print(f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    runs: dict[int, Callable[[], object]] = {0: single_step(samples, args.device)}  # 0: one seed alone
    runs.update({size: group_step(samples, size, args.device, args.precision) for size in args.seeds})
    best: dict[int, dict[str, float]] = {}
    for _ in range(args.rounds):
        for size, run in runs.items():
            timed(run, args.warmup, args.device)
            wall, cpu = timed(run, args.steps, args.device)
            got = {"wall_ms": 1e3 * statistics.median(wall), "cpu_ms": 1e3 * statistics.median(cpu)}
            best[size] = {key: min(value, best.get(size, got)[key]) for key, value in got.items()}
    print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    alone = best[0]
    print(
        f"1 seed alone (single-seed step): {alone['wall_ms']:.1f} ms wall, {alone['cpu_ms']:.1f} ms CPU per step, "
        f"{1e3 * BATCH / alone['wall_ms']:,.0f} slates/s"
    )
    for size in args.seeds:
        got = best[size]
        print(
            f"{size} seeds stacked: {got['wall_ms']:.1f} ms wall, {got['cpu_ms']:.1f} ms CPU per step of all seeds, "
            f"{1e3 * size * BATCH / got['wall_ms']:,.0f} slates/s summed "
            f"(x{size * alone['wall_ms'] / got['wall_ms']:.2f} one seed alone, wall)"
        )


if __name__ == "__main__":
    main()
