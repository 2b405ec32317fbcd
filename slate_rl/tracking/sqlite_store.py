"""SQLite tracking stores: a new store created once when several processes open it at the same moment (jobs started
side by side, a second terminal): MLflow creates its tables in each process that finds them missing, and the second
one fails half-way ("duplicate column name"); whether a store is free of locks (a process stopped while it wrote
would hold its lock, and every other process would wait for it)."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from mlflow.tracking import MlflowClient

_SCHEME = "sqlite:///"


def create_once(uri: str) -> None:
    """Open the SQLite store `uri` (creating its tables if it is new) while holding a lock on its folder, so that
    processes starting together create it one after the other (MLflow keeps the opened store for the process: later
    calls cost nothing more). Other stores are left alone."""
    if not uri.startswith(_SCHEME) or uri == _SCHEME:
        return
    database = Path(uri[len(_SCHEME) :].split("?")[0])
    database.parent.mkdir(parents=True, exist_ok=True)
    with _folder_lock(database.parent), _quiet("mlflow.store.db.utils", "alembic"):
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)


def unlocked(uri: str, timeout: float = 1.0) -> bool:
    """Whether the SQLite store `uri` could be locked for writing within `timeout` seconds, that is no process holds
    a lock on it for longer (always True for other stores: a server keeps its own transactions)."""
    if not uri.startswith(_SCHEME) or uri == _SCHEME:
        return True
    connection = sqlite3.connect(uri[len(_SCHEME) :].split("?")[0], timeout=timeout, isolation_level=None)
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
