"""Item embeddings and the quantities derived from them: topics, the initial slate, max score."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from sim_helpers import items_by_topic, paper_table, paper_table_path, single_torch_thread
from slate_rl.envs import env_params, generate_item_embeddings, load_item_embeddings, make, resolve_item_embeddings
from slate_rl.envs.embeddings import initial_slate, item_topics, validate_item_embeddings
from slate_rl.envs.reference import ReferenceTopicRec
from slate_rl.errors import SlateRLError

PAPER = {
    "focused": {
        "sha256": "6ce1c47795aa1e02a76b63994025f24d990f2c9ed7c6b5d8d6fd242ff4d03325",
        "e0": [0.231908, 0.065451, 0.000301, 0.000829],
        "sum": 3202.0382,
        "topic_counts": [105, 108, 99, 109, 103, 102, 88, 92, 99, 95],
        "first_topics": [8, 3, 0, 5, 5, 6, 5, 1, 6, 4, 5, 9, 9, 6, 2, 1, 2, 3, 4, 2],
        "initial_slate": [78, 575, 163, 145, 599, 6, 200, 279, 850, 225],
    },
    "diffuse": {
        "sha256": "5bf7321bc85b34c18e4e78c743a6ef27d5e0a5f9c2bb46b23fd50d62cd42944b",
        "e0": [0.142176, 0.023733, 0.019007, 0.026043],
        "sum": 3196.7158,
        "topic_counts": [105, 102, 96, 102, 107, 99, 109, 101, 98, 81],
        "first_topics": [2, 6, 6, 4, 6, 3, 2, 8, 4, 7, 0, 1, 9, 5, 8, 7, 3, 0, 7, 9],
        "initial_slate": [714, 632, 414, 30, 759, 515, 392, 15, 458, 335],
    },
}

pytestmark = pytest.mark.usefixtures(single_torch_thread.__name__)  # tiny tensors: threads only add overhead


# ---------------------------------------------------------------- the paper's tables (skipped when absent)
@pytest.mark.parametrize("kind", ["focused", "diffuse"])
def test_paper_table_fingerprints(kind: str) -> None:
    expected = PAPER[kind]
    path = paper_table_path(kind)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == expected["sha256"]
    table = load_item_embeddings(path)
    assert table.dtype == torch.float32 and tuple(table.shape) == (1000, 20)
    torch.testing.assert_close(table[0, :4], torch.tensor(expected["e0"]), rtol=0, atol=1e-6)
    assert float(table.double().sum()) == pytest.approx(expected["sum"], abs=1e-3)
    assert float(table.min()) > 0 and float(table.max()) <= 0.95
    torch.testing.assert_close(table.double().norm(dim=1), torch.ones(1000, dtype=torch.float64), rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", ["focused", "diffuse"])
def test_paper_table_topics_and_initial_slate(kind: str) -> None:
    expected = PAPER[kind]
    env = make(f"{kind}_topdown", item_embeddings=paper_table_path(kind))
    assert env.item_topics[:20].tolist() == expected["first_topics"]
    assert torch.bincount(env.item_topics, minlength=10).tolist() == expected["topic_counts"]
    assert env.initial_slate.tolist() == expected["initial_slate"]
    assert env.item_topics[env.initial_slate].tolist() == list(range(10))
    assert float(env.max_score) == pytest.approx(1.0, abs=2e-7)
    reference = ReferenceTopicRec(env.params, paper_table(kind))
    assert reference.item_comp.tolist() == env.item_topics.tolist()
    assert reference.initial_slate.tolist() == expected["initial_slate"]


# ---------------------------------------------------------------- derived quantities on generated tables
def test_item_topics_is_block_of_largest_norm_first_on_ties() -> None:
    table = torch.tensor(
        [
            [0.6, 0.0, 0.0, 0.8, 0.0, 0.0],  # blocks of norm 0.6, 0.8, 0 -> topic 1
            [0.0, 0.0, 0.0, 0.0, 0.3, 0.4],  # topic 2
            [0.3, 0.4, 0.4, 0.3, 0.0, 0.0],
        ]
    )  # tie between topics 0 and 1 -> 0
    assert item_topics(table, num_topics=3, topic_size=2).tolist() == [1, 2, 0]


def test_initial_slate_takes_strongest_item_per_topic() -> None:
    table = generate_item_embeddings(seed=3)
    norms = table.double().reshape(1000, 10, 2).norm(dim=2)
    expected = [int(norms[:, k].argmax()) for k in range(10)]
    assert initial_slate(table, 10, 2, 10).tolist() == expected
    assert item_topics(table, 10, 2)[torch.tensor(expected)].tolist() == list(range(10))


def test_initial_slate_with_fewer_topics_than_slots() -> None:
    params = env_params("focused_topdown", num_items=200, num_topics=4, topic_size=3, slate_size=8)
    table = resolve_item_embeddings(params)
    norms = table.double().reshape(200, 4, 3).norm(dim=2)
    expected = [int(i) for k in range(4) for i in norms[:, k].argsort(descending=True)[:2]]
    assert initial_slate(table, 4, 3, 8).tolist() == expected
    assert ReferenceTopicRec(params, table).initial_slate.tolist() == expected


def test_reference_and_batched_derive_the_same_constants() -> None:
    env = make("diffuse_mix")
    reference = ReferenceTopicRec(env.params, env.item_embeddings)
    assert reference.item_comp.tolist() == env.item_topics.tolist()
    assert reference.initial_slate.tolist() == env.initial_slate.tolist()
    assert float(reference.max_score) == pytest.approx(float(env.max_score), abs=1e-6)
    by_topic = items_by_topic(env.item_embeddings)
    assert all(env.item_topics[items].eq(k).all() for k, items in by_topic.items())


# ---------------------------------------------------------------- generated tables
def test_generated_rows_are_unit_norm_and_non_negative() -> None:
    table = generate_item_embeddings(seed=1)
    assert table.dtype == torch.float32 and tuple(table.shape) == (1000, 20) and table.is_contiguous()
    assert float(table.min()) >= 0.0
    torch.testing.assert_close(table.norm(dim=1), torch.ones(1000), rtol=0, atol=1e-6)


def test_generated_tables_follow_the_stored_files_law() -> None:
    """The paper's stored tables (exponent 1) have entry mean 0.160 and std 0.156, balanced topic counts."""
    table = generate_item_embeddings(seed=2)
    # 20,000 entries, correlated within rows: allow 5 standard errors computed per row (1000 independent rows)
    row_means = table.double().mean(dim=1)
    tolerance = 5 * float(row_means.std()) / 1000**0.5
    assert float(table.double().mean()) == pytest.approx(0.160, abs=tolerance)
    assert float(table.double().std()) == pytest.approx(0.156, abs=0.01)
    counts = torch.bincount(item_topics(table, 10, 2), minlength=10).double()
    # multinomial(1000, 1/10): sd of one count = sqrt(1000 * 0.1 * 0.9) = 9.5
    assert float((counts - 100).abs().max()) < 5 * 9.5


def test_generated_tables_are_seeded() -> None:
    assert torch.equal(generate_item_embeddings(seed=5), generate_item_embeddings(seed=5))
    assert not torch.equal(generate_item_embeddings(seed=5), generate_item_embeddings(seed=6))
    focused, diffuse = make("focused_topdown").item_embeddings, make("diffuse_topdown").item_embeddings
    assert not torch.equal(focused, diffuse)


def test_embedding_exponent_sharpens_the_rows() -> None:
    """Exponent p: rows are normalise(x ** p), hence normalise(e_1 ** p) for the exponent-1 row e_1."""
    flat = generate_item_embeddings(seed=4, exponent=1.0)
    sharp = generate_item_embeddings(seed=4, exponent=1.5)
    expected = flat.double() ** 1.5
    expected = expected / expected.norm(dim=1, keepdim=True)
    torch.testing.assert_close(sharp.double(), expected, rtol=0, atol=1e-6)
    assert _main_topic_share(sharp) > _main_topic_share(flat) + 0.05


def _main_topic_share(table: torch.Tensor) -> float:
    """Mean over items of the norm of the strongest topic block (1 = single-topic items)."""
    return float(table.reshape(table.shape[0], 10, 2).norm(dim=2).max(dim=1).values.mean())


# ---------------------------------------------------------------- loading and validation
def test_load_pt_and_npy_round_trip(tmp_path) -> None:
    table = generate_item_embeddings(seed=7)
    torch.save(table, tmp_path / "items.pt")
    np.save(tmp_path / "items.npy", table.numpy())
    params = env_params("focused_topdown")
    for name in ("items.pt", "items.npy"):
        loaded = resolve_item_embeddings(params, tmp_path / name)
        assert torch.equal(loaded, table)
    env = make("focused_topdown", item_embeddings=str(tmp_path / "items.npy"))
    assert torch.equal(env.item_embeddings, table)


def test_load_errors(tmp_path) -> None:
    with pytest.raises(SlateRLError, match="does not exist"):
        load_item_embeddings(tmp_path / "missing.pt")
    (tmp_path / "items.txt").write_text("1 2 3")
    with pytest.raises(SlateRLError, match=r"\.pt or \.npy"):
        load_item_embeddings(tmp_path / "items.txt")
    torch.save({"table": torch.zeros(3)}, tmp_path / "dict.pt")
    with pytest.raises(SlateRLError, match="not a tensor"):
        load_item_embeddings(tmp_path / "dict.pt")
    (tmp_path / "corrupt.npy").write_bytes(b"not numpy")
    with pytest.raises(SlateRLError, match="cannot read"):
        load_item_embeddings(tmp_path / "corrupt.npy")


@pytest.mark.parametrize(
    "bad, message",
    [
        (lambda t: t[:999], r"expected shape \(1000, 20\)"),
        (lambda t: t[:, :19], r"expected shape \(1000, 20\)"),
        (lambda t: (t * 100).long(), "floating-point"),
        (lambda t: t.index_fill(0, torch.tensor([3]), float("nan")), "NaN"),
        (lambda t: t.index_fill(0, torch.tensor([8]), -0.1), "negative entries \\(first: item 8\\)"),
        (lambda t: t.index_fill(0, torch.tensor([2]), 0.0), "all zero"),
    ],
)
def test_validation_errors(bad, message: str, tmp_path) -> None:
    table = bad(generate_item_embeddings(seed=8))
    with pytest.raises(SlateRLError, match=message):
        validate_item_embeddings(table, 1000, 20)
    torch.save(table, tmp_path / "bad.pt")
    with pytest.raises(SlateRLError, match=message):
        make("focused_topdown", item_embeddings=tmp_path / "bad.pt")
