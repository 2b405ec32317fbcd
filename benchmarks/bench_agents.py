"""Speed of the online agents and of the training loop on this machine; projects a paper-preset run.

Measures, per method: milliseconds per gradient update (B = 20 trajectories of 100 steps from a buffer of random
episodes; the plain autograd update and, for methods that have one, the fused update), collection throughput
(episodes/s, K users played together, random warm-up and exploring actions), validation (200 users as one batch) and
test (500 users as one batch) times, then projects a paper run: 2,000 warm-up episodes + 98,000 learning episodes
with one update each + 100 validations + the test.

Both wall-clock and process CPU time are reported: on a machine shared with other jobs the wall clock also counts
time spent waiting for a core; the CPU time is what the run itself consumes (the wall time of an idle machine with
one thread).

    python benchmarks/bench_agents.py                      # SAC+GeMS, K = 1, 10, 50, 100
    python benchmarks/bench_agents.py --methods all --parallel 50
    python benchmarks/bench_agents.py --methods all --updates-only   # plain vs fused update times
    python benchmarks/bench_agents.py --device cuda --methods sac_topk_ideal sac_gems --parallel 1 10 100

On a GPU (`--device cuda`) the clocks are read after the device's queued work is done; the fused updates, CPU
kernels, are not measured there, and the CPU time is the host thread's (it includes waiting for the GPU).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from slate_rl import envs
from slate_rl.agents import (
    EXPLORE,
    GREEDY,
    RANDOM,
    Hooks,
    Protocol,
    Trainer,
    TrajectoryBuffer,
    build_agent,
    play,
)
from slate_rl.agents.base import Agent
from slate_rl.agents.runtime import configure_cpu
from slate_rl.methods import ONLINE_FAMILIES, get_method, method_ids
from slate_rl.rankers.decoders import GeMSDecoder
from slate_rl.rankers.gems import GeMS
from timing import add_device_option, synchronize, timed

PAPER = dict(episodes=100_000, warmup=2_000, validations=100, val_episodes=200, test_episodes=500)


def upstream(env: envs.TopicRec, seed: int) -> dict:
    """Stand-ins with the paper's shapes: an (untrained) GeMS decoder (d = 32, MLP 256-512) and an MF table."""
    vae = GeMS(num_items=env.num_items, slate_size=env.slate_size, latent_dim=32, seed=seed)
    decoder = GeMSDecoder(vae.decoder, vae.slate_head, vae.item_embeddings.weight, torch.zeros(32), torch.ones(32))
    mf = torch.randn(env.num_items, env.embedding_dim, generator=torch.Generator().manual_seed(seed)) * 0.3
    return {"gems_decoder": decoder, "mf_table": mf}


def has_fused_update(method: str) -> bool:
    config = get_method(method).load_config()
    return config is not None and "fused_update" in {field.name for field in dataclasses.fields(config)}


def bench_updates(agent: Agent, env: envs.TopicRec, repeats: int) -> dict[str, float]:
    buffer = TrajectoryBuffer(
        200,
        env.episode_length,
        env.slate_size,
        env.num_items,
        agent.stored_action_dim,
        agent.privileged_dim,
        device=env.device,
    )
    for _ in range(2):
        buffer.add(play(env, agent, 50, EXPLORE))
    batch_size = agent.batch_size

    def step() -> None:
        agent.update(buffer.sample(batch_size, agent.generator))

    timed(step, 3, env.device)
    wall, cpu = timed(step, repeats, env.device)
    return {
        "wall_ms": 1e3 * statistics.median(wall),
        "cpu_ms": 1e3 * statistics.median(cpu),
        "cpu_min_ms": 1e3 * min(cpu),
    }


def bench_collection(agent: Agent, env: envs.TopicRec, parallel: int, mode: str, episodes: int) -> dict[str, float]:
    blocks = max(1, episodes // parallel)
    play(env, agent, parallel, mode, 0)
    wall, cpu = timed(lambda: play(env, agent, parallel, mode, 3000), blocks, env.device)
    done = blocks * parallel
    return {"wall_eps": done / sum(wall), "cpu_eps": done / sum(cpu)}


def bench_evaluation(agent: Agent, env: envs.TopicRec, users: int, repeats: int = 2) -> dict[str, float]:
    wall, cpu = timed(lambda: play(env, agent, users, GREEDY), repeats, env.device)
    return {"wall_s": min(wall), "cpu_s": min(cpu)}


def bench_fit(
    method: str,
    env_name: str,
    inputs: dict,
    seed: int,
    parallel: int,
    pipeline: bool,
    episodes: int,
    fused: bool,
    device: torch.device,
) -> float:
    """Wall seconds per learning episode (collection, update, overlap) of the real loop after a short warm-up."""
    warmup = max(parallel, 20)
    protocol = Protocol(
        episodes=warmup + episodes,
        warmup_episodes=warmup,
        val_every=warmup + episodes,
        val_episodes=1,
        test_episodes=1,
        parallel_episodes=parallel,
        overlap_collection=pipeline,
        save_every=10**9,
    )
    env = envs.make(env_name, device=device)
    marks: dict[int, float] = {}

    def mark(episode: int, total: int) -> None:
        synchronize(device)
        marks.setdefault(episode, time.perf_counter())

    trainer = Trainer(
        build_agent(method, env, seed, **inputs, overrides={"fused_update": True} if fused else None),
        env,
        protocol,
        Hooks(on_progress=mark),
    )
    trainer.fit()
    first = min(e for e in marks if e > warmup)  # the first learning block's end (its collection is excluded)
    last = max(e for e in marks if e < warmup + episodes)  # before the final validation
    return (marks[last] - marks[first]) / (last - first)


def project(
    update_ms: float, random_eps: float, explore_eps: float, val_s: float, test_s: float, updates: bool
) -> dict[str, float]:
    """Seconds of a paper run, by phase."""
    learn = PAPER["episodes"] - PAPER["warmup"]
    out = {
        "collect": PAPER["warmup"] / random_eps + learn / explore_eps,
        "update": learn * update_ms / 1e3 if updates else 0.0,
        "evaluate": PAPER["validations"] * val_s + test_s,
    }
    out["total"] = sum(out.values())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["sac_gems"],
        help=f"method ids or 'all' ({', '.join(method_ids(ONLINE_FAMILIES))})",
    )
    parser.add_argument("--env", default="focused_topdown", help="preset environment")
    parser.add_argument(
        "--parallel",
        nargs="+",
        type=int,
        default=[1, 10, 50, 100],
        help="K values (episodes collected together) to measure collection at",
    )
    parser.add_argument("--updates", type=int, default=30, help="timed updates per method")
    parser.add_argument("--collect-episodes", type=int, default=200, help="episodes timed per collection setting")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 recommended)")
    parser.add_argument(
        "--fit",
        type=int,
        default=0,
        metavar="EPISODES",
        help="also time the real loop: this many learning episodes after a short warm-up, "
        "for each K of --parallel, with and without the collection pipeline",
    )
    parser.add_argument(
        "--fused-update",
        action="store_true",
        help="agents use the fused update (fused_update=true) for collection, projection and --fit",
    )
    parser.add_argument("--updates-only", action="store_true", help="time the updates only (plain and fused)")
    parser.add_argument("--seed", type=int, default=0)
    add_device_option(parser)
    args = parser.parse_args()
    if args.fused_update and args.device.type != "cpu":
        parser.error("--fused-update runs fused CPU kernels: drop it or use --device cpu")
    configure_cpu(args.threads)
    methods = list(method_ids(ONLINE_FAMILIES)) if args.methods == ["all"] else args.methods
    env = envs.make(args.env, device=args.device)
    inputs = upstream(env, args.seed)
    where = torch.cuda.get_device_name(args.device) if args.device.type == "cuda" else "cpu"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), env {args.env}, device {where}")
    for method in methods:
        fused = has_fused_update(method) and args.device.type == "cpu"
        plain_agent = build_agent(method, env, args.seed, **inputs)
        fused_agent = build_agent(method, env, args.seed, **inputs, overrides={"fused_update": True}) if fused else None
        agent = fused_agent if args.fused_update and fused_agent is not None else plain_agent
        print(f"\n== {method} ({get_method(method).display})")
        update = None
        if agent.learns:
            timings = {"plain": bench_updates(plain_agent, env, args.updates)}
            if fused_agent is not None:
                timings["fused"] = bench_updates(fused_agent, env, args.updates)
            for path, times in timings.items():
                print(
                    f"{path} update: {times['cpu_ms']:.1f} ms CPU (min {times['cpu_min_ms']:.1f}), "
                    f"{times['wall_ms']:.1f} ms wall  [median of {args.updates}]"
                )
            if "fused" in timings:
                ratio = timings["plain"]["cpu_ms"] / timings["fused"]["cpu_ms"]
                print(f"the fused update is {ratio:.2f}x as fast as the plain one (CPU time)")
            update = timings["fused" if agent is fused_agent else "plain"]
        if args.updates_only:
            continue
        val = bench_evaluation(agent, env, PAPER["val_episodes"])
        test = bench_evaluation(agent, env, PAPER["test_episodes"])
        print(
            f"validation (200 users, one batch): {val['cpu_s']:.2f} s CPU, {val['wall_s']:.2f} s wall; "
            f"test (500 users): {test['cpu_s']:.2f} s CPU, {test['wall_s']:.2f} s wall"
        )
        if not agent.learns:
            continue
        print(
            f"{'K':>5} {'random eps/s (CPU | wall)':>28} {'explore eps/s (CPU | wall)':>29} "
            f"{'projected paper run, min (CPU | wall): collect + update + eval = total':>72}"
        )

        def fmt(p: dict[str, float]) -> str:
            return (
                " + ".join(f"{p[part] / 60:.1f}" for part in ("collect", "update", "evaluate"))
                + f" = {p['total'] / 60:.1f}"
            )

        for k in args.parallel:
            rnd = bench_collection(agent, env, k, RANDOM, args.collect_episodes)
            exp = bench_collection(agent, env, k, EXPLORE, args.collect_episodes)
            cpu = project(update["cpu_ms"], rnd["cpu_eps"], exp["cpu_eps"], val["cpu_s"], test["cpu_s"], True)
            wall = project(update["wall_ms"], rnd["wall_eps"], exp["wall_eps"], val["wall_s"], test["wall_s"], True)
            print(
                f"{k:>5} {rnd['cpu_eps']:>13.1f} | {rnd['wall_eps']:<12.1f} {exp['cpu_eps']:>13.1f} | "
                f"{exp['wall_eps']:<13.1f} {fmt(cpu):>34} | {fmt(wall)}"
            )
        if args.fit:
            for k in args.parallel:
                random_eps = bench_collection(agent, env, k, RANDOM, args.collect_episodes)["wall_eps"]
                for pipeline in (True, False):
                    learn = bench_fit(
                        method, env.name, inputs, args.seed, k, pipeline, args.fit, agent is fused_agent, args.device
                    )
                    total = (
                        PAPER["warmup"] / random_eps
                        + (PAPER["episodes"] - PAPER["warmup"]) * learn
                        + PAPER["validations"] * val["wall_s"]
                        + test["wall_s"]
                    )
                    print(
                        f"real loop K={k:<4} pipeline={pipeline!s:<5}: {1e3 * learn:.1f} ms wall per learning "
                        f"episode (collection + update) -> projected paper run {total / 60:.1f} min wall"
                    )


if __name__ == "__main__":
    main()
