"""Moving a local SQLite tracking store onto a tracking server, keeping every run id, so lineage survives.

MLflow's client API cannot choose a run id, so the rows are written straight into the server's database (the same
MLflow schema on both sides): runs with their params, tags and metric histories, registered models with their tags,
versions (same numbers) and aliases. Artifacts are uploaded through the server to the run's place in its artifact
store before the run's rows are written, and each run's rows go in one transaction: an interrupted migration leaves
no run half-written and is finished by running it again. Runs the server already holds (same id) are skipped, never
copied twice; registry entries that disagree with the server's are refused before anything is written.
Deleted runs and experiments stay behind, as do logged models, traces and dataset inputs (slate-rl writes none).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import sqlalchemy
from mlflow.entities import LifecycleStage
from mlflow.exceptions import MlflowException
from mlflow.store.model_registry.dbmodels.models import (
    SqlModelVersion,
    SqlModelVersionTag,
    SqlRegisteredModel,
    SqlRegisteredModelAlias,
    SqlRegisteredModelTag,
)
from mlflow.store.tracking.dbmodels.models import (
    SqlExperiment,
    SqlExperimentTag,
    SqlLatestMetric,
    SqlMetric,
    SqlParam,
    SqlRun,
    SqlTag,
)
from mlflow.tracking import MlflowClient

from slate_rl.errors import SlateRLError
from slate_rl.tracking import server

log = logging.getLogger("slate_rl")
_RUN_TABLES = [SqlParam.__table__, SqlTag.__table__, SqlMetric.__table__, SqlLatestMetric.__table__]
_NOT_MOVED = {  # what slate-rl never writes and this migration does not move: counted, so the report says so
    "logged models": "logged_models",
    "traces": "trace_info",
    "dataset inputs": "inputs",
}


@dataclasses.dataclass
class MigrationReport:
    experiments_created: list[str] = dataclasses.field(default_factory=list)
    runs_copied: list[str] = dataclasses.field(default_factory=list)
    runs_skipped: list[str] = dataclasses.field(default_factory=list)  # already on the server
    versions_copied: int = 0
    versions_skipped: int = 0  # already on the server, identical
    aliases_set: int = 0
    left_behind: dict[str, int] = dataclasses.field(default_factory=dict)

    def lines(self) -> list[str]:
        lines = [
            f"runs: {len(self.runs_copied)} copied, {len(self.runs_skipped)} already on the server (skipped)",
            f"experiments created: {', '.join(self.experiments_created) or 'none'}",
            f"model versions: {self.versions_copied} copied, {self.versions_skipped} already on the server; "
            f"aliases set: {self.aliases_set}",
        ]
        left = [f"{count} {what}" for what, count in self.left_behind.items() if count]
        if left:
            lines.append("not moved: " + ", ".join(left))
        return lines


def migrate(source: str, database: str, server_uri: str) -> MigrationReport:
    """Copy the SQLite store `source` onto the server at `server_uri` whose backend database is `database`."""
    source_engine = _open_source(source)
    url = server.database_url(database)
    server.check_driver(url)
    server.check_tracking_store(server_uri)
    dest_engine = _open_destination(url)
    client = MlflowClient(tracking_uri=server_uri)
    report = MigrationReport()
    try:
        with source_engine.connect() as src, dest_engine.connect() as dest:
            models = _registry_plan(src, dest)  # refuses a disagreeing registry before anything is written
            experiments = _experiment_map(src, dest, client, report)
            active = SqlRun.__table__.c.lifecycle_stage == LifecycleStage.ACTIVE
            runs = [dict(row) for row in src.execute(sqlalchemy.select(SqlRun.__table__).where(active)).mappings()]
            present = _existing(dest, SqlRun.__table__.c.run_uuid, [run["run_uuid"] for run in runs])
            _count_left_behind(src, report)
            for run in runs:
                if run["experiment_id"] not in experiments:  # a run of a deleted experiment
                    report.left_behind["runs of deleted experiments"] += 1
                    continue
                if run["run_uuid"] in present:
                    report.runs_skipped.append(run["run_uuid"])
                    continue
                _copy_run(src, dest_engine, run, experiments[run["experiment_id"]], server_uri)
                report.runs_copied.append(run["run_uuid"])
            _copy_registry(src, dest_engine, models, report)
    finally:
        source_engine.dispose()
        dest_engine.dispose()
    return report


def _open_source(source: str) -> sqlalchemy.engine.Engine:
    """The source store's engine, checked to be an existing SQLite store of this MLflow's schema."""
    parsed = urlparse(source)
    if parsed.scheme != "sqlite":
        raise SlateRLError(f"the store to move must be a SQLite store (sqlite:///path/mlflow.db), not {source!r}")
    path = Path(unquote(parsed.path[1:] if parsed.path.startswith("//") else parsed.path))
    if not path.is_file():
        raise SlateRLError(f"no SQLite store at {path} (from {source!r})")
    return _store_engine(source, "the store to move")


def _open_destination(url: str) -> sqlalchemy.engine.Engine:
    return _store_engine(url, "the server's database")


def _store_engine(url: str, what: str) -> sqlalchemy.engine.Engine:
    """An engine on an existing MLflow database whose schema is this MLflow's (refused otherwise)."""
    from mlflow.store.db.utils import _verify_schema

    engine = sqlalchemy.create_engine(url)
    try:
        if "runs" not in sqlalchemy.inspect(engine).get_table_names():
            raise SlateRLError(f"{what} ({server.redact(url)}) holds no MLflow tracking store")
        _verify_schema(engine)
    except MlflowException as exc:
        engine.dispose()
        raise SlateRLError(
            f"{what} ({server.redact(url)}) has another MLflow schema version than this MLflow's: upgrade both to "
            f"one MLflow version (`mlflow db upgrade <url>`) first ({exc.message.splitlines()[0]})"
        ) from exc
    except sqlalchemy.exc.OperationalError as exc:
        engine.dispose()
        raise SlateRLError(f"cannot open {what} ({server.redact(url)}): {exc.orig}") from exc
    return engine


def _experiment_map(
    src: sqlalchemy.Connection, dest: sqlalchemy.Connection, client: MlflowClient, report: MigrationReport
) -> dict[Any, dict[str, Any]]:
    """source experiment id -> the server's experiment of the same name (created through the server if missing),
    checked to be in `dest` (the database must be the server's)."""
    table = SqlExperiment.__table__
    found = {}
    for row in src.execute(sqlalchemy.select(table).where(table.c.lifecycle_stage == LifecycleStage.ACTIVE)):
        experiment = client.get_experiment_by_name(row.name)
        if experiment is None:
            tags = dict(
                src.execute(
                    sqlalchemy.select(SqlExperimentTag.key, SqlExperimentTag.value).where(
                        SqlExperimentTag.experiment_id == row.experiment_id
                    )
                ).all()
            )
            client.create_experiment(row.name, tags=tags)
            experiment = client.get_experiment_by_name(row.name)
            report.experiments_created.append(row.name)
        if experiment.lifecycle_stage != LifecycleStage.ACTIVE:
            raise SlateRLError(
                f"the server's experiment {row.name!r} is deleted: restore it (`mlflow experiments restore`) or "
                "delete it for good before moving runs into it"
            )
        held = dest.execute(
            sqlalchemy.select(table.c.name).where(table.c.experiment_id == int(experiment.experiment_id))
        ).scalar()
        if held != row.name:
            raise SlateRLError(
                "the database given is not the server's backend store (its experiment "
                f"{experiment.experiment_id} is {held!r}, the server's is {row.name!r}): give the --database the "
                "server was started with"
            )
        found[row.experiment_id] = {"id": int(experiment.experiment_id), "location": experiment.artifact_location}
    return found


def _existing(dest: sqlalchemy.Connection, column: sqlalchemy.Column, values: list[str]) -> set[str]:
    found: set[str] = set()
    for start in range(0, len(values), 500):
        chunk = values[start : start + 500]
        found.update(dest.execute(sqlalchemy.select(column).where(column.in_(chunk))).scalars())
    return found


def _count_left_behind(src: sqlalchemy.Connection, report: MigrationReport) -> None:
    runs = SqlRun.__table__
    report.left_behind["runs of deleted experiments"] = 0
    report.left_behind["deleted runs"] = src.execute(
        sqlalchemy.select(sqlalchemy.func.count()).where(runs.c.lifecycle_stage != LifecycleStage.ACTIVE)
    ).scalar_one()
    tables = set(sqlalchemy.inspect(src).get_table_names())
    for what, table in _NOT_MOVED.items():
        if table in tables:
            report.left_behind[what] = src.execute(sqlalchemy.text(f"SELECT COUNT(*) FROM {table}")).scalar_one()


def _copy_run(
    src: sqlalchemy.Connection,
    dest_engine: sqlalchemy.engine.Engine,
    run: dict[str, Any],
    experiment: dict[str, Any],
    server_uri: str,
) -> None:
    """Upload the run's artifacts, then write its rows in one transaction."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    run_id = run["run_uuid"]
    artifact_uri = f"{experiment['location'].rstrip('/')}/{run_id}/artifacts"
    local = _local_folder(run["artifact_uri"], run_id)
    if local is not None and local.is_dir() and any(local.iterdir()):
        get_artifact_repository(artifact_uri, tracking_uri=server_uri).log_artifacts(str(local))
    rows = {table: _rows(src, table, run_id) for table in _RUN_TABLES}
    with dest_engine.begin() as dest:
        dest.execute(
            sqlalchemy.insert(SqlRun.__table__),
            [{**run, "experiment_id": experiment["id"], "artifact_uri": artifact_uri}],
        )
        for table, values in rows.items():
            for chunk in _chunks(values, 1000):
                dest.execute(sqlalchemy.insert(table), chunk)
    log.info("migrate: run %s (%s) copied", run_id, run["name"])


def _local_folder(artifact_uri: str, run_id: str) -> Path | None:
    parsed = urlparse(artifact_uri or "")
    if parsed.scheme not in ("", "file"):
        raise SlateRLError(
            f"run {run_id} keeps its artifacts at {artifact_uri}, not in a local folder: only a local store's "
            "artifacts can be moved"
        )
    return Path(unquote(parsed.path)) if parsed.path else None


def _rows(src: sqlalchemy.Connection, table: sqlalchemy.Table, run_id: str) -> list[dict[str, Any]]:
    return [dict(row) for row in src.execute(sqlalchemy.select(table).where(table.c.run_uuid == run_id)).mappings()]


def _chunks(rows: list[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


@dataclasses.dataclass
class _ModelPlan:
    name: str
    model: dict[str, Any] | None  # None: the server has it already
    tags: list[dict[str, Any]]
    versions: list[dict[str, Any]]
    version_tags: list[dict[str, Any]]
    aliases: list[dict[str, Any]]
    skipped_versions: int


def _registry_plan(src: sqlalchemy.Connection, dest: sqlalchemy.Connection) -> list[_ModelPlan]:
    """What to add to the server's registry; refuses (before anything is written) a version number or alias the
    server holds with other content."""
    plans, conflicts = [], []
    for model in src.execute(sqlalchemy.select(SqlRegisteredModel.__table__)).mappings():
        name = model["name"]
        on_server = _keyed(dest, SqlRegisteredModel.__table__, name, ("name",))
        versions = _keyed(src, SqlModelVersion.__table__, name, ("version",))
        held = _keyed(dest, SqlModelVersion.__table__, name, ("version",))
        new_versions, skipped = [], 0
        for key, version in versions.items():
            other = held.get(key)
            if other is None:
                new_versions.append(version)
            elif (other["run_id"], other["source"]) == (version["run_id"], version["source"]):
                skipped += 1
            else:
                conflicts.append(f"{name} version {key[0]} (server: {other['source']}, here: {version['source']})")
        held_aliases = _keyed(dest, SqlRegisteredModelAlias.__table__, name, ("alias",))
        aliases = []
        for key, alias in _keyed(src, SqlRegisteredModelAlias.__table__, name, ("alias",)).items():
            if key not in held_aliases:
                aliases.append(alias)
            elif held_aliases[key]["version"] != alias["version"]:
                conflicts.append(
                    f"{name}@{key[0]} (server: version {held_aliases[key]['version']}, here: {alias['version']})"
                )
        new_numbers = {version["version"] for version in new_versions}
        plans.append(
            _ModelPlan(
                name=name,
                model=None if on_server else dict(model),
                tags=_new_rows(src, dest, SqlRegisteredModelTag.__table__, name, ("key",)),
                versions=new_versions,
                version_tags=[
                    tag
                    for tag in _keyed(src, SqlModelVersionTag.__table__, name, ("version", "key")).values()
                    if tag["version"] in new_numbers
                ],
                aliases=aliases,
                skipped_versions=skipped,
            )
        )
    if conflicts:
        raise SlateRLError(
            "the server's registry already holds other entries under these names, so nothing was moved: "
            + "; ".join(conflicts)
            + ". Rename or remove them on one side first."
        )
    return plans


def _keyed(
    conn: sqlalchemy.Connection, table: sqlalchemy.Table, name: str, key: Iterable[str]
) -> dict[tuple[Any, ...], dict[str, Any]]:
    rows = conn.execute(sqlalchemy.select(table).where(table.c.name == name)).mappings()
    return {tuple(row[k] for k in key): dict(row) for row in rows}


def _new_rows(
    src: sqlalchemy.Connection, dest: sqlalchemy.Connection, table: sqlalchemy.Table, name: str, key: tuple[str, ...]
) -> list[dict[str, Any]]:
    held = _keyed(dest, table, name, key)
    return [row for k, row in _keyed(src, table, name, key).items() if k not in held]


def _copy_registry(
    src: sqlalchemy.Connection, dest_engine: sqlalchemy.engine.Engine, plans: list[_ModelPlan], report: MigrationReport
) -> None:
    """Write each registered model's new entries in one transaction; versions keep their numbers."""
    runs = SqlRun.__table__
    for plan in plans:
        run_ids = [version["run_id"] for version in plan.versions if version["run_id"]]
        where = runs.c.run_uuid.in_(run_ids)
        old_locations = dict(src.execute(sqlalchemy.select(runs.c.run_uuid, runs.c.artifact_uri).where(where)).all())
        with _registry_unchanged(plan.name), dest_engine.begin() as dest:
            locations = dict(dest.execute(sqlalchemy.select(runs.c.run_uuid, runs.c.artifact_uri).where(where)).all())
            if plan.model is not None:
                dest.execute(sqlalchemy.insert(SqlRegisteredModel.__table__), [plan.model])
            for table, rows in (
                (SqlRegisteredModelTag.__table__, plan.tags),
                (SqlModelVersion.__table__, [_relocated(v, old_locations, locations) for v in plan.versions]),
                (SqlModelVersionTag.__table__, plan.version_tags),
                (SqlRegisteredModelAlias.__table__, plan.aliases),
            ):
                if rows:
                    dest.execute(sqlalchemy.insert(table), rows)
        report.versions_copied += len(plan.versions)
        report.versions_skipped += plan.skipped_versions
        report.aliases_set += len(plan.aliases)


@contextlib.contextmanager
def _registry_unchanged(name: str) -> Iterator[None]:
    """Refuse (leaving that model as it was) entries someone else added on the server during the migration."""
    try:
        yield
    except sqlalchemy.exc.IntegrityError as exc:
        raise SlateRLError(
            f"{name} changed on the server while it was being moved, and was left as it was: run the migration again"
        ) from exc


def _relocated(version: dict[str, Any], old: dict[str, str], new: dict[str, str]) -> dict[str, Any]:
    """A version whose storage location pointed into its run's old artifact folder points into the new one."""
    run_id, location = version["run_id"], version["storage_location"] or ""
    if run_id in old and run_id in new and old[run_id] and location.startswith(old[run_id]):
        location = new[run_id] + location[len(old[run_id]) :]
    return {**version, "storage_location": location or version["storage_location"]}
