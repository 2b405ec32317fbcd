"""Console output: logging setup, and progress that is a rich bar on a terminal and periodic log lines otherwise."""

from __future__ import annotations

import logging
import sys
import time
from types import TracebackType

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress as RichProgress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

LOGGER_NAME = "slate_rl"
log = logging.getLogger(LOGGER_NAME)
_console = Console(stderr=True)


def interactive() -> bool:
    """True when stderr is a terminal (rich bars); False under nohup, CI or a pipe (log lines)."""
    return _console.is_terminal


def setup_logging(level: int = logging.INFO) -> None:
    """Send slate_rl's log records to stderr (through rich on a terminal so that bars and lines mix well)."""
    root = logging.getLogger(LOGGER_NAME)
    if any(getattr(h, "_slate_rl", False) for h in root.handlers):
        return
    if interactive():
        handler: logging.Handler = RichHandler(console=_console, show_path=False, rich_tracebacks=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    handler._slate_rl = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False


class Progress:
    """Progress over `total` units: `advance(n, **fields)`; use as a context manager.

    On a terminal, a rich progress bar; otherwise an INFO line every `interval` seconds (and at the end) with the
    share done, the rate and the estimated time left, so that logs under nohup show the run is alive.
    """

    def __init__(
        self, total: int, description: str, unit: str = "it", interval: float = 30.0, enabled: bool | None = None
    ) -> None:
        self.total, self.description, self.unit, self.interval = int(total), description, unit, interval
        self.done = 0
        self.fields: dict[str, object] = {}
        self._bar = interactive() if enabled is None else enabled
        self._rich: RichProgress | None = None

    def __enter__(self) -> Progress:
        self._start = self._last = time.monotonic()
        if self._bar:
            self._rich = RichProgress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn(self.unit),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                console=_console,
                transient=False,
            )
            self._rich.__enter__()
            self._task = self._rich.add_task(self.description, total=self.total, info="")
        return self

    def advance(self, n: int = 1, **fields: object) -> None:
        self.done += n
        self.fields.update(fields)
        if self._rich is not None:
            self._rich.update(self._task, advance=n, info=self._fields_text())
            return
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            log.info(self.line())

    def line(self) -> str:
        """'<description>: 42% (4,200/10,000 steps), 1,234 steps/s, ETA 5 s[, fields]'."""
        elapsed = max(time.monotonic() - self._start, 1e-9)
        rate = self.done / elapsed
        share = self.done / self.total if self.total else 1.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        text = (
            f"{self.description}: {share:.0%} ({self.done:,}/{self.total:,} {self.unit}), "
            f"{rate:,.0f} {self.unit}/s, ETA {_duration(eta)}"
        )
        extra = self._fields_text()
        return f"{text}, {extra}" if extra else text

    def _fields_text(self) -> str:
        return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in self.fields.items())

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self._rich is not None:
            self._rich.__exit__(exc_type, exc, traceback)
        elif exc_type is None:
            log.info(self.line())


def _duration(seconds: float) -> str:
    if seconds != seconds:  # NaN
        return "?"
    seconds = round(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
