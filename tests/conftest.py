"""Shared fixtures: an isolated MLflow tracking store per test, and the paper's reference tables when present."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
import pytest

from slate_rl.tracking import sqlite_store

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# Test processes side by side (pytest-xdist) share the cores as pipeline jobs do: each, and every process it starts,
# gets its share of intra-op threads (oversubscribed OpenMP threads spin, and run several times slower).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))

REPO_ROOT = Path(__file__).resolve().parents[1]
REFERENCE_DIR = REPO_ROOT.parent / "shared" / "reference"


def use_store(folder: Path, monkeypatch: pytest.MonkeyPatch, uri: str | None = None) -> Path:
    """Point MLflow at a SQLite store in `folder` (also the working directory, so artifacts land there), or at the
    tracking server `uri` from that (empty) working directory. A SQLite store is created at once: a test that starts
    a process on it while itself reading it would otherwise create it twice at the same moment, which fails."""
    tmp_path = folder
    monkeypatch.chdir(tmp_path)
    uri = uri or f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)  # Lightning's MLflow logger sets this process-wide value: never keep an old one
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))
    sqlite_store.create_once(uri)
    return tmp_path


@pytest.fixture
def tracking_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh tracking store for one test."""
    return use_store(tmp_path, monkeypatch)


@pytest.fixture(scope="module")
def module_store(tmp_path_factory: pytest.TempPathFactory):
    """A tracking store shared by the tests of one module (for expensive set-ups such as training runs)."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        yield use_store(tmp_path_factory.mktemp("store"), monkeypatch)


@pytest.fixture(scope="session")
def tracking_server(tmp_path_factory: pytest.TempPathFactory):
    """One MLflow tracking server on a throw-away PostgreSQL cluster for the whole test session (see
    tests/tracking_server.py); its database and artifacts start empty."""
    from tracking_server import postgres_cluster, tracking_server

    folder = tmp_path_factory.mktemp("server")
    with postgres_cluster() as postgres, tracking_server(f"{postgres}/slate_rl", folder) as server:
        yield server


@pytest.fixture
def server_store(tracking_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The session's tracking server as this test's store, used from an empty working directory."""
    use_store(tmp_path, monkeypatch, tracking_server.uri)
    return tracking_server


@pytest.fixture
def paper_embeddings() -> Path:
    """Folder of the paper's item-embedding tables (never copied into the project); skips when absent."""
    if not (REFERENCE_DIR / "item_embeddings_focused.pt").is_file():
        pytest.skip("the paper's reference embeddings (../shared/reference) are not available")
    return REFERENCE_DIR
