"""Benchmark: `compare` over N finished train_online runs (synthetic runs written into a temporary store).

    python benchmarks/bench_compare.py [--runs 500]

Times the whole stage (search, metric histories, table, aggregates, figures, artifacts) and prints a Markdown row.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        from slate_rl.methods import method_ids
        from slate_rl.reporting import ENV_NAMES
        from slate_rl.stages import compare
        from synthetic_runs import add_train_online_run

        rng = np.random.default_rng(0)
        cells = list(itertools.product(method_ids(), ENV_NAMES))
        started = time.perf_counter()
        for i in range(args.runs):
            method, env = cells[i % len(cells)]
            curve = [(e, float(rng.normal(100, 10))) for e in range(1000, 101000, 1000)]
            add_train_online_run(method, env, i // len(cells), float(rng.normal(100, 10)), val_curve=curve)
        filled = time.perf_counter() - started
        started = time.perf_counter()
        compare.run(compare.CompareConfig.resolve("all", "all", out=f"{tmp}/report"))
        seconds = time.perf_counter() - started
    print("| runs | validation points per run | filling the store | compare |")
    print("|---|---|---|---|")
    print(f"| {args.runs} | 100 | {filled:.0f} s | {seconds:.1f} s |")


if __name__ == "__main__":
    main()
