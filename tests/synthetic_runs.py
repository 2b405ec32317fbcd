"""Synthetic finished runs (train_online, collect, train_offline) written into a tracking store, for compare tests
and benchmarks."""

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


def add_collect_run(env: str, quality: str, mean_return: float, preset: str = "paper") -> str:
    """A finished collect run: its tags and the dataset's mean return (quality/mean_return)."""
    client = MlflowClient()
    run_id = client.create_run("0", run_name=f"collect/{env}/{quality}").info.run_id
    tags = {"stage": "collect", "env": env, "quality": quality, "preset": preset, "seed": "0"}
    client.log_batch(
        run_id,
        metrics=[Metric("quality/mean_return", float(mean_return), int(time.time() * 1000), 0)],
        tags=[RunTag(k, v) for k, v in tags.items()],
    )
    client.set_terminated(run_id, "FINISHED")
    return run_id


def add_train_offline_run(
    algorithm: str,
    dataset_run: str,
    seed: int,
    best: float,
    last: float,
    references: tuple[float, float] = (30.0, 130.0),
    ranker: str = "gems",
    params: dict | None = None,
    preset: str = "paper",
    status: str = "FINISHED",
    val_returns: tuple[tuple[int, float], ...] = (),
) -> str:
    """A run shaped like a finished train_offline run on the dataset of `dataset_run` (env and quality from its
    tags): normalised scores of the best and last weights, the reference returns (random, expert) behind them, and
    `val_returns` as its val_return history (step, value)."""
    client = MlflowClient()
    dataset = client.get_run(dataset_run).data.tags
    env, quality = dataset["env"], dataset["quality"]
    run_id = client.create_run("0", run_name=f"{algorithm}/{env}/{quality}/seed{seed}").info.run_id
    now = int(time.time() * 1000)
    tags = {
        "stage": "train_offline",
        "env": env,
        "method": algorithm,
        "algorithm": algorithm,
        "seed": str(seed),
        "preset": preset,
        "family": "offline",
        "dataset_run": dataset_run,
        "dataset_quality": quality,
        "ranker": ranker,
    }
    low, high = references
    scores = {"best": best, "last": last}
    metrics = {f"normalised_score_{k}": v for k, v in scores.items()}
    metrics |= {f"test_return_{k}": low + v * (high - low) / 100 for k, v in scores.items()}
    metrics |= {"test_return": metrics["test_return_best"], "reference_return_random": low}
    metrics |= {"reference_return_expert": high}
    client.log_batch(
        run_id,
        metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()]
        + [Metric("val_return", float(v), now, step) for step, v in val_returns],
        params=[Param(k, str(v)) for k, v in {"dataset": dataset_run, **(params or {})}.items()],
        tags=[RunTag(k, v) for k, v in tags.items()],
    )
    client.set_terminated(run_id, status)
    return run_id
