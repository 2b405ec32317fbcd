"""Speed of the batched TopicRec simulator against the per-user reference, in user-steps per second.

    python benchmarks/bench_simulator.py            # N = 1, 100, 1,000, 10,000; Markdown table on stdout
    python benchmarks/bench_simulator.py --help

Workload: whole episodes (reset + `episode_length` steps) of a paper environment under the epsilon-greedy oracle
(epsilon 0.5, the logging policy): about half the slots are filled by the simulator's short-term oracle. The
batched simulator plays N users at once (policy: `EpsilonGreedyOracle`); the reference plays users one after
the other with its own per-user logging policy (R Bernoulli draws and a catalogue permutation per step) and
draws from the same kind of stream. Each configuration gets a warm-up run (10 steps), then `--repeats` rounds in
which every configuration plays its episodes once (round robin, so that a change in the machine's load hits all
alike); the table shows medians, the speed-up is the median of the per-round ratios. Time is split into simulator
(reset + step, random draws included) and policy (`act`); user-steps/s counts both unless the column says
otherwise.

Threads: by default torch keeps its own setting (one intra-op thread per core). `--threads` pins it. On a machine
shared with other jobs, `--threads 1` is usually faster for N <= 1,000: the ops are small, and intra-op threads
that wait for a descheduled sibling can make a step several times slower.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from slate_rl.envs import ENV_NAMES, TopicRec, make
from slate_rl.envs.policies import EpsilonGreedyOracle
from slate_rl.envs.randomness import UserStream
from slate_rl.envs.reference import ReferenceTopicRec


@dataclass
class Timing:
    """Seconds spent in one timed run and the user-steps it covered."""

    simulator: float
    policy: float
    user_steps: int
    calls: int  # step() calls: one per step for the batched simulator, one per user and step for the reference

    @property
    def total(self) -> float:
        return self.simulator + self.policy


def batched_episode(env: TopicRec, num_users: int, epsilon: float, seed: int, steps: int) -> Timing:
    """One episode (or its first `steps` steps) of `num_users` users in the batched simulator."""
    policy = EpsilonGreedyOracle(env.num_items, env.slate_size, epsilon, seed=seed, device=env.device)
    sim = pol = 0.0
    with torch.no_grad():
        start = time.perf_counter()
        obs, info = env.reset(num_users)
        sim += time.perf_counter() - start
        for _ in range(steps):
            start = time.perf_counter()
            slates = policy.act(obs, info)
            middle = time.perf_counter()
            obs, _, _, info = env.step(slates)
            if env.device.type == "cuda":
                torch.cuda.synchronize(env.device)
            end = time.perf_counter()
            pol += middle - start
            sim += end - middle
    return Timing(sim, pol, num_users * steps, steps)


def reference_episodes(env: TopicRec, num_users: int, epsilon: float, seed: int, steps: int) -> Timing:
    """`num_users` users played one after the other in the per-user reference (draws from a CPU stream), with the
    reference's per-user logging policy (R Bernoulli(epsilon) draws and a permutation of the catalogue)."""
    p = env.params
    reference = ReferenceTopicRec(p, env.item_embeddings.cpu())
    stream = UserStream(seed)
    policy_generator = torch.Generator().manual_seed(seed + 1)
    probabilities = torch.full((p.slate_size,), epsilon)
    sim = pol = 0.0
    for _ in range(num_users):
        start = time.perf_counter()
        draws = stream.reset_draws(1, p.num_topics, p.topic_size, p.slate_size)
        reference.reset(draws.normal[0], draws.topic_weights[0], draws.click_uniforms[0], int(draws.fallback_topic[0]))
        sim += time.perf_counter() - start
        for _ in range(steps):
            start = time.perf_counter()
            random_slot = torch.bernoulli(probabilities, generator=policy_generator).bool()
            items = torch.randperm(p.num_items, generator=policy_generator)[: p.slate_size]
            slate = torch.where(random_slot, items, torch.full_like(items, -1))
            middle = time.perf_counter()
            reference.step(slate, stream.step_draws(1, p.slate_size)[0])
            end = time.perf_counter()
            pol += middle - start
            sim += end - middle
    return Timing(sim, pol, num_users * steps, num_users * steps)


def round_robin(runs: list[Callable[[int], Timing]], repeats: int, warmup_steps: int, steps: int) -> list[list[Timing]]:
    """Warm every configuration up, then time each once per round for `repeats` rounds, so that a change in the
    machine's load affects all configurations alike. Returns the timings per configuration."""
    for run in runs:
        run(warmup_steps)
    timings: list[list[Timing]] = [[] for _ in runs]
    for _ in range(repeats):
        for run, own in zip(runs, timings, strict=True):
            own.append(run(steps))
    return timings


def summary(timings: list[Timing]) -> dict[str, float]:
    """Medians of user-steps/s (total, simulator only), of the policy's share of the time and of the time per
    step() call (policy included)."""
    return {
        "total": statistics.median(t.user_steps / t.total for t in timings),
        "simulator": statistics.median(t.user_steps / t.simulator for t in timings),
        "policy_share": statistics.median(t.policy / t.total for t in timings),
        "ms_per_call": statistics.median(1000 * t.total / t.calls for t in timings),
    }


def paired_ratio(fast: list[Timing], slow: list[Timing], attribute: str) -> float:
    """Median over rounds of the ratio of user-steps/s, `attribute` being 'total' or 'simulator'."""
    return statistics.median(
        (a.user_steps / getattr(a, attribute)) / (b.user_steps / getattr(b, attribute))
        for a, b in zip(fast, slow, strict=True)
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[2:]),
    )
    parser.add_argument("--sizes", default="1,100,1000,10000", help="numbers of users N (comma-separated)")
    parser.add_argument("--env", default="focused_topdown", choices=ENV_NAMES, help="paper environment")
    parser.add_argument(
        "--item-embeddings",
        default=None,
        help="a .pt / .npy item table (e.g. the paper's); default: the preset's generated table",
    )
    parser.add_argument("--epsilon", type=float, default=0.5, help="share of random slots of the policy")
    parser.add_argument("--repeats", type=int, default=3, help="timed episodes per configuration (median)")
    parser.add_argument("--reference-users", type=int, default=20, help="users played by the reference per run")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="device of the batched simulator (cpu, cuda)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the policies and of the reference stream")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    env = make(args.env, item_embeddings=args.item_embeddings, device=args.device)
    steps = env.episode_length
    sizes = [int(size) for size in args.sizes.split(",")]

    runs = [lambda n_steps, n=size: batched_episode(env, n, args.epsilon, args.seed, n_steps) for size in sizes]
    runs.append(lambda n_steps: reference_episodes(env, args.reference_users, args.epsilon, args.seed, n_steps))
    timings = round_robin(runs, args.repeats, warmup_steps=10, steps=steps)
    rows = [("batched", size, summary(own)) for size, own in zip(sizes, timings[:-1], strict=True)]
    rows.append(("reference (loop over users)", 1, summary(timings[-1])))

    print(
        f"TopicRec speed: {args.env}, epsilon-greedy oracle (epsilon {args.epsilon}), whole episodes of {steps} "
        f"steps, median of {args.repeats} round-robin rounds after a warm-up"
    )
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} intra-op thread(s), {os.cpu_count()} CPU(s), "
        f"device {env.device}, {platform.processor() or platform.machine()}\n"
    )
    print(
        "| simulator | N users | user-steps/s (with policy) | user-steps/s (simulator only) | policy share "
        "| ms per step() call |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, size, result in rows:
        print(
            f"| {name} | {size:,} | {result['total']:,.0f} | {result['simulator']:,.0f} | "
            f"{100 * result['policy_share']:.0f}% | {result['ms_per_call']:.2f} |"
        )
    largest = sizes.index(max(sizes))
    print(
        f"\nSpeed-up of the batched simulator at N = {sizes[largest]:,} over the per-user reference (median of "
        f"the per-round ratios): {paired_ratio(timings[largest], timings[-1], 'total'):,.1f}x with the policy, "
        f"{paired_ratio(timings[largest], timings[-1], 'simulator'):,.1f}x simulator only."
    )


if __name__ == "__main__":
    main()
