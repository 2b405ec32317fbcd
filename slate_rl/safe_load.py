"""Reading torch files without running code: tensors and plain values only.

Every torch file slate-rl reads from a store or a user's folder (policies, GeMS models and Lightning checkpoints,
resume states, item tables) goes through `torch_load`: torch's weights-only unpickler, which rebuilds tensors,
numbers, strings, bytes and plain containers (dict, list, tuple, set, OrderedDict) and nothing else. A file whose
pickle refers to any other Python object (a class, or a function such as `os.system` called while it loads) is
refused with a SlateRLError before anything in it runs. No project type is allowed beyond those: slate-rl saves
configurations, generator states and metadata as plain values, so no allow-list of its own classes is needed.
"""

from __future__ import annotations

import io
import os
import pickle
import re
from typing import Any

import torch

from slate_rl.errors import SlateRLError

_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def torch_load(source: str | os.PathLike[str] | bytes, what: str, map_location: str | torch.device = "cpu") -> Any:
    """Load a torch file (a path, or the bytes of one kept inside another file) as tensors and plain values, onto
    the CPU or the device `map_location`; `what` names it in messages (e.g. "policy file")."""
    label = what if isinstance(source, bytes) else f"{what} {os.fspath(source)}"
    if not _looks_like_torch_file(source):
        raise SlateRLError(f"{label} is not a file written by torch.save (a zip archive or a pickle)")
    try:
        return torch.load(
            io.BytesIO(source) if isinstance(source, bytes) else source, map_location=map_location, weights_only=True
        )
    except pickle.UnpicklingError as exc:
        raise SlateRLError(
            f"refused to load {label}: {_reason(str(exc))}, and a file like that can run code when it is "
            "loaded. slate-rl stores tensors and plain values only; if an older slate-rl wrote this file, re-create "
            "it with this version (run the stage that made it again), otherwise do not trust the store it came from"
        ) from exc
    except FileNotFoundError as exc:
        raise SlateRLError(f"{label} does not exist") from exc
    except (RuntimeError, EOFError, OSError) as exc:
        raise SlateRLError(f"cannot read {label}: it is not a complete torch file ({exc})") from exc


def _looks_like_torch_file(source: str | os.PathLike[str] | bytes) -> bool:
    """Whether `source` starts as torch.save writes: a zip archive (the default) or a pickle (the legacy format).
    A missing file passes, so that torch's own error names it."""
    if isinstance(source, bytes):
        head = source[:2]
    else:
        try:
            with open(source, "rb") as handle:
                head = handle.read(2)
        except FileNotFoundError:
            return True
    return head == b"PK" or head[:1] == b"\x80"


def _reason(message: str) -> str:
    """What made torch's weights-only unpickler refuse a file, in a few words."""
    found = _GLOBAL.search(message)
    if found:
        return f"it refers to the Python object {found[1]}, not only to tensors and plain values"
    return "it holds pickle instructions that tensors and plain values never need"
