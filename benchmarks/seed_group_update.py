"""Updates per second of S seeds trained together (`SeedGroup`) against one seed's plain (and fused) update.

Paper shapes: SAC (TopK ideal by default) on focused_topdown, batches of 20 episodes x 100 steps, hidden 256,
belief 20, 1,000 items; each seed samples from its own buffer of episodes collected by its own policy. Reports the
median wall and CPU milliseconds per update after warm-up updates, and the per-seed throughput of the group relative
to one seed updated alone (S x t_alone / t_group).

    python benchmarks/seed_group_update.py                       # 10 seeds, one thread
    python benchmarks/seed_group_update.py --seeds 1 4 10 20 --method sac_gems
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from slate_rl import envs
from slate_rl.agents import EXPLORE, TrajectoryBuffer, build_agent, play
from slate_rl.agents.runtime import configure_cpu
from slate_rl.agents.sac import SACAgent
from slate_rl.agents.seed_group import SeedGroup
from slate_rl.rankers.decoders import GeMSDecoder
from slate_rl.rankers.gems import GeMS


def timed(fn: Callable[[], object], warmup: int, repeats: int) -> dict[str, float]:
    """Median wall and CPU milliseconds of `repeats` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return {"wall_ms": 1e3 * statistics.median(wall), "cpu_ms": 1e3 * statistics.median(cpu)}


def make_agent(method: str, env: envs.TopicRec, seed: int, fused: bool) -> SACAgent:
    inputs = {}
    if method == "sac_gems":
        vae = GeMS(num_items=env.num_items, slate_size=env.slate_size, latent_dim=32, seed=seed)
        decoder = GeMSDecoder(vae.decoder, vae.slate_head, vae.item_embeddings.weight, torch.zeros(32), torch.ones(32))
        inputs["gems_decoder"] = decoder
    agent = build_agent(method, env, seed, **inputs, overrides={"fused_update": fused})
    assert isinstance(agent, SACAgent)
    return agent


def filled_buffer(env: envs.TopicRec, agent: SACAgent, episodes: int) -> TrajectoryBuffer:
    buffer = TrajectoryBuffer(episodes, env.episode_length, env.slate_size, env.num_items, agent.stored_action_dim)
    buffer.add(play(env, agent, episodes, EXPLORE))
    return buffer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="sac_topk_ideal", choices=["sac_topk_ideal", "sac_gems"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[10], help="group sizes S to measure")
    parser.add_argument("--updates", type=int, default=10, help="timed updates per measurement (median)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (train-online uses 1)")
    parser.add_argument("--episodes", type=int, default=40, help="episodes in each seed's buffer")
    args = parser.parse_args()
    configure_cpu(args.threads)
    env = envs.make("focused_topdown")
    seeds = list(range(max(args.seeds)))
    agents = [make_agent(args.method, env, seed, fused=False) for seed in seeds]
    buffers = [filled_buffer(env, agent, args.episodes) for agent in agents]
    print(f"{args.method}, {args.threads} thread(s), batch {agents[0].batch_size} x {env.episode_length} steps")

    results = {}
    for label, fused in (("plain", False), ("fused", True)):
        alone = make_agent(args.method, env, 0, fused)
        results[label] = timed(
            lambda a=alone: a.update(buffers[0].sample(a.batch_size, a.generator)), args.warmup, args.updates
        )
        print(f"1 seed, {label} update: {results[label]['wall_ms']:.1f} ms wall, {results[label]['cpu_ms']:.1f} ms CPU")
    for size in args.seeds:
        group = SeedGroup(agents[:size])
        got = timed(lambda g=group, n=size: g.update(g.sample(buffers[:n])), args.warmup, args.updates)
        per_seed = {key: size * results["plain"][key] / got[key] for key in ("wall_ms", "cpu_ms")}
        vs_fused = size * results["fused"]["cpu_ms"] / got["cpu_ms"]
        print(
            f"{size} seeds grouped: {got['wall_ms']:.1f} ms wall, {got['cpu_ms']:.1f} ms CPU per update of all seeds; "
            f"{1e3 * size / got['cpu_ms']:.1f} seed-updates/s CPU; per-seed throughput x{per_seed['cpu_ms']:.2f} "
            f"the plain update (x{per_seed['wall_ms']:.2f} wall), x{vs_fused:.2f} the fused one (CPU)"
        )


if __name__ == "__main__":
    main()
