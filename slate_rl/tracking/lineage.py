"""Finding outputs by lineage: a stage's identity (the config that determines its output) is hashed into the
`lineage_key` tag; upstream runs are found by that key among FINISHED runs, never by file names.

An identity holds the environment spec and only the configuration fields that differ from their defaults
(`StageConfig.changed_fields`), so a field added later with a default does not change any existing key. Runs
written before this rule (slate-rl 0.1.0, whose identities held every field) are still found: each stage also
computes the key such a run carries (its `legacy_identity`) and the lookup tries the current key, then that one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import mlflow
from mlflow.entities import Run, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from slate_rl.errors import SlateRLError
from slate_rl.tracking.runs import active_experiment_ids, format_param

LINEAGE_TAG = "lineage_key"
log = logging.getLogger("slate_rl")
_RUN_URI = re.compile(r"^runs:/(?P<run>[0-9a-f]{32})(?:/(?P<path>.*))?$")


def lineage_key(stage: str, identity: dict[str, Any]) -> str:
    """A stable hash of everything that determines a stage's output."""
    canonical = json.dumps({"stage": stage, **{k: format_param(v) for k, v in identity.items()}}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:24]


def legacy_applies(changed: dict[str, Any], legacy_fields: Sequence[str]) -> bool:
    """Whether a run of slate-rl 0.1.0 can match a configuration whose non-default fields are `changed` (flat, dict
    entries as 'name.key'): only if each of them existed then -- a later field away from its default describes
    something 0.1.0 never ran."""
    return all(name.split(".")[0] in legacy_fields for name in changed)


def find_finished_run(stage: str, keys: str | Sequence[str]) -> Run | None:
    """The newest FINISHED run of `stage` with a lineage key of `keys` (tried in order: the current key, then a
    legacy one), in any experiment."""
    client = MlflowClient()
    experiments = active_experiment_ids(client)
    if not experiments:
        return None
    for key in [keys] if isinstance(keys, str) else keys:
        runs = client.search_runs(
            experiments,
            filter_string=f"tags.stage = '{stage}' and tags.{LINEAGE_TAG} = '{key}' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if runs:
            return runs[0]
    return None


def find_or_run(stage: str, keys: str | Sequence[str], run_child: Callable[[], str]) -> str:
    """Run id of the newest FINISHED `stage` run with one of these lineage keys; `run_child()` produces one if there
    is none."""
    existing = find_finished_run(stage, keys)
    if existing is not None:
        log.info("%s: reusing finished run %s", stage, existing.info.run_id)
        return existing.info.run_id
    log.info("%s: no finished run with this configuration yet; running it as a child run", stage)
    return run_child()


def parse_run_uri(uri: str) -> tuple[str, str]:
    """('<run id>', '<artifact path>') from 'runs:/<run id>[/<path>]' or a bare 32-hex run id."""
    text = uri.strip()
    if re.fullmatch(r"[0-9a-f]{32}", text):
        return text, ""
    match = _RUN_URI.match(text)
    if not match:
        run_part = text.removeprefix("runs:/").split("/")[0]
        if re.fullmatch(r"[0-9a-fA-F]+", run_part):
            raise SlateRLError(
                f"{uri!r}: a run id has 32 lower-case hexadecimal characters ({run_part!r} has {len(run_part)}); "
                "copy the whole id from the MLflow UI or the stage's log"
            )
        raise SlateRLError(f"{uri!r} is not a run reference; give 'runs:/<run id>' or 'runs:/<run id>/<path>'")
    return match["run"], (match["path"] or "").strip("/")


def get_finished_run(run_id: str, stage: str | None = None) -> Run:
    """The run, checked to exist, to be FINISHED and (optionally) to come from `stage`."""
    try:
        run = MlflowClient().get_run(run_id)
    except MlflowException as exc:
        raise SlateRLError(f"no run {run_id} in the tracking store {mlflow.get_tracking_uri()}") from exc
    if stage is not None and run.data.tags.get("stage") != stage:
        raise SlateRLError(f"run {run_id} is a {run.data.tags.get('stage', 'non-slate-rl')!r} run, not a {stage!r} run")
    if run.info.status != RunStatus.to_string(RunStatus.FINISHED):
        raise SlateRLError(f"run {run_id} is {run.info.status}: only FINISHED runs have valid outputs")
    return run


def get_unfinished_run(run_id: str, stage: str) -> Run:
    """A run to resume: checked to exist, to come from `stage` and not to have finished."""
    try:
        run = MlflowClient().get_run(run_id)
    except MlflowException as exc:
        raise SlateRLError(f"no run {run_id} to resume in the tracking store") from exc
    if run.data.tags.get("stage") != stage:
        raise SlateRLError(f"run {run_id} is not a {stage} run")
    if run.info.status == RunStatus.to_string(RunStatus.FINISHED):
        raise SlateRLError(f"run {run_id} already finished; nothing to resume")
    return run


def artifact_dir(run: Run, artifact_path: str) -> Path:
    """Local folder of a run's artifact: used in place for local stores, downloaded otherwise."""
    uri = run.info.artifact_uri
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        path = Path(unquote(parsed.path)) / artifact_path
        if not path.exists():
            raise SlateRLError(f"run {run.info.run_id} has no artifact {artifact_path!r}")
        return path
    try:
        return Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=artifact_path))
    except MlflowException as exc:
        raise SlateRLError(f"run {run.info.run_id} has no artifact {artifact_path!r}: {exc}") from exc
