"""Benchmark: the offline dataset formats on 10,000 episodes x 100 steps — write time, size on disk, load time.

    python benchmarks/bench_offline_formats.py [--episodes 10000] [--env focused_topdown] [--action-dim 32] [--oracle]

Plays two sources on the simulator (the ε-greedy oracle with ε = 0.3 and uniform random slates, half the episodes
each, mixed), attaches random float32 "latent" actions of --action-dim (0: none), then writes and loads the mixed
dataset as Minari (HDF5) and as the D4RL-style .npz, uncompressed and compressed, in a temporary folder. Prints a
Markdown table. No MLflow.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from slate_rl import envs
from slate_rl.data import (EpisodeRecorder, OfflineEpisodes, load_offline, minari_root, mix, write_minari,
                           write_npz)
from slate_rl.envs.evaluate import play
from slate_rl.envs.policies import EpsilonGreedyOracle, RandomPolicy


def collect(env: envs.TopicRec, episodes: int, action_dim: int, oracle: bool) -> OfflineEpisodes:
    half = episodes // 2
    parts = []
    for source, policy, n in (("expert_noisy", EpsilonGreedyOracle(env.num_items, env.slate_size, 0.3, 1), half),
                              ("random", RandomPolicy(env.num_items, env.slate_size, 2), episodes - half)):
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
    parser.add_argument("--action-dim", type=int, default=32, help="size of the recorded policy action (0: none)")
    parser.add_argument("--oracle", action="store_true", help="also record user states and bored topics")
    args = parser.parse_args()
    env = envs.make(args.env)
    episodes, seconds = timed(lambda: collect(env, args.episodes, args.action_dim, args.oracle))
    print(f"collected {episodes.num_episodes:,} episodes x {episodes.horizon} steps in {seconds:.1f} s "
          f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)\n")
    rows = []
    with tempfile.TemporaryDirectory(prefix="slate-rl-bench-") as tmp:
        root = Path(tmp)
        folder, write_s = timed(lambda: write_minari(episodes, root / "minari", "bench"))
        _, episodes_s = timed(lambda: load_offline(folder, "episodes", oracle=True))
        _, transitions_s = timed(lambda: load_offline(folder, "transitions"))
        _, plain_s = timed(lambda: _iterate_with_minari(root / "minari", "slate-rl/" + args.env + "/bench-v0"))
        rows.append(("Minari (HDF5)", write_s, size_mb(folder), episodes_s, transitions_s,
                     f"plain minari.load_dataset + iterate: {plain_s:.1f} s"))
        for compress in (False, True):
            path = root / f"bench_{'compressed' if compress else 'plain'}.npz"
            files, write_s = timed(lambda: write_npz(episodes, path, compress=compress))
            _, transitions_s = timed(lambda: load_offline(path, "transitions", oracle=True))
            _, episodes_s = timed(lambda: load_offline(path, "episodes", oracle=True))
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
