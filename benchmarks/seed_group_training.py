"""The whole training loop of S seeds: one `GroupTrainer` against today's ways of training them.

SAC (TopK ideal by default) at the paper's shapes on focused_topdown (episodes of 100 steps, hidden 256, belief 20,
batch 20, 1,000 items), K = 10, validations of 50 users, no test. Each way first plays its warm-up (random episodes,
untimed) and is then timed over the episodes after it (updates every episode), so the figures are post-warm-up
seed-episodes per second. The ways:

    alone     S `Trainer`s one after another, plain update, one thread, no overlap thread
    fused     today's single-seed `train-online` run, one after another: fused update, one torch thread, the next
              block collected on a second thread (overlap_collection)
    workers2  `fused` in two processes at once, the seeds split between them (today's `pipeline --workers 2`)
    group     one `GroupTrainer` for all S seeds (plain update stacked over the seeds), --group-threads threads,
              --group-precision fp32 or bf16
    groups2   `group` in two processes at once, each a group of half the seeds (`pipeline --workers 2
              --group-size S/2`)

    python benchmarks/seed_group_training.py                   # 4 seeds, 300 episodes, alone vs group
    python benchmarks/seed_group_training.py --seeds 10 --episodes 300 --ways fused workers2 group
    python benchmarks/seed_group_training.py --seeds 10 --method sac_gems --ways fused workers2 group
    python benchmarks/seed_group_training.py --seeds 10 --ways workers2 groups2 --group-precision bf16
    python benchmarks/seed_group_training.py --device cuda --seeds 10 --ways group   # the group alone, on a GPU
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from collections.abc import Callable

import torch

from slate_rl import envs
from slate_rl.agents import Trainer, build_agent
from slate_rl.agents.group_training import GroupTrainer
from slate_rl.agents.runtime import configure_cpu
from slate_rl.protocol import Protocol
from slate_rl.rankers.decoders import GeMSDecoder
from slate_rl.rankers.gems import GeMS
from timing import add_device_option, synchronize


def agent(method: str, env: envs.TopicRec, seed: int, fused: bool = False, precision: str = "fp32"):
    """The seed's agent; SAC+GeMS acts through an untrained GeMS decoder of the paper's shape (seeded like it)."""
    overrides = {"fused_update": True} if fused else {"precision": precision}
    if method != "sac_gems":
        return build_agent(method, env, seed, overrides=overrides)
    vae = GeMS(num_items=env.num_items, slate_size=env.slate_size, latent_dim=32, seed=seed)
    decoder = GeMSDecoder(vae.decoder, vae.slate_head, vae.item_embeddings.weight, torch.zeros(32), torch.ones(32))
    return build_agent(method, env, seed, gems_decoder=decoder.to(env.device), overrides=overrides)


def protocol(episodes: int, warmup: int, overlap: bool) -> Protocol:
    return Protocol(
        episodes=warmup + episodes,
        warmup_episodes=warmup,
        val_every=max(1, episodes // 3),
        val_episodes=50,
        test_episodes=1,
        save_every=warmup + episodes,
        parallel_episodes=10,
        overlap_collection=overlap,
    )


def timed_after_warmup(trainer: Trainer | GroupTrainer, warmup: int, device: torch.device) -> tuple[float, float]:
    """Wall and CPU seconds of `trainer`'s episodes after its (untimed) warm-up."""
    trainer.fit(max_episodes=warmup)
    synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    trainer.fit()
    synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def one_by_one(args: argparse.Namespace, seeds: list[int], fused: bool) -> tuple[float, float]:
    """Seconds (wall, CPU) of `seeds` trained one after another by `Trainer`, post-warm-up parts summed."""
    configure_cpu(1)
    total = [0.0, 0.0]
    for seed in seeds:
        env = envs.make("focused_topdown", device=args.device)
        trainer = Trainer(agent(args.method, env, seed, fused), env, protocol(args.episodes, args.warmup, fused))
        for i, seconds in enumerate(timed_after_warmup(trainer, args.warmup, args.device)):
            total[i] += seconds
    return total[0], total[1]


def _worker(args: argparse.Namespace, seeds: list[int], grouped: bool, out: multiprocessing.Queue) -> None:
    out.put(group(args, seeds) if grouped else one_by_one(args, seeds, fused=True))


def two_workers(args: argparse.Namespace, seeds: list[int], grouped: bool) -> tuple[float, float]:
    """`fused` (or `group`) in two processes at once over halves of `seeds`: (the slower worker's wall, the summed
    CPU)."""
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    halves = (seeds[0::2], seeds[1::2])
    workers = [context.Process(target=_worker, args=(args, part, grouped, out)) for part in halves]
    for worker in workers:
        worker.start()
    results = [out.get() for _ in workers]
    for worker in workers:
        worker.join()
    return max(wall for wall, _ in results), sum(cpu for _, cpu in results)


def group(args: argparse.Namespace, seeds: list[int]) -> tuple[float, float]:
    configure_cpu(args.group_threads)
    env = envs.make("focused_topdown", device=args.device)
    members = [agent(args.method, env, seed, precision=args.group_precision) for seed in seeds]
    return timed_after_warmup(
        GroupTrainer(members, env, protocol(args.episodes, args.warmup, False)), args.warmup, args.device
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--episodes", type=int, default=300, help="timed episodes per seed, after the warm-up")
    parser.add_argument("--warmup", type=int, default=100, help="untimed random episodes per seed first")
    parser.add_argument("--method", default="sac_topk_ideal", choices=["sac_topk_ideal", "sac_gems"])
    parser.add_argument(
        "--ways", nargs="+", default=["alone", "group"], choices=["alone", "fused", "workers2", "group", "groups2"]
    )
    parser.add_argument("--group-threads", type=int, default=1, help="torch threads of the group (default 1)")
    parser.add_argument("--group-precision", default="fp32", choices=["fp32", "bf16"], help="the group's updates")
    add_device_option(parser)
    args = parser.parse_args()
    seeds = list(range(1, args.seeds + 1))
    ways: dict[str, Callable[[], tuple[float, float]]] = {
        "alone": lambda: one_by_one(args, seeds, fused=False),
        "fused": lambda: one_by_one(args, seeds, fused=True),
        "workers2": lambda: two_workers(args, seeds, grouped=False),
        "group": lambda: group(args, seeds),
        "groups2": lambda: two_workers(args, seeds, grouped=True),
    }
    rates = {}
    for way in args.ways:
        wall, cpu = ways[way]()
        rates[way] = len(seeds) * args.episodes / wall
        print(f"{way}: {wall:.1f} s wall, {cpu:.1f} s CPU, {rates[way]:.1f} seed-episodes/s", flush=True)
    for way in args.ways:
        ratios = ", ".join(f"{rates[way] / rates[base]:.2f}x {base}" for base in args.ways if base != way)
        print(f"{args.method}, {len(seeds)} seeds x {args.episodes} episodes, {way}: {ratios}")


if __name__ == "__main__":
    main()
