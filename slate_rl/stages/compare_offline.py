"""The offline part of `compare`: finished train_offline runs as the offline tables' results (variants kept apart),
and the behaviour policy's own normalised score from the collect run behind each dataset."""

from __future__ import annotations

import dataclasses
import logging
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from slate_rl import atomic
from slate_rl.data.quality import PREFIX as QUALITY_PREFIX
from slate_rl.reporting.offline import (
    CHECKPOINTS,
    BehaviourScore,
    OfflineResult,
    build_offline_table,
    offline_to_csv,
    offline_to_markdown,
)
from slate_rl.tracking.results import metric_curve, search_finished_runs
from slate_rl.tracking.runs import normal_param

SOURCE_STAGE = "train_offline"
SCORES = {checkpoint: f"normalised_score_{checkpoint}" for checkpoint in CHECKPOINTS}
REFERENCES = ("reference_return_random", "reference_return_expert")
# Params that are no part of an offline run's configuration: its cell (environment, algorithm, dataset), its seed
# and preset, and where or how it ran. Params whose value is a run or model reference (the dataset, a ranker run)
# are left out as well: such upstream runs differ from seed to seed.
NOT_IDENTITY = ("env", "algorithm", "method", "seed", "seeds", "preset", "quality", "device", "register", "resume")
_REFERENCE = re.compile(r"((runs:/)?[0-9a-f]{32}(/.*)?|models:/.*)")
FILES = ("offline_results.md", "offline_results.csv")
log = logging.getLogger("slate_rl")


@dataclasses.dataclass
class OfflineInputs:
    """What the offline tables are built from."""

    results: list[OfflineResult]
    behaviour: list[BehaviourScore]


def gather(envs: Sequence[str], preset: str, filter_string: str = "", algorithms: Sequence[str] = ()) -> OfflineInputs:
    """The results (with their validation curves) and behaviour scores of the finished train_offline runs that
    `select_runs` keeps."""
    runs = select_runs(envs, preset, filter_string, algorithms)
    return OfflineInputs(to_results(runs, with_curve=True), behaviour_scores(runs))


def _algorithm(r: Run) -> str:
    return r.data.tags.get("algorithm") or r.data.tags.get("method", "")


def select_runs(envs: Sequence[str], preset: str, filter_string: str = "", algorithms: Sequence[str] = ()) -> list[Run]:
    """Finished train_offline runs on `envs` with both normalised scores (of `preset`, unless it is 'any'; of
    `algorithms` when given); the newest per (algorithm, dataset, seed, preset, configuration)."""
    latest: dict[tuple, Run] = {}
    for r in search_finished_runs(SOURCE_STAGE, filter_string):  # newest first: keep the first of each key
        tags = r.data.tags
        if (
            tags.get("env") in envs
            and (preset == "any" or tags.get("preset") == preset)
            and (not algorithms or _algorithm(r) in algorithms)
            and all(name in r.data.metrics for name in SCORES.values())
        ):
            key = (
                _algorithm(r),
                tags["env"],
                tags.get("dataset_quality"),
                tags.get("seed"),
                tags.get("preset"),
                frozenset(identity(r).items()),
            )
            latest.setdefault(key, r)
    return list(latest.values())


def describe_store(filter_string: str = "") -> str:
    """What exists, e.g. 'the store has: bc/focused_mix/expert/quick (3 runs), ...'."""
    runs = search_finished_runs(SOURCE_STAGE, filter_string)
    if not runs:
        return f"the store has no finished {SOURCE_STAGE} run" + (" that the filter keeps" if filter_string else "")
    counts = Counter(
        (_algorithm(r), r.data.tags.get("env"), r.data.tags.get("dataset_quality"), r.data.tags.get("preset"))
        for r in runs
    )
    items = [f"{'/'.join(map(str, key))} ({n} run{'s' if n > 1 else ''})" for key, n in sorted(counts.items(), key=str)]
    return "the store has: " + ", ".join(items[:30]) + (" ..." if len(items) > 30 else "")


def _configuration(r: Run) -> dict[str, str]:
    """The run's params that describe its configuration (raw values), with its ranker."""
    values = {
        name: value
        for name, value in r.data.params.items()
        if name not in NOT_IDENTITY and not name.startswith("dataset") and not _REFERENCE.fullmatch(value.strip())
    }
    if "ranker" in r.data.tags:
        values["ranker"] = r.data.tags["ranker"]
    return values


def identity(r: Run) -> dict[str, str]:
    """The run's configuration apart from its cell and seed, values normalised ('0.90' and '0.9' are one)."""
    return {name: normal_param(value) or "" for name, value in _configuration(r).items()}


def normalised_curve(r: Run) -> tuple[tuple[int, float], ...]:
    """The run's validation returns by gradient step on the normalised scale of its scores (empty without its
    reference returns)."""
    low, high = (r.data.metrics.get(name) for name in REFERENCES)
    if low is None or high is None or high == low:
        return ()
    return tuple(
        (step, 100.0 * (value - low) / (high - low)) for step, value in metric_curve(r.info.run_id, "val_return")
    )


def to_results(runs: Sequence[Run], with_curve: bool = False) -> list[OfflineResult]:
    """The runs as results, each with its variant: the params on which runs of its algorithm on one dataset differ
    (a param a run did not log shows as 'default'; a param that names an upstream run in any run never counts, even
    where it is empty); no variant for an algorithm run in one configuration."""
    upstream = {name for r in runs for name, value in r.data.params.items() if _REFERENCE.fullmatch(value.strip())}
    identities = {r.info.run_id: {k: v for k, v in identity(r).items() if k not in upstream} for r in runs}
    fields: dict[str, set[str]] = {}
    cells: dict[tuple, list[Run]] = {}
    for r in runs:
        cells.setdefault((_algorithm(r), r.data.tags["env"], r.data.tags.get("dataset_quality")), []).append(r)
    for (algorithm, _, _), mine in cells.items():
        names = {name for r in mine for name in identities[r.info.run_id]}
        fields.setdefault(algorithm, set()).update(
            name for name in names if len({identities[r.info.run_id].get(name) for r in mine}) > 1
        )
    results = []
    for r in runs:
        tags, metrics, shown = r.data.tags, r.data.metrics, _configuration(r)
        results.append(
            OfflineResult(
                algorithm=_algorithm(r),
                env=tags["env"],
                quality=tags.get("dataset_quality", "unknown"),
                seed=int(tags["seed"]),
                preset=tags.get("preset", "unknown"),
                score_best=metrics[SCORES["best"]],
                score_last=metrics[SCORES["last"]],
                dataset_run=tags.get("dataset_run", ""),
                variant=tuple((name, shown.get(name, "default")) for name in sorted(fields[_algorithm(r)])),
                params=shown,
                val_curve=normalised_curve(r) if with_curve else (),
            )
        )
    return results


def behaviour_scores(runs: Sequence[Run]) -> list[BehaviourScore]:
    """Per dataset behind `runs`: its collect run's mean return, normalised with the reference returns that the
    newest offline run of that dataset recorded (those of its own scores). Datasets without them are left out."""
    newest: dict[str, Run] = {}
    for r in sorted(runs, key=lambda r: r.info.start_time, reverse=True):
        if r.data.tags.get("dataset_run"):
            newest.setdefault(r.data.tags["dataset_run"], r)
    scores = []
    for dataset, r in newest.items():
        low, high = (r.data.metrics.get(name) for name in REFERENCES)
        try:
            mean = MlflowClient().get_run(dataset).data.metrics.get(f"{QUALITY_PREFIX}mean_return")
        except MlflowException:
            mean = None
        if low is None or high is None or high == low or mean is None:
            log.warning("compare: no behaviour score for dataset %s (no mean return or reference returns)", dataset)
            continue
        tags = r.data.tags
        score = 100.0 * (mean - low) / (high - low)
        scores.append(BehaviourScore(tags["env"], tags.get("dataset_quality", "unknown"), dataset, score))
    return scores


def write_tables(inputs: OfflineInputs, folder: Path, allow_mixed_presets: bool = False) -> str:
    """The best and last tables as offline_results.md and offline_results.csv in `folder`; returns the Markdown."""
    tables = [
        build_offline_table(
            inputs.results, inputs.behaviour, checkpoint=checkpoint, allow_mixed_presets=allow_mixed_presets
        )
        for checkpoint in CHECKPOINTS
    ]
    markdown = "\n".join(
        f"### {what.capitalize()}\n\n{offline_to_markdown(table)}"
        for what, table in zip(CHECKPOINTS.values(), tables, strict=True)
    )
    atomic.write_text(folder / FILES[0], markdown)
    atomic.write_text(folder / FILES[1], offline_to_csv(tables))
    return markdown
