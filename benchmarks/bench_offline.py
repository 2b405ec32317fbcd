"""Gradient steps per second of the offline algorithms (BC, TD3+BC, IQL, CQL) at their default sizes.

Synthetic logged episodes of focused_topdown's shapes (uniform random slates, ~10% clicks, uniform labels in the
action box); each step samples `batch_episodes` whole episodes and runs the algorithm's update. Reports the wall
milliseconds per step over timed steps after warm-up steps (on a GPU the clock is read after its queued work).

    python benchmarks/bench_offline.py
    python benchmarks/bench_offline.py --device cuda --steps 200
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from slate_rl import envs
from slate_rl.agents import build_agent
from slate_rl.agents.runtime import configure_cpu
from slate_rl.methods import method_ids
from slate_rl.offline.common import OfflineAgent
from slate_rl.offline.training import OfflineData
from timing import add_device_option, synchronize


def synthetic_data(env: envs.TopicRec, episodes: int, action_dim: int, seed: int) -> OfflineData:
    """`episodes` logged episodes with the simulator's shapes and compact dtypes, labels uniform in [-1, 1]."""
    rng = np.random.default_rng(seed)
    shape = (episodes, env.episode_length + 1, env.slate_size)
    slates = rng.integers(0, env.num_items, size=shape).astype(np.int16)
    clicks = (rng.random(shape) < 0.1).astype(np.uint8)
    labels = torch.rand(episodes, env.episode_length, action_dim, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    return OfflineData(slates, clicks, labels, device=env.device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algorithms", nargs="+", default=list(method_ids("offline")), help="offline method ids")
    parser.add_argument("--steps", type=int, default=50, help="timed gradient steps per algorithm")
    parser.add_argument("--warmup", type=int, default=5, help="untimed gradient steps before the timed ones")
    parser.add_argument("--episodes", type=int, default=200, help="episodes in the synthetic dataset")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (train-offline uses 1)")
    parser.add_argument("--seed", type=int, default=0)
    add_device_option(parser)
    args = parser.parse_args()
    configure_cpu(args.threads)
    env = envs.make("focused_topdown", device=args.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), device {args.device}\n")
    print("| algorithm | batch (episodes x steps) | ms per step | steps/s |\n|---|---|---:|---:|")
    for algorithm in args.algorithms:
        agent = build_agent(algorithm, env, args.seed)
        assert isinstance(agent, OfflineAgent)
        data = synthetic_data(env, args.episodes, agent.action_dim, args.seed)
        size = agent.config.batch_episodes

        def step(agent: OfflineAgent = agent, data: OfflineData = data, size: int = size) -> None:
            agent.update(data.sample(size, agent.generator))

        for _ in range(args.warmup):
            step()
        synchronize(args.device)
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        synchronize(args.device)
        seconds = (time.perf_counter() - start) / args.steps
        print(f"| {algorithm} | {size} x {env.episode_length} | {1e3 * seconds:.1f} | {1 / seconds:,.1f} |", flush=True)


if __name__ == "__main__":
    main()
