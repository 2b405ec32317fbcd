"""Benchmark: collecting 10,000 episodes x 100 steps, and the offline dataset formats — write time, size on disk,
load time.

    python benchmarks/bench_offline_formats.py                  # a SAC+GeMS policy, as `collect` plays it
    python benchmarks/bench_offline_formats.py --source mix [--action-dim 32] [--oracle]

--source sac_gems (default) plays a SAC+GeMS agent with the paper's shapes (GRU belief, latent size 32, GeMS decoder
with a 256-512 MLP; untrained weights cost the same as trained ones) through the `collect` stage's own loop
(`collect_source`: deterministic actions, 10,000 users at once, recording latent actions). --source mix plays the
ε-greedy oracle (ε = 0.3) and uniform random slates, half the episodes each, mixed, with random float32 "latent"
actions of --action-dim (0: none). Then the dataset is written and loaded as Minari (HDF5) and as the D4RL-style
.npz, uncompressed and compressed, in a temporary folder. Prints a Markdown table. No MLflow.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from bench_agents import upstream
from slate_rl import envs
from slate_rl.agents import build_agent
from slate_rl.data import EpisodeRecorder, OfflineEpisodes, load_offline, minari_root, mix, write_minari, write_npz
from slate_rl.envs.evaluate import play
from slate_rl.envs.policies import EpsilonGreedyOracle, RandomPolicy
from slate_rl.stage_configs import CollectConfig, CollectPart
from slate_rl.stages.collect import Source, collect_source


def collect_sac_gems(env: envs.TopicRec, episodes: int, oracle: bool) -> OfflineEpisodes:
    """`collect`'s loop on a SAC+GeMS agent (paper shapes), as for a registered expert."""
    agent = build_agent("sac_gems", env, 0, **upstream(env, 0))
    cfg = CollectConfig(env=env.name, preset="paper", quality="expert", episodes=episodes, oracle=oracle)
    version = SimpleNamespace(name=f"slate-rl.{env.name}", version=0, run_id="", tags={"method": "sac_gems"})
    return collect_source(Source(CollectPart("expert", episodes), "expert", agent, env, version), cfg, 0)


def collect_mix(env: envs.TopicRec, episodes: int, action_dim: int, oracle: bool) -> OfflineEpisodes:
    half = episodes // 2
    parts = []
    for source, policy, n in (
        ("expert_noisy", EpsilonGreedyOracle(env.num_items, env.slate_size, 0.3, 1), half),
        ("random", RandomPolicy(env.num_items, env.slate_size, 2), episodes - half),
    ):
        recorder = EpisodeRecorder.for_env(env, n, source, oracle=oracle)
        play(env, policy, n, recorder.on_step)
        parts.append((recorder.finish({"policy": source}), n))
    mixed = mix(parts, seed=0)
    if action_dim:
        rng = np.random.default_rng(0)
        latent = rng.standard_normal((mixed.num_episodes, mixed.horizon, action_dim), dtype=np.float32)
        mixed = dataclasses.replace(mixed, actions=latent)
    return mixed


def size_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(f.stat().st_size for f in files) / 1e6


def timed(action):
    started = time.perf_counter()
    result = action()
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="focused_topdown")
    parser.add_argument("--episodes", type=int, default=10_000)
    parser.add_argument("--source", choices=("sac_gems", "mix"), default="sac_gems", help="what plays the episodes")
    parser.add_argument(
        "--action-dim",
        type=int,
        default=32,
        help="--source mix: size of the random 'latent' actions recorded (0: none)",
    )
    parser.add_argument("--oracle", action="store_true", help="also record user states and bored topics")
    args = parser.parse_args()
    env = envs.make(args.env)
    if args.source == "sac_gems":
        episodes, seconds = timed(lambda: collect_sac_gems(env, args.episodes, args.oracle))
    else:
        episodes, seconds = timed(lambda: collect_mix(env, args.episodes, args.action_dim, args.oracle))
    print(
        f"{args.source}: collected {episodes.num_episodes:,} episodes x {episodes.horizon} steps in {seconds:.1f} s "
        f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)\n"
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="slate-rl-bench-") as tmp:
        root = Path(tmp)
        folder, write_s = timed(lambda: write_minari(episodes, root / "minari", "bench"))
        _, episodes_s = timed(lambda: load_offline(folder, "episodes", oracle=True))
        _, transitions_s = timed(lambda: load_offline(folder, "transitions"))
        _, plain_s = timed(lambda: _iterate_with_minari(root / "minari", "slate-rl/" + args.env + "/bench-v0"))
        rows.append(
            (
                "Minari (HDF5)",
                write_s,
                size_mb(folder),
                episodes_s,
                transitions_s,
                f"plain minari.load_dataset + iterate: {plain_s:.1f} s",
            )
        )
        for compress in (False, True):
            path = root / f"bench_{'compressed' if compress else 'plain'}.npz"
            files, write_s = timed(partial(write_npz, episodes, path, compress=compress))
            _, transitions_s = timed(partial(load_offline, path, "transitions", oracle=True))
            _, episodes_s = timed(partial(load_offline, path, "episodes", oracle=True))
            name = f".npz {'compressed' if compress else 'uncompressed'}"
            note = f"oracle sidecar {size_mb(files[1]):.0f} MB" if len(files) > 1 else ""
            rows.append((name, write_s, sum(size_mb(f) for f in files), episodes_s, transitions_s, note))
    print("| format | write | size on disk | load as episodes | load as transitions | note |")
    print("|---|---|---|---|---|---|")
    for name, write_s, size, episodes_s, transitions_s, note in rows:
        print(f"| {name} | {write_s:.1f} s | {size:.0f} MB | {episodes_s:.1f} s | {transitions_s:.1f} s | {note} |")


def _iterate_with_minari(root: Path, dataset: str) -> int:
    import minari

    with minari_root(root):
        data = minari.load_dataset(dataset)
    return sum(len(episode) for episode in data.iterate_episodes())


if __name__ == "__main__":
    main()
