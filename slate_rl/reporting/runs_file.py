"""A report's runs.csv read back: the runs of an earlier `compare` (a tracking store since lost, another machine's)
as results that join a new table, its contrasts and its runs.csv. Rows keep their label: a run of the file's row
'slateq [reference_bugs=true]' joins that row of the new table."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from slate_rl.errors import SlateRLError
from slate_rl.reporting.records import RunResult
from slate_rl.reporting.render import RUNS_COLUMNS

REQUIRED = ("env", "method", "variant", "seed", "run_id", "test_return")


def parse_variant(label: str) -> tuple[tuple[str, str], ...]:
    """The inverse of `render.variant_label`: 'default' -> (), 'reference_bugs; gamma=0.9' ->
    (('reference_bugs', 'true'), ('gamma', '0.9'))."""
    if label.strip() in ("", "default"):
        return ()
    pairs = []
    for part in label.split(";"):
        name, sep, value = part.strip().partition("=")
        if not name.strip() or (sep and not value.strip()):
            raise SlateRLError(f"variant {label!r} is not 'default' nor 'name' / 'name=value' parts joined by '; '")
        pairs.append((name.strip(), value.strip() if sep else "true"))
    return tuple(pairs)


def parse_settings(text: str) -> tuple[tuple[str, str], ...]:
    """The settings column ('fused_update=true; episodes=20000') as (param, value) pairs."""
    pairs = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, sep, value = part.partition("=")
        if not sep or not name.strip():
            raise SlateRLError(f"settings {text!r} are not 'name=value' parts joined by '; '")
        pairs.append((name.strip(), value.strip()))
    return tuple(pairs)


def read_runs_csv(path: Path, preset: str) -> list[RunResult]:
    """The runs of a compare report's runs.csv. `preset` is the preset of files written before runs.csv had a preset
    column ('any' cannot tell it: refused for those files)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise SlateRLError(
            f"cannot read runs file {path}: {exc.strerror or exc}; pass the runs.csv of a compare report"
        ) from exc
    reader = csv.DictReader(io.StringIO(text))
    columns = list(reader.fieldnames or [])
    missing = [name for name in REQUIRED if name not in columns]
    if missing:
        raise SlateRLError(
            f"{path} lacks the column(s) {', '.join(missing)}: it is not a compare report's runs.csv "
            f"(expected the columns {', '.join(RUNS_COLUMNS)})"
        )
    if "preset" not in columns and preset == "any":
        raise SlateRLError(
            f"{path} has no preset column (written before runs.csv recorded it): pass --preset with the preset of "
            "its runs (quick or paper)"
        )
    results = []
    for line, row in enumerate(reader, start=2):
        try:
            results.append(_result(row, preset))
        except (SlateRLError, ValueError, TypeError) as exc:
            raise SlateRLError(f"{path}, line {line}: {exc}; fix or remove that row") from exc
    return results


def _result(row: dict[str, str], preset: str) -> RunResult:
    if not (row.get("run_id") or "").strip():
        raise SlateRLError("the run_id is empty")
    best, episode = _number(row, "best_val_return"), _number(row, "best_val_episode")
    return RunResult(
        method=row["method"],
        env=row["env"],
        seed=int(row["seed"]),
        test_return=float(row["test_return"]),
        preset=row.get("preset", preset),
        variant=parse_variant(row["variant"]),
        settings=parse_settings(row.get("settings") or ""),
        run_id=row["run_id"].strip(),
        test_stderr=_number(row, "test_return_stderr"),
        train_seconds=_number(row, "train_seconds"),
        commit=row.get("git_commit") or "",
        best_val=None if best is None or episode is None else (best, int(episode)),
        val_last_tenth=_number(row, "val_return_last_tenth"),
    )


def _number(row: dict[str, str], column: str) -> float | None:
    """An optional numeric field: None when the column is absent or empty."""
    text = (row.get(column) or "").strip()
    if not text:
        return None
    value = float(text)
    if not math.isfinite(value):
        raise SlateRLError(f"{column} is {text}")
    return value
