"""Benchmark: the tracking cost of one stage run against a tracking store.

    python benchmarks/bench_tracking_store.py [--tracking-uri URI] [--runs 10]

One run of slate-rl's own run handling (`stage_run`: its tags, 30 params, 1,000 metric points flushed in batches,
a 1 MB artifact and the console log), repeated `--runs` times in one process; prints the median seconds per run.
Without `--tracking-uri` the store is a new SQLite file in a temporary folder; to measure a tracking server, start
one (`slate-rl server ...`) and pass its address, e.g. `--tracking-uri http://127.0.0.1:5000`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path


def one_run(artifact: Path) -> float:
    """Seconds for one complete stage run."""
    from slate_rl.tracking.runs import stage_run

    started = time.perf_counter()
    with stage_run("benchmark", "tracking-store", experiment_name="bench-tracking-store") as run:
        run.log_params({f"param_{i}": i * 0.5 for i in range(30)})
        for step in range(100):
            run.log_metrics({f"metric_{k}": float(step * k) for k in range(10)}, step=step)
        run.flush()
        run.log_artifact(artifact)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracking-uri", default=None, help="the store to measure (default: a new SQLite file)")
    parser.add_argument("--runs", type=int, default=10, help="runs to time (default 10)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        os.environ["MLFLOW_TRACKING_URI"] = args.tracking_uri or f"sqlite:///{tmp}/mlflow.db"
        artifact = Path(tmp) / "artifact.bin"
        artifact.write_bytes(os.urandom(1 << 20))
        one_run(artifact)  # the store's first run creates its tables and the experiment: not timed
        seconds = [one_run(artifact) for _ in range(args.runs)]
    print(
        f"| {os.environ['MLFLOW_TRACKING_URI'].split(':')[0]} | {statistics.median(seconds):.2f} s per run "
        f"(median of {args.runs}; {min(seconds):.2f}–{max(seconds):.2f}) |"
    )


if __name__ == "__main__":
    main()
