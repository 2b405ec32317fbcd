"""Seeds as users give them: a count of the paper's seeds, one seed, or a list; and what is refused."""

from __future__ import annotations

import pytest

from slate_rl.errors import SlateRLError
from slate_rl.seeds import PAPER_SEEDS, parse_seeds


@pytest.mark.parametrize(
    "text, seeds",
    [
        ("2", [58407201, 496912423]),
        ("10", list(PAPER_SEEDS)),
        (" 1 ", [58407201]),
        ("58407201", [58407201]),
        ("11", [11]),
        ("1,5", [1, 5]),
        ("7,", [7]),
        ("0, 496912423", [0, 496912423]),
    ],
)
def test_counts_seeds_and_lists(text, seeds):
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "seeds is empty; give a count in [1, 10]"),
        ("0", "seeds '0' is neither a count in [1, 10] nor a seed above 10"),
        ("-4", "seeds '-4' is neither a count in [1, 10] nor a seed above 10"),
        ("ten", "seeds 'ten' is neither a count nor seeds; give a count in [1, 10] (the paper's first N seeds"),
        ("1.5", "is neither a count nor seeds"),
        ("1,,2", "seeds '1,,2' has an empty entry"),
        ("3,-1", "-1 is not a seed (seeds lie in [0, 2**63))"),
        (str(2**63), f"{2**63} is not a seed"),
        ("5,6,5", "names seed 5 twice"),
    ],
)
def test_bad_seeds_name_the_forms(text, message):
    with pytest.raises(SlateRLError) as error:
        parse_seeds(text)
    assert message in str(error.value)
    if "twice" not in message:
        assert "one seed above 10 (e.g. 58407201) or a comma-separated list" in str(error.value)
