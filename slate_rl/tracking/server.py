"""A shared tracking server: MLflow's server on a PostgreSQL database with proxied artifacts (clients need no shared
filesystem), and the checks that tell a client its tracking store cannot be reached or needs a missing driver."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from urllib.parse import urlparse

from slate_rl.errors import SlateRLError

SERVER_EXTRA = "slate-rl[server]"  # the optional dependencies of the server: PostgreSQL driver, MLflow's auth app
START_HINT = "start one with `slate-rl server --database postgresql://USER@HOST:5432/slate_rl` (README, Scaling out)"
_DEFAULT_POSTGRES_DRIVER = "psycopg"  # the driver the server extra installs (psycopg 3)


def redact(url: str) -> str:
    """The URL with its password hidden (for messages)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def database_url(url: str) -> str:
    """A SQLAlchemy database URL as the server uses it: a plain 'postgresql://' names the driver the server extra
    installs (psycopg 3), whatever SQLAlchemy's own default for that scheme is."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise SlateRLError(
            f"{url!r} is not a database URL; give e.g. postgresql://USER:PASSWORD@HOST:5432/slate_rl"
        ) from exc
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername=f"postgresql+{_DEFAULT_POSTGRES_DRIVER}")
    return parsed.render_as_string(hide_password=False)


def check_driver(url: str) -> None:
    """Refuse a database URL whose Python driver is not installed, naming what to install."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import NoSuchModuleError

    parsed = make_url(url)
    try:
        parsed.get_dialect().import_dbapi()
    except NoSuchModuleError as exc:
        raise SlateRLError(f"{redact(url)}: SQLAlchemy knows no database {parsed.drivername!r}") from exc
    except ImportError as exc:
        module = exc.name or parsed.get_driver_name()
        fix = (
            f"pip install '{SERVER_EXTRA}'"
            if parsed.get_backend_name() == "postgresql"
            else f"install the Python package of the {parsed.drivername} driver"
        )
        raise SlateRLError(
            f"the database URL {redact(url)} needs the Python driver {module!r}, which is not installed: {fix}"
        ) from exc


def ensure_database(url: str) -> bool:
    """Create the PostgreSQL database the URL names if it does not exist; True when it was created."""
    import sqlalchemy
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql" or not parsed.database:
        return False
    engine = sqlalchemy.create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            exists = connection.execute(
                sqlalchemy.text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": parsed.database}
            ).first()
            if exists:
                return False
            quoted = connection.dialect.identifier_preparer.quote(parsed.database)
            connection.execute(sqlalchemy.text(f"CREATE DATABASE {quoted}"))
            return True
    except sqlalchemy.exc.OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise SlateRLError(
            f"cannot reach PostgreSQL for {redact(url)} ({reason}); start PostgreSQL, or check the host, port, "
            "user and password (the user needs the CREATEDB privilege when the database does not exist yet)"
        ) from exc
    finally:
        engine.dispose()


def server_answers(uri: str, timeout: float = 5.0) -> bool:
    """Whether an MLflow server answers its health check at `uri` (http or https)."""
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def check_tracking_store(uri: str) -> None:
    """Refuse a tracking store that cannot work: a server that does not answer, a database without its driver."""
    scheme = urlparse(uri).scheme
    if scheme in ("http", "https"):
        if not server_answers(uri):
            raise SlateRLError(
                f"the MLflow tracking server {uri} (MLFLOW_TRACKING_URI) does not answer; {START_HINT}, "
                "or unset MLFLOW_TRACKING_URI to use the local SQLite store"
            )
    elif scheme.split("+")[0] in ("postgresql", "mysql", "mssql"):
        check_driver(uri)


def server_command(
    artifacts: Path, host: str, port: int, workers: int, auth: bool, extra: tuple[str, ...] = ()
) -> list[str]:
    """The `mlflow server` command line, artifacts proxied from the folder `artifacts` (the backend store comes
    from $MLFLOW_BACKEND_STORE_URI: a password in it stays out of the process list)."""
    command = [sys.executable, "-m", "mlflow", "server", "--artifacts-destination", str(artifacts.resolve())]
    command += ["--serve-artifacts", "--host", host, "--port", str(port), "--workers", str(workers)]
    if auth:
        command += ["--app-name", "basic-auth"]
    return [*command, *extra]


@contextlib.contextmanager
def _auth_config(database: str) -> Iterator[dict[str, str]]:
    """Environment of a server with basic authentication: its users live in the same database (own tables). The
    UI's CSRF key is $MLFLOW_FLASK_SERVER_SECRET_KEY, or a random one per start."""
    secret = {
        "MLFLOW_FLASK_SERVER_SECRET_KEY": os.environ.get("MLFLOW_FLASK_SERVER_SECRET_KEY") or secrets.token_hex(32)
    }
    if os.environ.get("MLFLOW_AUTH_CONFIG_PATH"):  # the user's own configuration file
        yield secret
        return
    if not os.environ.get("MLFLOW_AUTH_ADMIN_PASSWORD"):
        raise SlateRLError(
            "--auth needs the admin password: set MLFLOW_AUTH_ADMIN_PASSWORD (and MLFLOW_AUTH_ADMIN_USERNAME, "
            "default admin), or MLFLOW_AUTH_CONFIG_PATH to a basic_auth.ini of your own"
        )
    with tempfile.TemporaryDirectory(prefix="slate-rl-auth-") as folder:
        path = Path(folder) / "basic_auth.ini"
        path.touch(mode=0o600)
        path.write_text(
            "[mlflow]\ndefault_permission = READ\n"
            f"database_uri = {database.replace('%', '%%')}\n"
            "admin_username = admin\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        )
        yield {**secret, "MLFLOW_AUTH_CONFIG_PATH": str(path)}


def serve(
    database: str,
    artifacts: Path,
    host: str = "127.0.0.1",
    port: int = 5000,
    workers: int = 1,
    auth: bool = False,
    extra: tuple[str, ...] = (),
    on_ready: Callable[[str], None] | None = None,
    ready_timeout: float = 300.0,
) -> int:
    """Run the tracking server until it stops (SIGINT / SIGTERM stop it); returns its exit status.

    The database is created when missing; `on_ready(message)` is called once the server answers."""
    url = database_url(database)
    check_driver(url)
    if ensure_database(url) and on_ready:
        on_ready(f"created the database {redact(url)}")
    artifacts.mkdir(parents=True, exist_ok=True)
    with _auth_config(url) if auth else contextlib.nullcontext({}) as auth_env:
        # no GenAI job runner (slate-rl has no use for it, and it outlives a stopped server)
        env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ, **auth_env}
        env.update(MLFLOW_DISABLE_TELEMETRY="true", MLFLOW_BACKEND_STORE_URI=url)
        process = subprocess.Popen(server_command(artifacts, host, port, workers, auth, extra), env=env)

        def stop(signum: int, _frame: FrameType | None) -> None:
            process.send_signal(signum)

        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            everywhere = host in ("0.0.0.0", "::")
            local = f"http://{'127.0.0.1' if everywhere else host}:{port}"
            address = f"http://{socket.getfqdn()}:{port}" if everywhere else local
            deadline = time.monotonic() + ready_timeout
            while process.poll() is None and time.monotonic() < deadline:
                if server_answers(local, timeout=2):
                    if on_ready:
                        on_ready(f"MLflow tracking server ready: export MLFLOW_TRACKING_URI={address}")
                    break
                time.sleep(0.5)
            return process.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if process.poll() is None:
                process.terminate()
                process.wait(timeout=30)
