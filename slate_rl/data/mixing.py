"""Mix offline datasets from several sources into one, keeping every episode's source label and each source's metadata.

    mixed = mix([(expert, 1000), (expert_noisy, 4000), (medium, 3000), (random, 2000)], seed=0, total=10_000)
    counts = split_counts(10_000, {"expert": 0.1, "expert_noisy": 0.4, "medium": 0.3, "random": 0.2})

Each part contributes `n` of its episodes, drawn without replacement with `numpy.random.default_rng(seed)`; the
result is shuffled with the same generator, so that a contiguous train/validation split sees every source.
Metadata: the environment keys (`env`, `env_params`, `embeddings`) and `reference_scores` must agree across parts
and are kept; the `sources` entries are merged, each gaining `episodes` (taken) and `episodes_available`; any other
top-level key of a part (its seed, sim_seed, a previous `mix`...) moves into each of that part's source entries;
`mix` records the seed and the counts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from slate_rl.data.offline import ENV_KEYS, OPTIONAL_FIELDS, OfflineEpisodes
from slate_rl.errors import SlateRLError


def split_counts(total: int, proportions: Mapping[str, float]) -> dict[str, int]:
    """Integer episode counts for `proportions` (summing to 1) of `total`, by largest remainder."""
    if int(total) < 1:
        raise SlateRLError(f"total must be a positive number of episodes (got {total})")
    if not proportions or any(float(p) < 0 for p in proportions.values()):
        raise SlateRLError(f"proportions must be non-negative and not empty (got {dict(proportions)})")
    if not math.isclose(sum(proportions.values()), 1.0, abs_tol=1e-6):
        raise SlateRLError(
            f"proportions must add up to 1, they add up to {sum(proportions.values()):.6g}: {dict(proportions)}"
        )
    exact = {name: float(p) * int(total) for name, p in proportions.items()}
    counts = {name: math.floor(value) for name, value in exact.items()}
    by_remainder = sorted(exact, key=lambda name: exact[name] - counts[name], reverse=True)
    for name in by_remainder[: int(total) - sum(counts.values())]:
        counts[name] += 1
    return counts


def mix(parts: Sequence[tuple[OfflineEpisodes, int]], seed: int, total: int | None = None) -> OfflineEpisodes:
    """Draw `n` episodes from each part and shuffle them together (see the module docs); `total` checks the sum."""
    if not parts:
        raise SlateRLError("mix needs at least one (episodes, count) part")
    counts = [int(n) for _, n in parts]
    if total is not None and sum(counts) != int(total):
        raise SlateRLError(f"the part counts {counts} add up to {sum(counts)}, not the requested total {total}")
    episodes = [part for part, _ in parts]
    _check_compatible(episodes)
    rng = np.random.default_rng(int(seed))
    names: list[str] = []
    taken, offsets = [], []
    for index, (part, n) in enumerate(zip(episodes, counts, strict=True)):
        label = f"part {index} ({', '.join(part.source_names)})"
        if not 1 <= n <= part.num_episodes:
            raise SlateRLError(
                f"{label} has {part.num_episodes} episodes; {n} requested. Ask for 1 to "
                f"{part.num_episodes}, or collect more episodes for this source"
            )
        clash = set(names) & set(part.source_names)
        if clash:
            raise SlateRLError(
                f"source name(s) {sorted(clash)} of {label} already come from an earlier part; "
                "give each source its own name when collecting"
            )
        taken.append(np.sort(rng.choice(part.num_episodes, size=n, replace=False)))
        offsets.append(len(names))
        names.extend(part.source_names)
    # where each part's episodes land in the shuffled result (filled in place: one copy of the data)
    positions = np.split(rng.permutation(sum(counts)), np.cumsum(counts)[:-1])
    arrays = {}
    for name in ("slates", "clicks", "rewards", "sources", *OPTIONAL_FIELDS):
        first = getattr(episodes[0], name)
        if first is None:
            continue
        out = np.empty((sum(counts), *first.shape[1:]), dtype=first.dtype)
        for part, rows, position, offset in zip(episodes, taken, positions, offsets, strict=True):
            values = getattr(part, name)[rows]
            out[position] = values + offset if name == "sources" else values
        arrays[name] = out
    metadata = _merged_metadata(episodes, taken, int(seed))
    return OfflineEpisodes(**arrays, source_names=names, metadata=metadata)


def _check_compatible(parts: Sequence[OfflineEpisodes]) -> None:
    first = parts[0]
    for index, part in enumerate(parts[1:], start=1):
        label = f"part {index} ({', '.join(part.source_names)})"
        for key in ENV_KEYS:
            if part.metadata.get(key) != first.metadata.get(key):
                raise SlateRLError(
                    f"{label} differs from part 0 in metadata[{key!r}]: {part.metadata.get(key)!r} vs "
                    f"{first.metadata.get(key)!r}; only episodes of the same environment can be mixed"
                )
        if (part.horizon, part.slate_size) != (first.horizon, first.slate_size):
            raise SlateRLError(
                f"{label} has horizon {part.horizon} and slate size {part.slate_size}, part 0 has "
                f"{first.horizon} and {first.slate_size}"
            )
        for name in OPTIONAL_FIELDS:
            mine, theirs = getattr(part, name), getattr(first, name)
            if (mine is None) != (theirs is None):
                have = "part 0" if mine is None else label
                raise SlateRLError(
                    f"only some parts have {name!r} (e.g. {have}); record it for every source, or "
                    f"drop it with dataclasses.replace(episodes, {name}=None)"
                )
            if mine is not None and mine.shape[-1] != theirs.shape[-1]:
                raise SlateRLError(f"{label} has {name} of size {mine.shape[-1]}, part 0 of size {theirs.shape[-1]}")


def _merged_metadata(parts: Sequence[OfflineEpisodes], taken: Sequence[np.ndarray], seed: int) -> dict[str, Any]:
    merged: dict[str, Any] = {key: parts[0].metadata[key] for key in ENV_KEYS if key in parts[0].metadata}
    references = [p.metadata["reference_scores"] for p in parts if "reference_scores" in p.metadata]
    if any(ref != references[0] for ref in references):
        raise SlateRLError(
            f"the parts disagree on reference_scores ({references}); they must come from the same "
            "evaluation of the random and expert policies"
        )
    if references:
        merged["reference_scores"] = references[0]
    sources: dict[str, Any] = {}
    for part, rows in zip(parts, taken, strict=True):
        extra = {
            key: value for key, value in part.metadata.items() if key not in (*ENV_KEYS, "reference_scores", "sources")
        }
        available = part.source_counts()
        chosen = np.bincount(part.sources[rows], minlength=len(part.source_names))
        for code, name in enumerate(part.source_names):
            info = part.metadata.get("sources", {}).get(name, {})
            sources[name] = {**extra, **info, "episodes": int(chosen[code]), "episodes_available": available[name]}
    merged["sources"] = sources
    merged["mix"] = {"seed": seed, "episodes": {name: info["episodes"] for name, info in sources.items()}}
    return merged
