"""Shared fixtures: an isolated MLflow tracking store per test, and the paper's reference tables when present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

REPO_ROOT = Path(__file__).resolve().parents[1]
REFERENCE_DIR = REPO_ROOT.parent / "shared" / "reference"


def use_store(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point MLflow at a SQLite store in `folder` (also the working directory, so artifacts land there)."""
    tmp_path = folder
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    # Lightning's MLFlowLogger calls mlflow.set_tracking_uri, whose process-wide value would outlive the test and
    # win over the variable above in later tests: forget it for this test, and restore it afterwards
    from mlflow.tracking._tracking_service import utils as tracking_utils

    monkeypatch.setattr(tracking_utils, "_tracking_uri", None)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))
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


@pytest.fixture
def paper_embeddings() -> Path:
    """Folder of the paper's item-embedding tables (never copied into the project); skips when absent."""
    if not (REFERENCE_DIR / "item_embeddings_focused.pt").is_file():
        pytest.skip("the paper's reference embeddings (../shared/reference) are not available")
    return REFERENCE_DIR
