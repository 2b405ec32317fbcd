"""Seeds as users give them: a count of the paper's seeds, one seed, or a list.

A value is a count when it is a single integer in [1, 10] (the paper's first N seeds, in the paper's order);
otherwise it names seeds: one integer above 10, or a comma-separated list (where every integer is a seed, so '7,'
is the single seed 7).
"""

from __future__ import annotations

from slate_rl.errors import SlateRLError

PAPER_SEEDS = (58407201, 496912423, 2465781, 300029, 215567, 23437561, 309081907, 548260111, 51941177, 212407167)
MAX_SEED = 2**63 - 1
FORMS = (
    f"a count in [1, {len(PAPER_SEEDS)}] (the paper's first N seeds, e.g. 3), one seed above "
    f"{len(PAPER_SEEDS)} (e.g. 58407201) or a comma-separated list of seeds (e.g. 58407201,496912423; '7,' is the "
    "single seed 7)"
)


def parse_seeds(text: str) -> list[int]:
    """'3' -> the paper's first three seeds; '58407201' -> that seed; '1,5' -> seeds 1 and 5."""
    text = str(text).strip()
    parts = [part.strip() for part in text.split(",")]
    if "," in text and parts[-1] == "":
        parts.pop()  # '7,': a list of one seed
    if not text:
        raise SlateRLError(f"seeds is empty; give {FORMS}")
    if any(not part for part in parts):
        raise SlateRLError(f"seeds {text!r} has an empty entry; give {FORMS}")
    try:
        values = [int(part) for part in parts]
    except ValueError as exc:
        raise SlateRLError(f"seeds {text!r} is neither a count nor seeds; give {FORMS}") from exc
    if "," not in text:
        if 1 <= values[0] <= len(PAPER_SEEDS):
            return list(PAPER_SEEDS[: values[0]])
        if values[0] <= len(PAPER_SEEDS):
            raise SlateRLError(
                f"seeds {text!r} is neither a count in [1, {len(PAPER_SEEDS)}] nor a seed above "
                f"{len(PAPER_SEEDS)}; give {FORMS}"
            )
    bad = [v for v in values if not 0 <= v <= MAX_SEED]
    if bad:
        raise SlateRLError(f"seeds {text!r}: {bad[0]} is not a seed (seeds lie in [0, 2**63)); give {FORMS}")
    duplicated = sorted({v for v in values if values.count(v) > 1})
    if duplicated:
        raise SlateRLError(f"seeds {text!r} names seed {', '.join(map(str, duplicated))} twice; give each seed once")
    return values


def describe(seeds: list[int]) -> str:
    """'58407201,496912423' (how a resolved seed list is logged and printed)."""
    return ",".join(map(str, seeds))
