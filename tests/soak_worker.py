"""One process of the tracking-store soak: for a bounded time, runs that log params, batched metric histories and
an artifact through slate-rl's own run handling, against $MLFLOW_TRACKING_URI. Writes a JSON manifest of what it
logged (run ids, metric points, params, artifact digests) to OUT for the test to check against the store.

Usage: python soak_worker.py SECONDS NAME OUT
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from slate_rl.tracking.runs import stage_run

STEPS, KEYS = 400, 3  # per run: 1,200 metric points, written in batches by StageRun
PARAMS = 30


def soak(seconds: float, name: str) -> dict:
    runs = []
    deadline = time.monotonic() + seconds
    index = 0
    while time.monotonic() < deadline or not runs:
        with stage_run("soak", f"{name}/{index}", experiment_name="soak") as run:
            params = {f"p{i}": f"{name}-{index}-{i}" for i in range(PARAMS)}
            run.log_params(params)
            for step in range(STEPS):
                run.log_metrics({f"m{k}": step * 0.5 + k for k in range(KEYS)}, step=step)
                if step % 100 == 99:
                    run.flush()
            payload = os.urandom(64 * 1024)
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "blob.bin"
                path.write_bytes(payload)
                run.log_artifact(path, "blobs")
        runs.append(
            {
                "run_id": run.run_id,
                "params": params,
                "points": {f"m{k}": STEPS for k in range(KEYS)},
                "blob_sha256": hashlib.sha256(payload).hexdigest(),
            }
        )
        index += 1
    return {"name": name, "runs": runs}


if __name__ == "__main__":
    Path(sys.argv[3]).write_text(json.dumps(soak(float(sys.argv[1]), sys.argv[2])))
