"""Logged sessions as flat (slate, clicks) samples: validation split, shuffled index-sliced batches, datamodule.

Logged data are two tensors of shape (n_sessions, episode_length, R): item ids (int16 / int32 / int64) and clicks
(uint8 / bool / integer 0-1). They stay in their compact dtype on one contiguous tensor; batches are index slices of it,
converted to int64 ids and float clicks one batch at a time (no per-slate Python objects).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytorch_lightning as pl
import torch

from slate_rl.errors import SlateRLError
from slate_rl.rankers.checks import check_logged


@dataclass(frozen=True)
class SlateSamples:
    """Independent (slate, clicks) samples: `slates` (n, R) ids and `clicks` (n, R), both in their stored dtype."""

    slates: torch.Tensor
    clicks: torch.Tensor

    def __len__(self) -> int:
        return int(self.slates.shape[0])

    @classmethod
    def from_sessions(cls, slates: torch.Tensor, clicks: torch.Tensor) -> SlateSamples:
        """Flatten sessions (n_sessions, T, R) into n_sessions * T samples (a view when the input is contiguous)."""
        check_logged(slates, clicks)
        width = slates.shape[-1]
        return cls(slates.contiguous().view(-1, width), clicks.contiguous().view(-1, width))

    def to(self, device: torch.device | str) -> SlateSamples:
        """The samples on `device`."""
        return SlateSamples(self.slates.to(device), self.clicks.to(device))

    def batch(self, index: torch.Tensor | slice) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows `index` as (int64 ids, float32 clicks)."""
        return self.slates[index].long(), self.clicks[index].float()


def split_sessions(
    slates: torch.Tensor, clicks: torch.Tensor, val_fraction: float = 0.1
) -> tuple[SlateSamples, SlateSamples]:
    """(train, validation) samples; validation = the first floor(n_sessions * val_fraction) sessions, as the
    reference does, training = the rest. Both parts must be non-empty."""
    check_logged(slates, clicks)
    if not 0.0 < float(val_fraction) < 1.0:
        raise SlateRLError(f"val_fraction must lie strictly between 0 and 1 (got {val_fraction})")
    n_sessions = slates.shape[0]
    n_val = int(n_sessions * float(val_fraction))
    if n_val < 1 or n_val >= n_sessions:
        raise SlateRLError(
            f"{n_sessions} sessions cannot be split with val_fraction={val_fraction}: "
            f"both the validation and the training part need at least one session"
        )
    return (
        SlateSamples.from_sessions(slates[n_val:], clicks[n_val:]),
        SlateSamples.from_sessions(slates[:n_val], clicks[:n_val]),
    )


class SliceBatches:
    """Iterable of (int64 slates, float32 clicks) batches over `samples`.

    shuffle=False gives contiguous slices in stored order (the reference's order, G8); shuffle=True draws a new
    permutation from `generator` at every pass, so each sample appears exactly once per epoch. The last partial
    batch is kept, as in the reference.
    """

    def __init__(
        self, samples: SlateSamples, batch_size: int, shuffle: bool = True, generator: torch.Generator | None = None
    ) -> None:
        if int(batch_size) < 1:
            raise SlateRLError(f"batch_size must be >= 1 (got {batch_size})")
        if shuffle and generator is None:
            raise SlateRLError("shuffled batches need a torch.Generator")
        self.samples, self.batch_size, self.shuffle, self.generator = samples, int(batch_size), shuffle, generator

    def __len__(self) -> int:
        return -(-len(self.samples) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, size = len(self.samples), self.batch_size
        if not self.shuffle:
            for start in range(0, n, size):
                yield self.samples.batch(slice(start, start + size))
            return
        assert self.generator is not None  # __init__ requires one for shuffled batches
        order = torch.randperm(n, generator=self.generator, device=self.generator.device)
        order = order.to(self.samples.slates.device)
        for start in range(0, n, size):
            yield self.samples.batch(order[start : start + size])


class SeedBatches(SliceBatches):
    """Batches of S seeds at once, (int64 slates (S, B, R), float32 clicks (S, B, R)) over `samples`: seed s's
    batches are those `SliceBatches` gives with `generators[s]` (its own order when shuffled), gathered from the
    samples in one indexing per batch, so that one pass over the data serves every seed."""

    def __init__(
        self, samples: SlateSamples, batch_size: int, shuffle: bool, generators: Sequence[torch.Generator]
    ) -> None:
        super().__init__(samples, batch_size, shuffle=False)
        if not generators:
            raise SlateRLError("seed batches need one torch.Generator per seed")
        self.shuffle, self.generators = shuffle, list(generators)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, size, device = len(self.samples), self.batch_size, self.samples.slates.device
        if self.shuffle:
            orders = torch.stack([torch.randperm(n, generator=g, device=g.device).to(device) for g in self.generators])
        else:
            orders = torch.arange(n, device=device).expand(len(self.generators), n)
        for start in range(0, n, size):
            yield self.samples.batch(orders[:, start : start + size])


class SlateDataModule(pl.LightningDataModule):
    """Train / validation batches of logged (slate, clicks) samples for GeMS pre-training.

    Args:
        slates, clicks: logged sessions (n_sessions, T, R); validation = the first `val_fraction` of sessions.
        batch_size: slates per batch (256 in the paper).
        shuffle: shuffle training samples every epoch (default; the reference does not shuffle, G8).
        seed: seed of the shuffling generator (validation is never shuffled).
    """

    def __init__(
        self,
        slates: torch.Tensor,
        clicks: torch.Tensor,
        batch_size: int = 256,
        val_fraction: float = 0.1,
        shuffle: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if int(batch_size) < 1:
            raise SlateRLError(f"batch_size must be >= 1 (got {batch_size})")
        self.train_samples, self.val_samples = split_sessions(slates, clicks, val_fraction)
        self.batch_size, self.shuffle = int(batch_size), bool(shuffle)
        self.generator = torch.Generator().manual_seed(int(seed))

    def train_dataloader(self) -> SliceBatches:
        return SliceBatches(self.train_samples, self.batch_size, self.shuffle, self.generator)

    def val_dataloader(self) -> SliceBatches:
        return SliceBatches(self.val_samples, self.batch_size, shuffle=False)

    def state_dict(self) -> dict[str, Any]:
        """The shuffling generator's state (Lightning keeps it in its checkpoints: a resumed run draws the batches
        an uninterrupted one would)."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.generator.set_state(state_dict["generator"])
