"""SQLite tracking stores: a new store created once when several processes open it at the same moment (jobs started
side by side, a second terminal): MLflow creates its tables in each process that finds them missing, and the second
one fails half-way ("duplicate column name"); a store of another MLflow version refused before MLflow opens it (a
newer MLflow that finds a table missing migrates the store in place, and the MLflow that wrote it, in another
checkout or on another machine, can no longer open it); whether a store is free of locks (a process stopped while it
wrote would hold its lock, and every other process would wait for it)."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from slate_rl.errors import SlateRLError

_SCHEME = "sqlite:///"


def create_once(uri: str) -> None:
    """Open the SQLite store `uri` (creating its tables if it is new) while holding a lock on its folder, so that
    processes starting together create it one after the other (MLflow keeps the opened store for the process: later
    calls cost nothing more). Other stores are left alone."""
    if not uri.startswith(_SCHEME) or uri == _SCHEME:
        return
    database = _database(uri)
    database.parent.mkdir(parents=True, exist_ok=True)
    with _folder_lock(database.parent), _quiet("mlflow.store.db.utils", "alembic"):
        check_schema(uri)
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)


def _database(uri: str) -> Path:
    """The database file of SQLite store `uri`."""
    return Path(uri[len(_SCHEME) :].split("?")[0])


def check_schema(uri: str) -> None:
    """Refuse the existing SQLite store `uri` if its schema is not the one this MLflow writes: opening it would
    migrate it in place (or fail half-way), leaving it unreadable to the MLflow that wrote it."""
    from alembic.script import ScriptDirectory
    from mlflow.store.db.utils import _get_alembic_config, _get_latest_schema_revision

    found = schema_revision(_database(uri))
    expected = _get_latest_schema_revision()
    if found is None or found == expected:
        return
    known = {script.revision for script in ScriptDirectory.from_config(_get_alembic_config(uri)).walk_revisions()}
    if found in known:
        raise SlateRLError(
            f"the tracking store {uri} was written by an older MLflow (schema {found}; MLflow {mlflow.__version__} "
            f"writes {expected}). Opening it would migrate it, and the MLflow that wrote it (another checkout, another "
            f"machine) could no longer open it. Use that MLflow version here (pip install mlflow==<version>), or back "
            f"the store up and migrate it on purpose: mlflow db upgrade {uri}"
        )
    raise SlateRLError(
        f"the tracking store {uri} was written by a newer MLflow (schema {found}, unknown to MLflow "
        f"{mlflow.__version__}); install the MLflow version that wrote it (pip install -U mlflow)"
    )


def schema_revision(database: Path) -> str | None:
    """The MLflow schema revision of SQLite database `database` (None: no such file, or no MLflow tables yet)."""
    if not database.is_file():
        return None
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as connection:
        try:
            row = connection.execute("SELECT version_num FROM alembic_version").fetchone()
        except sqlite3.OperationalError:  # a new or empty database
            return None
    return str(row[0]) if row else None


def unlocked(uri: str, timeout: float = 1.0) -> bool:
    """Whether the SQLite store `uri` could be locked for writing within `timeout` seconds, that is no process holds
    a lock on it for longer (always True for other stores: a server keeps its own transactions)."""
    if not uri.startswith(_SCHEME) or uri == _SCHEME:
        return True
    connection = sqlite3.connect(_database(uri), timeout=timeout, isolation_level=None)
    try:
        connection.execute("BEGIN EXCLUSIVE")
        connection.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError as exc:
        if "locked" not in str(exc):
            raise
        return False
    finally:
        connection.close()


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def _quiet(*names: str) -> Iterator[None]:
    """Hide the INFO lines of these loggers (MLflow's "Creating initial MLflow database tables..." before a stage's
    own output or error message)."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
