"""Processes that start together on a new SQLite store: it is created once, and every one of them goes on."""

import sqlite3
import subprocess
import sys
import time

from mlflow import MlflowClient

# Each process imports first, then waits for the same moment to open the store, so that they open it together.
_OPEN_AT = """
import sys, time
from slate_rl.tracking import sqlite_store
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
sqlite_store.create_once(sys.argv[1])
"""


def test_processes_opening_a_new_store_together_all_succeed(tmp_path):
    uri = f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}"
    start_at = time.time() + 8  # after every process has imported MLflow
    processes = [
        subprocess.Popen([sys.executable, "-c", _OPEN_AT, uri, str(start_at)], stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    errors = [p.communicate(timeout=120)[1] for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0], errors
    assert [e.name for e in MlflowClient(tracking_uri=uri).search_experiments()] == ["Default"]


def test_other_stores_are_left_alone(tmp_path, monkeypatch):
    from slate_rl.tracking import sqlite_store

    monkeypatch.chdir(tmp_path)
    sqlite_store.create_once("http://127.0.0.1:1")  # a server: nothing to create here, and nothing is contacted
    sqlite_store.create_once("postgresql://user@127.0.0.1:1/db")
    assert list(tmp_path.iterdir()) == []


def test_a_command_on_a_new_store_prints_only_its_own_message(tmp_path, monkeypatch):
    """MLflow's "Creating initial MLflow database tables..." lines stay out of a stage's output."""
    import mlflow
    from click.testing import CliRunner

    from slate_rl.cli import main

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        result = CliRunner().invoke(main, ["train-online", "--method", "ddpg"])
    finally:
        mlflow.set_tracking_uri(previous)
    assert result.exit_code == 1
    assert result.output.startswith("Error: unknown method 'ddpg'"), result.output


def _set_schema(uri: str, revision: str) -> None:
    """Migrate the store `uri` to `revision` (alembic's "-1": the schema of the MLflow release before this one's
    last migration), as an MLflow of that schema would have left it."""
    import sqlalchemy
    from alembic import command
    from mlflow.store.db.utils import _get_alembic_config

    config = _get_alembic_config(uri)
    with sqlalchemy.create_engine(uri).begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)


def test_a_store_of_another_mlflow_version_is_refused_and_left_as_it_is(tracking_store):
    from click.testing import CliRunner

    from slate_rl.cli import main
    from slate_rl.tracking import sqlite_store

    database = tracking_store / "mlflow.db"  # the test's store, made by this MLflow
    uri = f"sqlite:///{database}"
    head = sqlite_store.schema_revision(database)
    _set_schema(uri, "-1")
    older = sqlite_store.schema_revision(database)
    assert older not in (None, head)
    result = CliRunner().invoke(main, ["pipeline", "status"])
    assert result.exit_code == 1
    assert f"written by an older MLflow (schema {older};" in result.output
    assert f"mlflow db upgrade {uri}" in result.output
    assert sqlite_store.schema_revision(database) == older  # not migrated behind the user's back

    with sqlite3.connect(database) as connection:  # a revision this MLflow does not know: a newer MLflow wrote it
        connection.execute("UPDATE alembic_version SET version_num = 'ffffffffffff'")
    result = CliRunner().invoke(main, ["pipeline", "status"])
    assert result.exit_code == 1
    assert "written by a newer MLflow (schema ffffffffffff" in result.output
    assert "pip install -U mlflow" in result.output
