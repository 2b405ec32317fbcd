"""Updates per second of S seeds trained together (`SeedGroup`) against one seed's plain (and fused) update.

Paper shapes: SAC (TopK ideal by default) on focused_topdown, batches of 20 episodes x 100 steps, hidden 256,
belief 20, 1,000 items; each seed samples from its own buffer of episodes collected by its own policy. Reports the
median wall and CPU milliseconds per update after warm-up updates, and the per-seed throughput of the group relative
to one seed updated alone (S x t_alone / t_group). Configurations are measured in rounds and each keeps its best
median, which is robust to other jobs on a shared machine.

    python benchmarks/seed_group_update.py                       # 10 seeds, one thread, 3 rounds
    python benchmarks/seed_group_update.py --seeds 1 4 10 20 --method sac_gems
    python benchmarks/seed_group_update.py --device cuda --seeds 1 10 20 50

On a GPU (`--device cuda`) the clocks are read after the device's queued work is done, the fused update (CPU
kernels) is not measured, and the ratios compare wall times (the CPU time then only counts the host thread).
"""

from __future__ import annotations

import argparse
import os
import statistics
from collections.abc import Callable

import torch

from slate_rl import envs
from slate_rl.agents import EXPLORE, TrajectoryBuffer, build_agent, play
from slate_rl.agents.runtime import configure_cpu
from slate_rl.agents.sac import SACAgent
from slate_rl.agents.seed_group import SeedGroup
from slate_rl.rankers.decoders import GeMSDecoder
from slate_rl.rankers.gems import GeMS
from timing import add_device_option, timed


def median_ms(fn: Callable[[], object], warmup: int, repeats: int, device: torch.device) -> dict[str, float]:
    """Median wall and CPU milliseconds of `repeats` calls after `warmup` calls."""
    timed(fn, warmup, device)
    wall, cpu = timed(fn, repeats, device)
    return {"wall_ms": 1e3 * statistics.median(wall), "cpu_ms": 1e3 * statistics.median(cpu)}


def make_agent(method: str, env: envs.TopicRec, seed: int, fused: bool, precision: str = "fp32") -> SACAgent:
    inputs = {}
    if method == "sac_gems":
        vae = GeMS(num_items=env.num_items, slate_size=env.slate_size, latent_dim=32, seed=seed)
        decoder = GeMSDecoder(vae.decoder, vae.slate_head, vae.item_embeddings.weight, torch.zeros(32), torch.ones(32))
        inputs["gems_decoder"] = decoder
    agent = build_agent(method, env, seed, **inputs, overrides={"fused_update": fused, "precision": precision})
    assert isinstance(agent, SACAgent)
    return agent


def filled_buffer(env: envs.TopicRec, agent: SACAgent, episodes: int) -> TrajectoryBuffer:
    buffer = TrajectoryBuffer(
        episodes, env.episode_length, env.slate_size, env.num_items, agent.stored_action_dim, device=env.device
    )
    buffer.add(play(env, agent, episodes, EXPLORE))
    return buffer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="sac_topk_ideal", choices=["sac_topk_ideal", "sac_gems"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[10], help="group sizes S to measure")
    parser.add_argument("--updates", type=int, default=10, help="timed updates per measurement (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed updates before each measurement")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over all configurations (best kept)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (train-online uses 1)")
    parser.add_argument("--episodes", type=int, default=40, help="episodes in each seed's buffer")
    add_device_option(parser)
    args = parser.parse_args()
    configure_cpu(args.threads)
    env = envs.make("focused_topdown", device=args.device)
    # the fused update runs CPU kernels: on a GPU the group is compared with the plain update, by wall time
    paths = (("plain", False), ("fused", True)) if args.device.type == "cpu" else (("plain", False),)
    metric, clock = ("cpu_ms", "CPU") if args.device.type == "cpu" else ("wall_ms", "wall")
    seeds = list(range(max(args.seeds)))
    agents = [make_agent(args.method, env, seed, fused=False) for seed in seeds]
    buffers = [filled_buffer(env, agent, args.episodes) for agent in agents]
    print(
        f"{args.method}, {args.threads} thread(s), device {args.device}, "
        f"batch {agents[0].batch_size} x {env.episode_length} steps"
    )
    print(f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")

    runs: dict[str, Callable[[], object]] = {}
    for label, fused in paths:
        alone = make_agent(args.method, env, 0, fused)
        runs[label] = lambda a=alone: a.update(buffers[0].sample(a.batch_size, a.generator))
    for size in args.seeds:
        group = SeedGroup(agents[:size])
        runs[f"group of {size}"] = lambda g=group, n=size: g.update(g.sample(buffers[:n]))
    # rounds over all configurations, each keeping its best median: the machine may be shared
    best: dict[str, dict[str, float]] = {}
    for _ in range(args.rounds):
        for label, run in runs.items():
            got = median_ms(run, args.warmup, args.updates, args.device)
            best[label] = {key: min(value, best.get(label, got)[key]) for key, value in got.items()}
    print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    for label, _ in paths:
        print(f"1 seed alone, {label} update: {best[label]['wall_ms']:.1f} ms wall, {best[label]['cpu_ms']:.1f} ms CPU")
    for size in args.seeds:
        got = best[f"group of {size}"]
        ratio = {key: size * best["plain"][key] / got[key] for key in ("wall_ms", "cpu_ms")}
        vs_fused = (
            f", x{size * best['fused'][metric] / got[metric]:.2f} its fused update ({clock})" if "fused" in best else ""
        )
        print(
            f"{size} seeds grouped: {got['wall_ms']:.1f} ms wall, {got['cpu_ms']:.1f} ms CPU per update of all seeds "
            f"({got[metric] / size:.1f} ms {clock} per seed, {1e3 * size / got[metric]:.1f} seed-updates/s); "
            f"per-seed throughput x{ratio['cpu_ms']:.2f} one seed's plain update (x{ratio['wall_ms']:.2f} wall)"
            f"{vs_fused}"
        )


if __name__ == "__main__":
    main()
