"""The whole training loop of S seeds: one `GroupTrainer` against S `Trainer`s one after another.

SAC (TopK ideal by default) at the paper's shapes on focused_topdown (episodes of 100 steps, hidden 256, belief 20,
batch 20, 1,000 items), a short protocol (warm-up, K = 10, validations, no test); one torch thread, no overlap
thread. Reports wall and CPU seconds of each way, and the speed-up of the group.

    python benchmarks/seed_group_training.py                   # 4 seeds, 300 episodes
    python benchmarks/seed_group_training.py --seeds 10 --episodes 200 --method sac_gems
    python benchmarks/seed_group_training.py --device cuda --seeds 10 --ways group   # the group alone, on a GPU
"""

from __future__ import annotations

import argparse
import time

import torch

from slate_rl import envs
from slate_rl.agents import Trainer, build_agent
from slate_rl.agents.group_training import GroupTrainer
from slate_rl.agents.runtime import configure_cpu
from slate_rl.protocol import Protocol
from slate_rl.rankers.decoders import GeMSDecoder
from slate_rl.rankers.gems import GeMS
from timing import add_device_option, synchronize


def agent(method: str, env: envs.TopicRec, seed: int):
    """The seed's agent; SAC+GeMS acts through an untrained GeMS decoder of the paper's shape (seeded like it)."""
    if method != "sac_gems":
        return build_agent(method, env, seed)
    vae = GeMS(num_items=env.num_items, slate_size=env.slate_size, latent_dim=32, seed=seed)
    decoder = GeMSDecoder(vae.decoder, vae.slate_head, vae.item_embeddings.weight, torch.zeros(32), torch.ones(32))
    return build_agent(method, env, seed, gems_decoder=decoder.to(env.device))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--episodes", type=int, default=300)
    parser.add_argument("--method", default="sac_topk_ideal", choices=["sac_topk_ideal", "sac_gems"])
    parser.add_argument("--ways", nargs="+", default=["alone", "group"], choices=["alone", "group"])
    add_device_option(parser)
    args = parser.parse_args()
    configure_cpu()
    episodes = args.episodes
    protocol = Protocol(
        episodes=episodes,
        warmup_episodes=episodes // 3,
        val_every=episodes // 3,
        val_episodes=50,
        test_episodes=1,
        save_every=episodes,
        parallel_episodes=10,
        overlap_collection=False,
    )
    seeds = list(range(1, args.seeds + 1))
    times = {}
    for way in args.ways:
        wall, cpu = time.perf_counter(), time.process_time()
        if way == "alone":
            for seed in seeds:
                env = envs.make("focused_topdown", device=args.device)
                Trainer(agent(args.method, env, seed), env, protocol).fit()
        else:
            env = envs.make("focused_topdown", device=args.device)
            GroupTrainer([agent(args.method, env, seed) for seed in seeds], env, protocol).fit()
        synchronize(args.device)
        times[way] = (time.perf_counter() - wall, time.process_time() - cpu)
        rate = len(seeds) * episodes / times[way][0]
        print(f"{way}: {times[way][0]:.1f} s wall, {times[way][1]:.1f} s CPU, {rate:.1f} seed-episodes/s", flush=True)
    if len(times) == 2:
        clock = 1 if args.device.type == "cpu" else 0  # CPU time on a (shared) CPU, wall time on a GPU
        ratio = times["alone"][clock] / times["group"][clock]
        print(f"{args.method}, {len(seeds)} seeds, {episodes} episodes: the group is {ratio:.2f}x faster")


if __name__ == "__main__":
    main()
