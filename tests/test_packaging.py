"""slate-rl built as a wheel and installed in a fresh environment runs a stage from any folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BUILD_DEBRIS = (
    ".git",
    ".venv",
    "venv",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".pytest_cache",
    "mlruns",
    "mlflow.db",
)

pytestmark = pytest.mark.slow


def _run(args: list, cwd: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"{' '.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _build_wheel(tmp_path: Path) -> Path:
    """The wheel built offline from a copy of the checkout (an in-place build would leave build/ in it)."""
    source = tmp_path / "source"
    shutil.copytree(REPO, source, symlinks=True, ignore=shutil.ignore_patterns(*BUILD_DEBRIS))
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--wheel-dir",
            tmp_path / "dist",
            source,
        ],
        cwd=tmp_path,
    )
    (wheel,) = (tmp_path / "dist").glob("slate_rl-*.whl")
    return wheel


def _fresh_venv(tmp_path: Path, wheel: Path) -> Path:
    """A venv holding only the wheel, which also sees this interpreter's packages (the dependencies).

    Those are listed in a .pth file: a folder added that way does not run its own .pth files, so an editable
    install of slate-rl living there stays invisible.
    """
    folder = tmp_path / "venv"
    venv.create(folder, with_pip=False)
    python = folder / "bin" / "python"
    _run(
        [sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps", "--no-index", wheel],
        cwd=tmp_path,
    )
    site_packages = Path(
        _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp_path).strip()
    )
    dependencies = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site_packages / "dev-dependencies.pth").write_text("\n".join(sorted(dependencies)) + "\n")
    return folder


def test_the_wheel_runs_a_stage_outside_the_checkout(tmp_path):
    folder = _fresh_venv(tmp_path, _build_wheel(tmp_path))
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("PYTHONPATH", "SLATE_RL_PRESETS") and not key.startswith("MLFLOW_")
    }
    env.update(
        MLFLOW_TRACKING_URI=f"sqlite:///{work / 'mlflow.db'}",
        MLFLOW_DISABLE_TELEMETRY="true",
        XDG_CONFIG_HOME=str(work / "config"),
        MPLCONFIGDIR=str(work / "mpl"),
    )

    location = Path(
        _run([folder / "bin" / "python", "-c", "import slate_rl; print(slate_rl.__file__)"], cwd=work, env=env).strip()
    ).resolve()
    assert location.is_relative_to(folder.resolve()), location
    assert not location.is_relative_to(REPO), f"slate_rl was imported from the checkout: {location}"

    output = _run(
        [
            folder / "bin" / "slate-rl",
            "generate-dataset",
            "--env",
            "focused_mix",
            "--preset",
            "quick",
            "--n-sessions",
            20,
            "--chunk-size",
            20,
        ],
        cwd=work,
        env=env,
    )
    assert "dataset: runs:/" in output
    assert (work / "mlflow.db").is_file()
