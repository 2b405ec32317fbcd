"""The GeMS slate VAE (encoder, decoder, loss, validation) as a PyTorch Lightning module.

Encoder q(z | slate, clicks): [E(s_0) .. E(s_{R-1}), c_0 .. c_{R-1}] -> MLP -> (mu, logvar). Decoder: z -> MLP (ReLU
after every hidden layer) -> slate head (R slot vectors of size D, scored against GeMS's own item table, detached:
G5) and click head (R click logits). The prior is fixed N(0, I), so the reference's prior regulariser is identically
zero (G6) and `lambda_prior` has no effect. Loss conventions: see `slate_rl.rankers.losses`.

Train with `pl.Trainer(...).fit(model, datamodule=SlateDataModule(slates, clicks))`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from typing import Any, cast

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.utilities.parsing import AttributeDict
from torch import nn

from slate_rl.errors import SlateRLError
from slate_rl.rankers.layers import mlp
from slate_rl.rankers.losses import check_convention, item_cross_entropy, kl_to_standard_normal, reparameterise

Batch = tuple[torch.Tensor, torch.Tensor]
log = logging.getLogger("slate_rl")


def _check_hyperparameters(
    num_items: int,
    slate_size: int,
    item_dim: int,
    latent_dim: int,
    encoder_hidden: Sequence[int],
    decoder_hidden: Sequence[int],
    lambda_kl: float,
    lambda_click: float,
    lambda_prior: float,
    lr: float,
) -> None:
    for name, value in (
        ("num_items", num_items),
        ("slate_size", slate_size),
        ("item_dim", item_dim),
        ("latent_dim", latent_dim),
    ):
        if int(value) < 1:
            raise SlateRLError(f"{name} must be >= 1 (got {value})")
    for name, widths in (("encoder_hidden", encoder_hidden), ("decoder_hidden", decoder_hidden)):
        if any(int(w) < 1 for w in widths):
            raise SlateRLError(f"{name} widths must be >= 1 (got {list(widths)})")
    if len(decoder_hidden) == 0:
        raise SlateRLError("decoder_hidden needs at least one layer (the slate and click heads read its output)")
    for name, weight in (("lambda_kl", lambda_kl), ("lambda_click", lambda_click), ("lambda_prior", lambda_prior)):
        if not float(weight) >= 0.0:
            raise SlateRLError(f"{name} must be a non-negative loss weight (got {weight})")
    if not float(lr) > 0.0:
        raise SlateRLError(f"lr must be > 0 (got {lr})")


def adam(parameters: Iterable[torch.Tensor], lr: float, device: torch.device) -> torch.optim.Optimizer:
    """GeMS's optimiser: Adam at `lr` (default betas, no weight decay), with the fused kernel on CPU / CUDA."""
    return torch.optim.Adam(parameters, lr=lr, fused=device.type in ("cpu", "cuda"))


class GeMS(pl.LightningModule):
    """GeMS slate VAE.

    Args:
        num_items, slate_size, item_dim: catalogue size N, slots R, item embedding size D (1000, 10, 20).
        latent_dim: d (32 in the paper).
        encoder_hidden, decoder_hidden: MLP widths ([512, 256] and [256, 512]).
        lambda_kl, lambda_click, lambda_prior: loss weights (1.0, 0.5, 0.0); lambda_prior has no effect (G6).
        lr: Adam learning rate (1e-3).
        loss_convention: "reference" (G1, G2; default) or "standard" (see `slate_rl.rankers.losses`).
        seed: seeds the weight initialisation and the generator of the reparameterisation noise (the global RNG
            is never used).

    Batches are (slates int64 (B, R), clicks float (B, R)), as `SlateDataModule` produces them. Logged once per
    epoch (sample-weighted means): train/{loss, slate_loss, click_loss, kl_loss}, the same under val/ (decoded from
    z = mu) and val/slot_accuracy, val/click_accuracy; they are in `trainer.callback_metrics` from the end of the
    epoch (ModelCheckpoint / EarlyStopping can monitor "val/loss"). The optimiser is Adam (fused kernel on CPU/CUDA).
    """

    def __init__(
        self,
        num_items: int = 1000,
        slate_size: int = 10,
        item_dim: int = 20,
        latent_dim: int = 32,
        encoder_hidden: Sequence[int] = (512, 256),
        decoder_hidden: Sequence[int] = (256, 512),
        lambda_kl: float = 1.0,
        lambda_click: float = 0.5,
        lambda_prior: float = 0.0,
        lr: float = 1e-3,
        loss_convention: str = "reference",
        seed: int = 0,
    ) -> None:
        super().__init__()
        _check_hyperparameters(
            num_items,
            slate_size,
            item_dim,
            latent_dim,
            encoder_hidden,
            decoder_hidden,
            lambda_kl,
            lambda_click,
            lambda_prior,
            lr,
        )
        check_convention(loss_convention)
        encoder_hidden, decoder_hidden = [int(w) for w in encoder_hidden], [int(w) for w in decoder_hidden]
        self.save_hyperparameters(
            dict(
                num_items=int(num_items),
                slate_size=int(slate_size),
                item_dim=int(item_dim),
                latent_dim=int(latent_dim),
                encoder_hidden=encoder_hidden,
                decoder_hidden=decoder_hidden,
                lambda_kl=float(lambda_kl),
                lambda_click=float(lambda_click),
                lambda_prior=float(lambda_prior),
                lr=float(lr),
                loss_convention=loss_convention,
                seed=int(seed),
            )
        )
        with torch.device("meta"):  # allocated and initialised below, from a generator
            self.item_embeddings = nn.Embedding(num_items, item_dim)
            self.encoder = mlp(slate_size * (item_dim + 1), encoder_hidden, 2 * latent_dim)
            self.decoder = mlp(latent_dim, decoder_hidden)
            self.slate_head = nn.Linear(decoder_hidden[-1], slate_size * item_dim)
            self.click_head = nn.Linear(decoder_hidden[-1], slate_size)
        self.to_empty(device="cpu")
        self._initialise(torch.Generator().manual_seed(int(seed)))
        self._noise: torch.Generator | None = None
        self._saved_noise: dict[str, Any] | None = None  # from a checkpoint, applied when the generator is made
        self._sums: dict[str, tuple[list[str], torch.Tensor, int]] = {}

    def _initialise(self, generator: torch.Generator) -> None:
        """PyTorch's default initialisation (as in the reference), drawn from `generator`: item table N(0, 1) (the
        paper's "scratch" embeddings), Linear weights kaiming-uniform(a=sqrt(5)) and biases U(+-1/sqrt(fan_in))."""
        with torch.no_grad():
            nn.init.normal_(self.item_embeddings.weight, generator=generator)
            for layer in self.modules():
                if isinstance(layer, nn.Linear):
                    nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
                    bound = 1.0 / math.sqrt(layer.in_features)
                    nn.init.uniform_(layer.bias, -bound, bound, generator=generator)

    @property
    def hp(self) -> AttributeDict:
        """The hyperparameters, by attribute (`save_hyperparameters` keeps them in an AttributeDict)."""
        return cast(AttributeDict, self.hparams)

    # ------------------------------------------------------------------ model
    def encode(self, slates: torch.Tensor, clicks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, logvar), each (B, d), of q(z | slates (B, R) int64, clicks (B, R) float), in the parameters' dtype
        (also under bf16 autocast, which runs the layers in bfloat16)."""
        x = torch.cat([self.item_embeddings(slates).flatten(1), clicks], dim=1)
        mu, logvar = self.encoder(x).to(self.dtype).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(slot vectors (B, R, D), click logits (B, R)) for latent codes z (B, d), in the parameters' dtype."""
        hidden = self.decoder(z)
        slot_vectors = self.slate_head(hidden).view(z.shape[0], self.hp.slate_size, self.hp.item_dim)
        return slot_vectors.to(self.dtype), self.click_head(hidden).to(self.dtype)

    def forward(
        self, slates: torch.Tensor, clicks: torch.Tensor, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mu, logvar, slot vectors (B, R, D), click logits (B, R)) of a batch, decoded from the sample
        z = mu + noise * std (noise (B, d), see `reparameterise`), or from z = mu when `noise` is None."""
        mu, logvar = self.encode(slates, clicks)
        z = mu if noise is None else reparameterise(mu, logvar, noise, self.hp.loss_convention)
        return (mu, logvar, *self.decode(z))

    def item_logits(self, slot_vectors: torch.Tensor) -> torch.Tensor:
        """Logits (..., N) of every item for slot vectors (..., D), against the detached item table (G5)."""
        return slot_vectors @ self.item_embeddings.weight.detach().T

    def sample_noise(self, batch_size: int, device: torch.device) -> torch.Tensor:
        """Standard normal noise (batch_size, d) on `device`, from the module's own generator (seeded by `seed`)."""
        if self._noise is None or self._noise.device != device:
            self._noise = torch.Generator(device=device).manual_seed(self.hp.seed)
            saved, self._saved_noise = self._saved_noise, None
            if saved is not None and saved["device"] == device.type:
                self._noise.set_state(saved["state"])
            elif saved is not None:
                log.warning(
                    "GeMS resumed on %s after training on %s: the noise generator restarts from its seed, "
                    "so the run will differ from an uninterrupted one",
                    device.type,
                    saved["device"],
                )
        shape = (batch_size, self.hp.latent_dim)
        return torch.randn(shape, generator=self._noise, device=device, dtype=self.item_embeddings.weight.dtype)

    # ------------------------------------------------------------------ objective
    def loss_terms(self, slates: torch.Tensor, clicks: torch.Tensor) -> dict[str, torch.Tensor]:
        """Training loss and its terms for one batch (z sampled with the reparameterisation trick)."""
        outputs = self(slates, clicks, self.sample_noise(slates.shape[0], slates.device))
        return self.training_terms(slates, clicks, outputs, self.item_embeddings.weight)

    def evaluation_terms(self, slates: torch.Tensor, clicks: torch.Tensor) -> dict[str, torch.Tensor]:
        """Validation terms decoding from z = mu, plus slot and click accuracy."""
        return self.validation_terms(slates, clicks, self(slates, clicks), self.item_embeddings.weight)

    def training_terms(
        self, slates: torch.Tensor, clicks: torch.Tensor, outputs: Sequence[torch.Tensor], item_table: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The training loss and its terms from `forward`'s outputs on a batch. With a leading dimension on every
        tensor (S stacked models, `item_table` (S, N, D)), each term has one value per model."""
        hp = self.hp
        mu, logvar, slot_vectors, click_logits = outputs
        slate_loss = item_cross_entropy(slot_vectors.flatten(-3, -2), item_table, slates.flatten(-2))
        click_loss = F.binary_cross_entropy_with_logits(click_logits, clicks, reduction="none").mean(dim=(-2, -1))
        kl_loss = kl_to_standard_normal(mu, logvar, hp.loss_convention)
        loss = slate_loss + hp.lambda_click * click_loss + hp.lambda_kl * kl_loss
        return dict(loss=loss, slate_loss=slate_loss, click_loss=click_loss, kl_loss=kl_loss)

    def validation_terms(
        self, slates: torch.Tensor, clicks: torch.Tensor, outputs: Sequence[torch.Tensor], item_table: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The validation terms and accuracies from `forward`'s outputs decoded from z = mu (leading dimensions as
        in `training_terms`)."""
        hp = self.hp
        mu, logvar, slot_vectors, click_logits = outputs
        logits = slot_vectors @ item_table.detach().mT.unsqueeze(-3)  # (..., B, R, N)
        slate_loss = -logits.log_softmax(dim=-1).gather(-1, slates[..., None]).mean(dim=(-3, -2, -1))
        click_loss = F.binary_cross_entropy_with_logits(click_logits, clicks, reduction="none").mean(dim=(-2, -1))
        kl_loss = kl_to_standard_normal(mu, logvar, hp.loss_convention)
        return dict(
            loss=slate_loss + hp.lambda_click * click_loss + hp.lambda_kl * kl_loss,
            slate_loss=slate_loss,
            click_loss=click_loss,
            kl_loss=kl_loss,
            slot_accuracy=(logits.argmax(dim=-1) == slates).float().mean(dim=(-2, -1)),
            click_accuracy=((click_logits > 0) == (clicks > 0.5)).float().mean(dim=(-2, -1)),
        )

    # ------------------------------------------------------------------ Lightning hooks
    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        terms = self.loss_terms(*batch)
        self._accumulate("train", terms, batch[0].shape[0])
        return terms["loss"]

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._accumulate("val", self.evaluation_terms(*batch), batch[0].shape[0])

    def on_train_epoch_end(self) -> None:
        self._log_means("train")

    def on_validation_epoch_end(self) -> None:
        self._log_means("val")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the noise generator's state in Lightning checkpoints (a resumed run draws the same noise)."""
        if self._noise is not None:
            checkpoint["gems_noise"] = {"device": self._noise.device.type, "state": self._noise.get_state()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._noise, self._saved_noise = None, checkpoint.get("gems_noise")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return adam(self.parameters(), self.hp.lr, self.device)

    def _accumulate(self, stage: str, terms: dict[str, torch.Tensor], batch_size: int) -> None:
        """Add the batch's terms, weighted by its size, to the epoch's running sums (one tensor op per step
        instead of one `self.log` call per metric and step)."""
        weighted = torch.stack([value.detach() for value in terms.values()]) * batch_size
        if stage in self._sums:
            names, sums, count = self._sums[stage]
            self._sums[stage] = (names, weighted + sums, count + batch_size)
        else:
            self._sums[stage] = (list(terms), weighted, batch_size)

    def _log_means(self, stage: str) -> None:
        """`self.log` the epoch means as `<stage>/<term>` (nothing during Lightning's sanity check)."""
        epoch = self._sums.pop(stage, None)
        if epoch is None or self.trainer.sanity_checking:
            return
        names, sums, count = epoch
        for name, value in zip(names, (sums / count).tolist(), strict=True):
            self.log(f"{stage}/{name}", value, on_step=False, on_epoch=True)
