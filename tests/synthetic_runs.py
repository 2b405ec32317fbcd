"""Synthetic finished train_online runs written into a tracking store (for compare tests and benchmarks)."""

from __future__ import annotations

import time

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient


def add_train_online_run(
    method: str,
    env: str,
    seed: int,
    test_return: float,
    preset: str = "paper",
    val_curve: list[tuple[int, float]] | None = None,
    params: dict | None = None,
    status: str = "FINISHED",
    experiment_id: str = "0",
) -> str:
    """Create a run shaped like a finished train_online run: tags, params, test_return and a val_return history."""
    client = MlflowClient()
    run_id = client.create_run(experiment_id, run_name=f"{method}/{env}/seed{seed}").info.run_id
    now = int(time.time() * 1000)
    tags = {"stage": "train_online", "method": method, "env": env, "seed": str(seed), "preset": preset}
    metrics = [Metric("test_return", float(test_return), now, 0)]
    metrics += [Metric("val_return", float(v), now, int(e)) for e, v in (val_curve or [])]
    client.log_batch(
        run_id,
        metrics=metrics,
        params=[Param(k, str(v)) for k, v in (params or {}).items()],
        tags=[RunTag(k, v) for k, v in tags.items()],
    )
    client.set_terminated(run_id, status)
    return run_id
