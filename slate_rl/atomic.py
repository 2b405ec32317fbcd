"""Atomic file writes: write to a temporary sibling, then rename, so that readers never see half a file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    tmp = _tmp(path)
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode())


def write_json(path: str | Path, payload: Any) -> Path:
    return write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def torch_save(obj: Any, path: str | Path) -> Path:
    path = Path(path)
    tmp = _tmp(path)
    torch.save(obj, tmp)
    os.replace(tmp, path)
    return path
