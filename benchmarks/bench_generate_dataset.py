"""Benchmark: the paper-size logged dataset (100,000 sessions x 100 steps) — time, size on disk, peak memory.

    python benchmarks/bench_generate_dataset.py [--n-sessions 100000] [--env focused_topdown]

Writes the dataset folder (no MLflow) to a temporary directory and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

from slate_rl.stage_configs import GenerateDatasetConfig
from slate_rl.stages.generate_dataset import make_env, write_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="focused_topdown")
    parser.add_argument("--n-sessions", type=int, default=100_000)
    parser.add_argument("--chunk-size", type=int, default=10_000)
    args = parser.parse_args()
    config = GenerateDatasetConfig.resolve(args.env, "paper", n_sessions=args.n_sessions, chunk_size=args.chunk_size)
    env = make_env(config)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "dataset"
        started = time.perf_counter()
        stats = write_dataset(env, config, folder)
        seconds = time.perf_counter() - started
        size_mb = sum(f.stat().st_size for f in folder.iterdir()) / 1e6
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB on Linux
    print("| sessions | user-steps | wall time | user-steps/s | size on disk | peak memory | mean return |")
    print("|---|---|---|---|---|---|---|")
    print(
        f"| {args.n_sessions:,} | {args.n_sessions * env.episode_length:,} | {seconds:.1f} s | "
        f"{stats['user_steps_per_second']:,.0f} | {size_mb:.0f} MB | {peak_gb:.2f} GB | {stats['mean_return']:.1f} |"
    )


if __name__ == "__main__":
    main()
