"""A throw-away PostgreSQL cluster on 127.0.0.1 and `slate-rl server` on it, for the tests that need a tracking
server. The PostgreSQL server binaries must be on the machine (`.ci/run` installs Debian's `postgresql` when they
are not); as root the cluster runs as the user `nobody` (initdb refuses root)."""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from slate_rl.tracking.server import server_answers

CLUSTER_USER = "nobody"  # who runs PostgreSQL when the tests run as root


@dataclasses.dataclass(frozen=True)
class TrackingServer:
    uri: str  # http://127.0.0.1:PORT
    database: str  # the server's backend store
    artifacts: Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def postgres_bin() -> Path:
    """Folder of initdb / pg_ctl: on the PATH, or Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which("initdb")
    candidates = [found] if found else sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version)
    if not candidates:
        raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql")
    return Path(candidates[-1]).parent


def _version(path: str) -> float:
    try:
        return float(Path(path).parents[1].name)
    except ValueError:
        return 0.0


def _as_cluster_user(command: list[str]) -> list[str]:
    return ["runuser", "-u", CLUSTER_USER, "--", *command] if os.geteuid() == 0 else command


@contextlib.contextmanager
def postgres_cluster() -> Iterator[str]:
    """A fresh PostgreSQL cluster on a free port of 127.0.0.1 (trust authentication); yields its base URL
    postgresql://postgres@127.0.0.1:PORT (append /DBNAME). Stopped and deleted at the end."""
    binaries, port = postgres_bin(), free_port()
    folder = Path(tempfile.mkdtemp(prefix="slate-rl-pg-"))  # under /tmp: reachable by the cluster user
    if os.geteuid() == 0:
        shutil.chown(folder, CLUSTER_USER)
    data = folder / "data"
    try:
        subprocess.run(
            _as_cluster_user([str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync"]),
            check=True,
            capture_output=True,
            timeout=120,
        )
        options = f"-k {folder} -p {port} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run(
            _as_cluster_user(
                [str(binaries / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(folder / "log"), "-w", "start"]
            ),
            check=True,
            capture_output=True,
            timeout=120,
        )
        yield f"postgresql://postgres@127.0.0.1:{port}"
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(
                _as_cluster_user([str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]),
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def tracking_server(database: str, folder: Path, timeout: float = 300.0) -> Iterator[TrackingServer]:
    """`slate-rl server` on `database` (created by it) with artifacts under `folder`, on a free port; stopped at
    the end."""
    port, folder_log = free_port(), folder / "server.log"
    uri = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "slate_rl.cli", "server", "--database", database, "--port", str(port)]
    command += ["--artifacts", str(folder / "artifacts"), "--workers", "1"]
    with open(folder_log, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=folder)
    try:
        deadline = time.monotonic() + timeout
        while not server_answers(uri, timeout=2):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"slate-rl server did not start:\n{folder_log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield TrackingServer(uri=uri, database=database, artifacts=folder / "artifacts")
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
