"""Data pipeline of the rankers: validation split, flattening, batches, shuffling, dtypes."""

import pytest
import torch

from slate_rl.errors import SlateRLError
from slate_rl.rankers.data import SlateDataModule, SlateSamples, SliceBatches, split_sessions


def sessions(n: int = 20, steps: int = 3, dtype=torch.int16):
    """Slate ids encode (session, step, slot) so that every sample is recognisable."""
    ids = torch.arange(n * steps * 10).view(n, steps, 10) % 1000
    return ids.to(dtype), (ids % 2).to(torch.uint8)


def test_split_is_the_first_tenth_of_sessions_flattened():
    slates, clicks = sessions(20)
    train, val = split_sessions(slates, clicks)
    assert len(val) == 2 * 3 and len(train) == 18 * 3
    assert torch.equal(val.slates, slates[:2].reshape(-1, 10))
    assert torch.equal(train.slates, slates[2:].reshape(-1, 10))
    assert val.slates.dtype == torch.int16 and train.clicks.dtype == torch.uint8  # stored dtype kept


@pytest.mark.parametrize("dtype", [torch.int16, torch.int32, torch.int64])
@pytest.mark.parametrize("click_dtype", [torch.uint8, torch.bool])
def test_batches_are_int64_ids_and_float_clicks(dtype, click_dtype):
    slates, clicks = sessions(10, dtype=dtype)
    samples = SlateSamples.from_sessions(slates, clicks.to(click_dtype))
    ids, flags = next(iter(SliceBatches(samples, 4, shuffle=False)))
    assert ids.dtype == torch.int64 and flags.dtype == torch.float32
    assert torch.equal(ids, slates.reshape(-1, 10)[:4].long())
    assert torch.equal(flags, clicks.reshape(-1, 10)[:4].float())


def test_unshuffled_batches_keep_stored_order_and_the_last_partial_batch():
    slates, clicks = sessions(10)
    samples = SlateSamples.from_sessions(slates, clicks)
    batches = list(SliceBatches(samples, 7, shuffle=False))
    assert len(batches) == len(SliceBatches(samples, 7, shuffle=False)) == 5  # 30 samples: 4 x 7 + 2
    assert batches[-1][0].shape == (2, 10)
    assert torch.equal(torch.cat([b[0] for b in batches]), samples.slates.long())


def test_shuffling_covers_every_sample_once_per_epoch_and_changes_order():
    slates, clicks = sessions(30)
    samples = SlateSamples.from_sessions(slates, clicks)
    loader = SliceBatches(samples, 8, shuffle=True, generator=torch.Generator().manual_seed(3))
    epochs = [torch.cat([ids for ids, _ in loader]) for _ in range(2)]
    for seen in epochs:
        assert sorted(seen[:, 0].tolist()) == sorted(samples.slates[:, 0].long().tolist())
        assert not torch.equal(seen, samples.slates.long())
    assert not torch.equal(epochs[0], epochs[1])
    # clicks travel with their slates
    first_ids, first_clicks = next(iter(loader))
    assert torch.equal(first_clicks, (first_ids % 2).float())


def test_shuffling_is_reproducible_with_the_seed():
    slates, clicks = sessions(30)
    orders = [
        torch.cat([ids for ids, _ in SlateDataModule(slates, clicks, batch_size=8, seed=5).train_dataloader()])
        for _ in range(2)
    ]
    assert torch.equal(orders[0], orders[1])


def test_datamodule_validation_is_unshuffled_first_sessions():
    slates, clicks = sessions(30)
    module = SlateDataModule(slates, clicks, batch_size=4)
    val = torch.cat([ids for ids, _ in module.val_dataloader()])
    assert torch.equal(val, slates[:3].reshape(-1, 10).long())
    unshuffled = torch.cat([ids for ids, _ in SlateDataModule(slates, clicks, shuffle=False).train_dataloader()])
    assert torch.equal(unshuffled, slates[3:].reshape(-1, 10).long())


@pytest.mark.parametrize(
    "make, word",
    [
        (lambda s, c: split_sessions(s.float(), c), "integer item ids"),
        (lambda s, c: split_sessions(s, c[:, :2]), "shape"),
        (lambda s, c: split_sessions(s[:5], c[:5]), "cannot be split"),
        (lambda s, c: split_sessions(s, c, val_fraction=1.0), "val_fraction"),
        (lambda s, c: SlateDataModule(s, c, batch_size=0), "batch_size"),
    ],
)
def test_bad_inputs_are_named(make, word):
    slates, clicks = sessions(20)
    with pytest.raises(SlateRLError, match=word):
        make(slates, clicks)
