"""Action bounds and the three slate decoders: shapes, guarantees against brute force, payload round trips."""

import pytest
import torch
from torch import nn

from slate_rl.errors import SlateRLError
from slate_rl.rankers.base import SlateDecoder
from slate_rl.rankers.bounds import ActionBounds, gems_action_bounds, table_bounds
from slate_rl.rankers.decoders import GeMSDecoder, KNNDecoder, TopKDecoder, decoder_from_payload
from slate_rl.rankers.gems import GeMS


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- bounds
def test_box_from_min_max_and_table():
    bounds = ActionBounds.from_min_max(torch.tensor([-1.0, 0.0]), torch.tensor([3.0, 0.5]))
    assert torch.equal(bounds.center, torch.tensor([1.0, 0.25]))
    assert torch.equal(bounds.scale, torch.tensor([2.0, 0.25]))
    table = torch.tensor([[0.0, 2.0], [1.0, -2.0], [0.5, 0.0]])
    box = table_bounds(table)
    assert torch.equal(box.low, torch.tensor([0.0, -2.0])) and torch.equal(box.high, torch.tensor([1.0, 2.0]))
    with pytest.raises(SlateRLError, match="low <= high"):
        ActionBounds.from_min_max(torch.ones(2), torch.zeros(2))


class HandEncoder(GeMS):
    """mu = (first slate item, first click), logvar = (0, log 4): sigma = (1, 2) under the proper std."""

    def encode(self, slates, clicks):
        mu = torch.stack([slates[:, 0].float(), clicks[:, 0]], dim=1)
        logvar = torch.tensor([0.0, 4.0]).log().expand_as(mu).clone()
        logvar[:, 0] = 0.0
        return mu, logvar


def test_gems_bounds_use_first_sessions_and_proper_std():
    slates = torch.arange(5 * 3 * 10).view(5, 3, 10).to(torch.int16)  # first items 0, 10, ..., 140
    clicks = torch.zeros(5, 3, 10, dtype=torch.uint8)
    clicks[1, 2, 0] = 1
    bounds = gems_action_bounds(HandEncoder(latent_dim=2), slates, clicks, num_sessions=2, chunk_size=4)
    # first 2 sessions: first items 0..50, mu_0 in [0, 50], sigma_0 = 1; mu_1 in {0, 1}, sigma_1 = 2
    assert torch.allclose(bounds.low, torch.tensor([-1.0, -2.0]))
    assert torch.allclose(bounds.high, torch.tensor([51.0, 3.0]))
    assert torch.allclose(bounds.center, torch.tensor([25.0, 0.5]))


def test_gems_bounds_match_a_direct_computation():
    vae = GeMS(seed=3)
    generator = torch.Generator().manual_seed(3)
    slates = torch.randint(0, 1000, (12, 5, 10), generator=generator)
    clicks = (torch.rand(12, 5, 10, generator=generator) < 0.3).to(torch.uint8)
    bounds = gems_action_bounds(vae, slates, clicks, num_sessions=10, chunk_size=7)
    with torch.no_grad():
        mu, logvar = vae.encode(slates[:10].reshape(-1, 10), clicks[:10].reshape(-1, 10).float())
    sigma = (logvar / 2).exp()
    assert torch.allclose(bounds.low, (mu - sigma).min(0).values)
    assert torch.allclose(bounds.high, (mu + sigma).max(0).values)


# ---------------------------------------------------------------- GeMS decoder
@pytest.fixture(scope="module")
def gems_decoder():
    vae = GeMS(seed=4)
    bounds = ActionBounds(torch.zeros(32), 2 * torch.ones(32))
    return vae, GeMSDecoder.from_vae(vae, bounds)


def test_gems_decoder_is_brute_force_argmax(gems_decoder):
    vae, decoder = gems_decoder
    actions = 3 * randn(3000, 32, seed=5)  # more than one scoring chunk
    slates = decoder.decode(actions)
    assert slates.shape == (3000, 10) and slates.dtype == torch.int64
    with torch.no_grad():
        expected = vae.item_logits(vae.decode(actions)[0]).argmax(dim=-1)
    assert torch.equal(slates, expected)
    assert isinstance(decoder, SlateDecoder) and decoder.action_dim == 32
    assert not any(p.requires_grad for p in decoder.parameters())


def test_gems_decoder_is_a_frozen_copy(gems_decoder):
    vae, decoder = gems_decoder
    before = decoder.decode(randn(5, 32, seed=6))
    with torch.no_grad():
        vae.slate_head.weight.add_(1.0)
        vae.item_embeddings.weight.mul_(-1.0)
    try:
        assert torch.equal(decoder.decode(randn(5, 32, seed=6)), before)
    finally:
        with torch.no_grad():
            vae.slate_head.weight.sub_(1.0)
            vae.item_embeddings.weight.mul_(-1.0)


def test_gems_sampling_is_reproducible_and_follows_the_softmax(gems_decoder):
    vae, _ = gems_decoder
    bounds = ActionBounds(torch.zeros(32), torch.ones(32))
    actions = randn(4, 32, seed=7)
    first = GeMSDecoder.from_vae(vae, bounds, sample=True, seed=11).decode(actions)
    second = GeMSDecoder.from_vae(vae, bounds, sample=True, seed=11).decode(actions)
    assert torch.equal(first, second)
    sampler = GeMSDecoder.from_vae(vae, bounds, sample=True)
    draws = sampler.decode(actions[:1].expand(3000, 32), generator=torch.Generator().manual_seed(1))
    probs = torch.softmax(sampler.item_logits(actions[:1])[0], dim=-1)  # (R, N)
    frequencies = torch.stack([torch.bincount(draws[:, r], minlength=1000) for r in range(10)]).float() / 3000
    assert (frequencies - probs).abs().max() < 0.04  # binomial sd <= 0.009 at n = 3000


# ---------------------------------------------------------------- TopK
def test_topk_returns_distinct_items_in_descending_score():
    table = randn(1000, 20, seed=8)
    decoder = TopKDecoder(table)
    actions = randn(2500, 20, seed=9)
    slates = decoder.decode(actions)
    assert slates.shape == (2500, 10)
    assert all(len(set(row)) == 10 for row in slates.tolist())
    scores = actions @ table.T
    chosen = scores.gather(1, slates)
    assert bool((chosen[:, :-1] >= chosen[:, 1:]).all())
    assert torch.allclose(chosen, scores.sort(dim=1, descending=True).values[:, :10])
    assert torch.allclose(decoder.action_center, (table.max(0).values + table.min(0).values) / 2)
    assert torch.allclose(decoder.action_scale, (table.max(0).values - table.min(0).values) / 2)


# ---------------------------------------------------------------- kNN
def test_knn_candidates_are_the_nearest_items_per_slot_major_block():
    table = randn(300, 4, seed=10)
    decoder = KNNDecoder(table, slate_size=3, k=5)
    assert decoder.action_dim == 12
    actions = randn(2100, 12, seed=11)
    candidates = decoder.candidates(actions)
    assert candidates.shape == (2100, 3, 5)
    for slot in range(3):
        query = actions[:, slot * 4 : (slot + 1) * 4]  # slot r uses components r*D .. (r+1)*D - 1
        distances = torch.cdist(query, table)
        found = distances.gather(1, candidates[:, slot])
        assert torch.allclose(found, distances.sort(dim=1).values[:, :5], atol=1e-5)  # nearest first
        assert torch.equal(decoder.decode(actions)[:, slot], candidates[:, slot, 0])


def test_knn_layout_moves_with_the_slot_block():
    table = torch.eye(4)
    decoder = KNNDecoder(table, slate_size=2, k=1)
    action = torch.tensor([[0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0]])  # slot 0 -> item 2, slot 1 -> item 1
    assert decoder.decode(action).tolist() == [[2, 1]]


def test_knn_bounds_are_the_table_box_tiled_per_slot():
    table = randn(50, 3, seed=12)
    decoder = KNNDecoder(table, slate_size=4, k=2)
    box = table_bounds(table)
    for slot in range(4):
        assert torch.equal(decoder.action_center[slot * 3 : (slot + 1) * 3], box.center)
        assert torch.equal(decoder.action_scale[slot * 3 : (slot + 1) * 3], box.scale)


# ---------------------------------------------------------------- payloads
def plain(value) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and plain(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(plain(v) for v in value)
    return isinstance(value, (torch.Tensor, int, float, bool, str))


@pytest.mark.parametrize(
    "build",
    [
        lambda: GeMSDecoder.from_vae(
            GeMS(latent_dim=8, decoder_hidden=(16, 24), seed=13),
            ActionBounds(randn(8, seed=14), randn(8, seed=15).abs()),
            sample=True,
            seed=3,
        ),
        lambda: TopKDecoder(randn(1000, 20, seed=16), slate_size=10),
        lambda: KNNDecoder(randn(1000, 20, seed=17), slate_size=10, k=7),
    ],
)
def test_payload_round_trip(build):
    decoder = build()
    payload = decoder.save_payload()
    assert plain(payload)
    restored = decoder_from_payload(payload)
    assert type(restored) is type(decoder)
    for (name, a), (_, b) in zip(decoder.state_dict().items(), restored.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    actions = decoder.squash(randn(64, decoder.action_dim, seed=18))
    assert torch.equal(restored.decode(actions), decoder.decode(actions))
    assert restored.action_dim == decoder.action_dim


def test_bad_payload_and_actions_are_named():
    with pytest.raises(SlateRLError, match="payload"):
        decoder_from_payload({"kind": "slateq"})
    with pytest.raises(SlateRLError, match="actions must have shape"):
        TopKDecoder(randn(30, 5)).decode(torch.zeros(2, 4))
    with pytest.raises(SlateRLError, match="latent dimension"):
        GeMSDecoder(
            nn.Sequential(nn.Linear(3, 4), nn.ReLU()), nn.Linear(4, 20), randn(30, 2), torch.zeros(5), torch.ones(5)
        )
