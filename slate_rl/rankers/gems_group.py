"""S GeMS VAEs trained as one: their parameters stacked along a leading seed dimension, one vmapped forward and one
backward per batch for all of them, and one Adam over the stacked tensors (Adam is elementwise: each seed's slice
steps as its own optimiser would). Each seed keeps what its single-seed run has: the initialisation of `GeMS(seed=s)`,
the batch order of `SlateDataModule(seed=s)` and the noise generator of its module.

    group = GeMSGroup([GeMS(..., seed=s) for s in seeds], device)
    best = group.fit(train_samples, val_samples, batch_size, shuffle, epochs, on_epoch)
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterable, Sequence

import torch
from torch.func import functional_call, stack_module_state, vmap

from slate_rl.errors import SlateRLError
from slate_rl.precision import autocast, check_precision
from slate_rl.rankers.data import SeedBatches, SlateSamples, SliceBatches
from slate_rl.rankers.gems import GeMS, adam

Terms = dict[str, torch.Tensor]  # term name -> (S,) values, one per seed


@dataclasses.dataclass
class Best:
    """A seed's best-validation model (on the CPU), after which epoch (0-based) and optimiser step it was taken."""

    model: GeMS
    epoch: int
    step: int


class GeMSGroup:
    """GeMS models of several seeds (the same hyperparameters but the seed) trained stacked on `device`, the forward
    passes and losses under `precision`'s autocast (see `slate_rl.precision`)."""

    def __init__(self, models: Sequence[GeMS], device: torch.device, precision: str = "fp32") -> None:
        if not models:
            raise SlateRLError("a GeMS group needs at least one model")
        shared = [{k: v for k, v in m.hparams.items() if k != "seed"} for m in models]
        if any(h != shared[0] for h in shared):
            raise SlateRLError("the models of a GeMS group must differ by their seed only")
        self.hparams = [dict(m.hparams) for m in models]
        self.seeds = [int(h["seed"]) for h in self.hparams]
        self.device, self.precision = device, check_precision(precision)
        params, _ = stack_module_state([m.to(device) for m in models])  # GeMS has no buffers
        self.params: dict[str, torch.Tensor] = params
        self.template = copy.deepcopy(models[0]).to("meta")  # the architecture; functional_call lends it parameters
        self.optimizer = adam(params.values(), float(shared[0]["lr"]), device)
        self.noise = [torch.Generator(device=device).manual_seed(seed) for seed in self.seeds]

    @property
    def dtype(self) -> torch.dtype:
        return self.params["item_embeddings.weight"].dtype

    def forward(
        self, slates: torch.Tensor, clicks: torch.Tensor, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ...]:
        """`GeMS.forward` of every seed at once on its own batch: slates / clicks (S, B, R), noise (S, B, d)."""

        def one(params: dict[str, torch.Tensor], *args: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
            return functional_call(self.template, params, args)

        return vmap(one, in_dims=(0, 0, 0, None if noise is None else 0))(self.params, slates, clicks, noise)

    def step(self, slates: torch.Tensor, clicks: torch.Tensor) -> Terms:
        """One Adam step of every seed on its batch (slates int64 (S, B, R), clicks (S, B, R)); the loss terms."""
        clicks = clicks.to(self.dtype)
        shape = (slates.shape[1], self.template.hp.latent_dim)
        noise = torch.stack([torch.randn(shape, generator=g, device=self.device, dtype=self.dtype) for g in self.noise])
        table = self.params["item_embeddings.weight"]
        with autocast(self.precision, self.device):
            terms = self.template.training_terms(slates, clicks, self.forward(slates, clicks, noise), table)
        self.optimizer.zero_grad()
        terms["loss"].sum().backward()  # the seeds share no parameter: each gets its own loss's gradient
        self.optimizer.step()
        return {name: value.detach() for name, value in terms.items()}

    @torch.no_grad()
    def evaluate(self, slates: torch.Tensor, clicks: torch.Tensor) -> Terms:
        """`GeMS.evaluation_terms` of every seed on one shared batch (slates / clicks (B, R))."""
        size = (len(self.seeds), *slates.shape)
        slates, clicks = slates.expand(size), clicks.to(self.dtype).expand(size)
        table = self.params["item_embeddings.weight"]
        with autocast(self.precision, self.device):
            return self.template.validation_terms(slates, clicks, self.forward(slates, clicks), table)

    def model(self, index: int) -> GeMS:
        """Seed `index`'s model as a `GeMS` of its own, on the CPU (a copy)."""
        model = GeMS(**self.hparams[index]).to(self.dtype)
        model.load_state_dict({name: value[index].detach().cpu() for name, value in self.params.items()})
        return model.eval()

    def fit(
        self,
        train: SlateSamples,
        val: SlateSamples,
        batch_size: int,
        shuffle: bool,
        epochs: int,
        on_epoch: Callable[[int, int, list[dict[str, float]]], None] | None = None,
    ) -> list[Best]:
        """Train for `epochs` (validation after each) as `pretrain_gems` trains one seed; returns each seed's
        best-validation model (lowest val/loss, the first on ties). `on_epoch(epoch, step, metrics)` gets after each
        epoch every seed's sample-weighted means (train/<term>, val/<term>, epoch) and the step Lightning logs them
        at (the optimiser steps done, minus one)."""
        order = [torch.Generator().manual_seed(seed) for seed in self.seeds]  # as SlateDataModule(seed=...)
        batches = SeedBatches(train, batch_size, shuffle, order)
        val_batches = SliceBatches(val, batch_size, shuffle=False)
        best: list[Best | None] = [None] * len(self.seeds)
        best_loss = [float("inf")] * len(self.seeds)
        for epoch in range(int(epochs)):
            means = {
                "train": _means((batch[0].shape[-2], self.step(*batch)) for batch in batches),
                "val": _means((batch[0].shape[-2], self.evaluate(*batch)) for batch in val_batches),
            }
            step = (epoch + 1) * len(batches)
            metrics = [{"epoch": float(epoch)} for _ in self.seeds]
            for stage, (names, values) in means.items():
                for seed_metrics, row in zip(metrics, values.tolist(), strict=True):
                    seed_metrics.update({f"{stage}/{name}": value for name, value in zip(names, row, strict=True)})
            for index, seed_metrics in enumerate(metrics):
                if seed_metrics["val/loss"] < best_loss[index]:
                    best_loss[index] = seed_metrics["val/loss"]
                    best[index] = Best(self.model(index), epoch, step)
            if on_epoch is not None:
                on_epoch(epoch, step - 1, metrics)
        if any(b is None for b in best):
            raise SlateRLError("GeMS training produced no checkpoint (no validation loss was finite)")
        return [b for b in best if b is not None]


def _means(batches: Iterable[tuple[int, Terms]]) -> tuple[list[str], torch.Tensor]:
    """(term names, (S, terms) means) of (batch size, terms) pairs, weighted by batch size as `GeMS` weighs an
    epoch's terms."""
    names: list[str] = []
    sums, count = torch.zeros(()), 0
    for size, terms in batches:
        names = list(terms)
        sums = torch.stack(list(terms.values()), dim=-1) * size + sums
        count += size
    return names, sums / count
