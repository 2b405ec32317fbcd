"""Slate decoders the RL agents act through: a continuous action in, a slate of R items out.

* `GeMSDecoder`: latent action (d) -> GeMS decoder MLP -> R slot vectors -> argmax (or softmax sample) over the
  VAE's own item table, independently per slot (duplicates possible, G9).
* `TopKDecoder`: action in item-embedding space (D) -> the R highest-scoring items, distinct, descending.
* `KNNDecoder`: proto-action (R * D), slot-major (slot r's query = components r*D .. (r+1)*D - 1; `interleaved`:
  components r, r + R, ..., the reference's layout, B3) -> the k Euclidean-nearest items per slot (candidates for
  WkNN's critic) or the nearest one.

All are batched over actions, with scores computed in row chunks to bound memory. `save_payload()` returns a plain
dict (tensors and Python values) that `decoder_from_payload` turns back into the same decoder.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from torch import nn

from slate_rl.errors import SlateRLError
from slate_rl.rankers.base import SlateDecoder
from slate_rl.rankers.bounds import ActionBounds, table_bounds
from slate_rl.rankers.layers import mlp

if TYPE_CHECKING:
    from slate_rl.rankers.gems import GeMS

Payload = dict[str, Any]
Decoder = TypeVar("Decoder", bound=SlateDecoder)
SCORE_ROWS = 1024  # query rows scored at once (a 1024 x 1000 float block is 4 MB)


def _check_table(item_table: torch.Tensor) -> None:
    if not isinstance(item_table, torch.Tensor) or item_table.dim() != 2 or item_table.shape[0] == 0:
        raise SlateRLError("item_table must be a non-empty (N, D) tensor")


def _check_actions(actions: torch.Tensor, action_dim: int) -> None:
    if actions.dim() != 2 or actions.shape[1] != action_dim:
        raise SlateRLError(f"actions must have shape (B, {action_dim}) (got {tuple(actions.shape)})")


def _by_chunks(rows: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """fn applied to consecutive blocks of SCORE_ROWS rows, results concatenated along dim 0."""
    starts = range(0, max(rows.shape[0], 1), SCORE_ROWS)
    return torch.cat([fn(rows[start : start + SCORE_ROWS]) for start in starts])


def _sample_rows(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One index per row drawn from the row's probabilities (inverse CDF: one uniform per row, several times
    faster than torch.multinomial here)."""
    cumulative = probs.cumsum_(dim=1)
    uniform = torch.rand(probs.shape[0], 1, generator=generator, device=probs.device) * cumulative[:, -1:]
    return torch.searchsorted(cumulative, uniform)[:, 0].clamp_(max=probs.shape[1] - 1)


def _payload(kind: str, config: dict[str, Any], module: nn.Module) -> Payload:
    state = {name: tensor.detach().cpu().clone() for name, tensor in module.state_dict().items()}
    return {"kind": kind, "config": dict(config), "state_dict": state}


def _restore(decoder: Decoder, payload: Payload) -> Decoder:
    decoder.load_state_dict(payload["state_dict"], strict=True, assign=True)
    return decoder


class GeMSDecoder(SlateDecoder):
    """Decode GeMS latent actions (B, d) into slates (B, R).

    Args:
        decoder: the VAE's decoder MLP (d -> hidden, ReLU after every layer); copied and frozen.
        slate_head: the VAE's Linear(hidden -> R * D); copied and frozen.
        item_table: the VAE's own (N, D) item table.
        action_center, action_scale: the latent action box (see `gems_action_bounds`).
        sample: sample each slot from softmax(logits) instead of taking the argmax (the paper uses argmax).
        seed: seed of the sampling generator used when `decode` gets none.
    """

    kind = "gems"
    item_table: torch.Tensor  # a buffer

    def __init__(
        self,
        decoder: nn.Sequential,
        slate_head: nn.Linear,
        item_table: torch.Tensor,
        action_center: torch.Tensor,
        action_scale: torch.Tensor,
        sample: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(action_center, action_scale)
        _check_table(item_table)
        linears = [m for m in decoder if isinstance(m, nn.Linear)]
        if not linears or linears[0].in_features != self.action_dim:
            raise SlateRLError(f"the decoder MLP must take the latent dimension {self.action_dim} as input")
        if slate_head.out_features % item_table.shape[1] != 0:
            raise SlateRLError("slate_head outputs must be R blocks of the item dimension")
        self.decoder = copy.deepcopy(decoder)
        self.slate_head = copy.deepcopy(slate_head)
        self.register_buffer("item_table", item_table.detach().clone().float())
        self.requires_grad_(False)
        self.slate_size = slate_head.out_features // item_table.shape[1]
        self.sample, self.seed = bool(sample), int(seed)
        self._generator: torch.Generator | None = None

    @classmethod
    def from_vae(cls, vae: GeMS, bounds: ActionBounds, sample: bool = False, seed: int = 0) -> GeMSDecoder:
        """The decoder of a trained GeMS VAE with its action box (`gems_action_bounds(vae, slates, clicks)`)."""
        return cls(vae.decoder, vae.slate_head, vae.item_embeddings.weight, bounds.center, bounds.scale, sample, seed)

    def slot_vectors(self, actions: torch.Tensor) -> torch.Tensor:
        """(B, R, D) slot query vectors for latent actions (B, d)."""
        _check_actions(actions, self.action_dim)
        vectors = self.slate_head(self.decoder(actions))
        return vectors.view(actions.shape[0], self.slate_size, self.item_table.shape[1])

    def item_logits(self, actions: torch.Tensor) -> torch.Tensor:
        """(B, R, N) logits of every item in every slot (memory grows with B; `decode` works in chunks)."""
        return self.slot_vectors(actions) @ self.item_table.T

    @torch.no_grad()
    def decode(self, actions: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Slates (B, R) int64: per-slot argmax, or per-slot softmax samples if `sample` (drawn from `generator`,
        else from the decoder's own generator seeded with `seed`)."""
        vectors = self.slot_vectors(actions).reshape(-1, self.item_table.shape[1])
        table_t = self.item_table.T
        draw = (generator or self._own_generator(actions.device)) if self.sample else None

        def pick(rows: torch.Tensor) -> torch.Tensor:
            if draw is not None:
                return _sample_rows(torch.softmax(rows @ table_t, dim=1), draw)
            return (rows @ table_t).argmax(dim=1)

        return _by_chunks(vectors, pick).view(actions.shape[0], self.slate_size)

    def _own_generator(self, device: torch.device) -> torch.Generator:
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device).manual_seed(self.seed)
        return self._generator

    def save_payload(self) -> Payload:
        """Weights, item table, bounds and configuration as a plain dict (see `decoder_from_payload`)."""
        hidden = [m.out_features for m in self.decoder if isinstance(m, nn.Linear)]
        config = dict(
            latent_dim=self.action_dim,
            decoder_hidden=hidden,
            slate_size=self.slate_size,
            num_items=int(self.item_table.shape[0]),
            item_dim=int(self.item_table.shape[1]),
            sample=self.sample,
            seed=self.seed,
        )
        return _payload(self.kind, config, self)

    @classmethod
    def from_payload(cls, payload: Payload) -> GeMSDecoder:
        c = payload["config"]
        with torch.device("meta"):
            decoder = mlp(c["latent_dim"], c["decoder_hidden"])
            head = nn.Linear(c["decoder_hidden"][-1], c["slate_size"] * c["item_dim"])
            table, center = torch.empty(c["num_items"], c["item_dim"]), torch.empty(c["latent_dim"])
            built = cls(decoder, head, table, center, center, c["sample"], c["seed"])
        return _restore(built, payload)


class TopKDecoder(SlateDecoder):
    """Action a in item-embedding space (B, D) -> the `slate_size` items with the largest item_table @ a,
    distinct, in descending score order. Box: per-dimension min / max of the table."""

    kind = "topk"
    item_table: torch.Tensor  # a buffer

    def __init__(self, item_table: torch.Tensor, slate_size: int = 10) -> None:
        _check_table(item_table)
        if not 1 <= int(slate_size) <= item_table.shape[0]:
            raise SlateRLError(f"slate_size must lie in [1, {item_table.shape[0]}] (got {slate_size})")
        bounds = table_bounds(item_table)
        super().__init__(bounds.center, bounds.scale)
        self.register_buffer("item_table", item_table.detach().clone().float())
        self.slate_size = int(slate_size)

    @torch.no_grad()
    def decode(self, actions: torch.Tensor) -> torch.Tensor:
        _check_actions(actions, self.action_dim)
        table_t = self.item_table.T
        return _by_chunks(actions, lambda rows: (rows @ table_t).topk(self.slate_size, dim=1).indices)

    def save_payload(self) -> Payload:
        return _payload(
            self.kind,
            dict(
                slate_size=self.slate_size,
                num_items=int(self.item_table.shape[0]),
                item_dim=int(self.item_table.shape[1]),
            ),
            self,
        )

    @classmethod
    def from_payload(cls, payload: Payload) -> TopKDecoder:
        c = payload["config"]
        return _restore(cls(torch.zeros(c["num_items"], c["item_dim"]), c["slate_size"]), payload)


class KNNDecoder(SlateDecoder):
    """Proto-actions (B, R * D) -> per-slot Euclidean nearest items of `item_table` (WkNN, done right: the given
    table, e.g. MF embeddings, and one slot-major layout: slot r's query is actions[:, r*D:(r+1)*D]).

    Box: the table's per-dimension min / max, tiled R times in the same slot-major layout.
    interleaved: read slot r's query from components r, r + R, ..., r + (D - 1) R instead (the reference's kNN
    layout, B3: the proto-action viewed as (D, R), column r), while the box stays slot-major.
    """

    kind = "knn"
    item_table: torch.Tensor  # a buffer

    def __init__(self, item_table: torch.Tensor, slate_size: int = 10, k: int = 10, interleaved: bool = False) -> None:
        _check_table(item_table)
        if int(slate_size) < 1 or not 1 <= int(k) <= item_table.shape[0]:
            raise SlateRLError(f"need slate_size >= 1 and 1 <= k <= {item_table.shape[0]} (got {slate_size}, {k})")
        bounds = table_bounds(item_table).tile(int(slate_size))
        super().__init__(bounds.center, bounds.scale)
        self.register_buffer("item_table", item_table.detach().clone().float())
        self.slate_size, self.k, self.interleaved = int(slate_size), int(k), bool(interleaved)

    def slot_queries(self, actions: torch.Tensor) -> torch.Tensor:
        """(B, R, D) the query of each slot of proto-actions (B, R * D)."""
        _check_actions(actions, self.action_dim)
        if self.interleaved:
            return actions.reshape(actions.shape[0], -1, self.slate_size).transpose(1, 2)
        return actions.reshape(actions.shape[0], self.slate_size, -1)

    def _queries(self, actions: torch.Tensor) -> torch.Tensor:
        return self.slot_queries(actions).reshape(-1, self.item_table.shape[1])

    def _distance_ranks(self, rows: torch.Tensor) -> torch.Tensor:
        """||e_i||^2 - 2 <q, e_i>: squared distance minus the row constant ||q||^2 (same order)."""
        return torch.addmm(self.item_table.square().sum(dim=1), rows, self.item_table.T, alpha=-2.0)

    @torch.no_grad()
    def candidates(self, actions: torch.Tensor) -> torch.Tensor:
        """(B, R, k) item ids: the k nearest items to each slot's query, nearest first."""
        nearest = _by_chunks(
            self._queries(actions), lambda rows: self._distance_ranks(rows).topk(self.k, dim=1, largest=False).indices
        )
        return nearest.view(actions.shape[0], self.slate_size, self.k)

    @torch.no_grad()
    def decode(self, actions: torch.Tensor) -> torch.Tensor:
        """(B, R) the nearest item to each slot's query."""
        nearest = _by_chunks(self._queries(actions), lambda rows: self._distance_ranks(rows).argmin(dim=1))
        return nearest.view(actions.shape[0], self.slate_size)

    def save_payload(self) -> Payload:
        return _payload(
            self.kind,
            dict(
                slate_size=self.slate_size,
                k=self.k,
                interleaved=self.interleaved,
                num_items=int(self.item_table.shape[0]),
                item_dim=int(self.item_table.shape[1]),
            ),
            self,
        )

    @classmethod
    def from_payload(cls, payload: Payload) -> KNNDecoder:
        c = payload["config"]
        table = torch.zeros(c["num_items"], c["item_dim"])
        return _restore(cls(table, c["slate_size"], c["k"], c.get("interleaved", False)), payload)


DECODERS: dict[str, type[GeMSDecoder | TopKDecoder | KNNDecoder]] = {
    cls.kind: cls for cls in (GeMSDecoder, TopKDecoder, KNNDecoder)
}


def decoder_from_payload(payload: Payload) -> SlateDecoder:
    """Rebuild any decoder from its `save_payload()` dict (tensors on CPU; move the result with `.to(device)`)."""
    kind = payload.get("kind") if isinstance(payload, dict) else None
    if kind not in DECODERS:
        raise SlateRLError(f"not a decoder payload (kind {kind!r}; expected one of {sorted(DECODERS)})")
    return DECODERS[kind].from_payload(payload)
