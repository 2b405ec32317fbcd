"""Item embeddings of the simulator: generated from a seed, or loaded (and validated) from a .pt / .npy file."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from slate_rl.errors import SlateRLError
from slate_rl.safe_load import torch_load

EmbeddingSource = str | Path | torch.Tensor | np.ndarray


def generate_item_embeddings(
    seed: int, num_items: int = 1000, num_topics: int = 10, topic_size: int = 2, exponent: float = 1.0
) -> torch.Tensor:
    """Draw a (num_items, num_topics * topic_size) table on the CPU with the benchmark's generator law.

    Topic mixture C = U / sum(U); block values |clip(0.4 Z, -1, 1)| * C; coordinates raised to `exponent`
    (1.0 matches the paper's stored files, 1.5 is what the reference code line says); rows L2-normalised.
    """
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    mixture = torch.rand(num_items, num_topics, generator=generator, dtype=torch.float64, device="cpu")
    mixture = mixture / mixture.sum(dim=1, keepdim=True)
    normal = torch.randn(num_items, num_topics, topic_size, generator=generator, dtype=torch.float64, device="cpu")
    blocks = (0.4 * normal).clamp(-1.0, 1.0).abs() * mixture.unsqueeze(-1)
    flat = blocks.reshape(num_items, num_topics * topic_size).pow(exponent)
    return (flat / flat.norm(dim=1, keepdim=True)).to(torch.float32).contiguous()


def load_item_embeddings(path: str | Path) -> torch.Tensor:
    """Read a float table from a .pt (one tensor) or .npy file; validation is left to `validate_item_embeddings`."""
    path = Path(path)
    if not path.is_file():
        raise SlateRLError(f"item-embedding file {str(path)!r} does not exist; give the path of a .pt or .npy file")
    try:
        if path.suffix == ".npy":
            table = torch.from_numpy(np.load(path, allow_pickle=False))
        elif path.suffix == ".pt":
            table = torch_load(path, "item-embedding file")
        else:
            raise SlateRLError(f"item-embedding file {str(path)!r} must end in .pt or .npy")
    except SlateRLError:
        raise
    except Exception as exc:  # unreadable or corrupt file
        raise SlateRLError(f"cannot read item embeddings from {str(path)!r}: {exc}") from exc
    if not isinstance(table, torch.Tensor):
        raise SlateRLError(
            f"{str(path)!r} holds a {type(table).__name__}, not a tensor; save the (num_items, dim) table itself"
        )
    return table


def validate_item_embeddings(
    table: torch.Tensor, num_items: int, dim: int, origin: str = "item embeddings"
) -> torch.Tensor:
    """Check shape, dtype and values of a simulator item table; return it as contiguous float32."""
    if table.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise SlateRLError(f"{origin}: expected a floating-point table, got dtype {table.dtype}")
    if tuple(table.shape) != (num_items, dim):
        raise SlateRLError(
            f"{origin}: expected shape ({num_items}, {dim}) = (num_items, num_topics * topic_size), "
            f"got {tuple(table.shape)}; pass num_items / num_topics / topic_size overrides that match the file"
        )
    table = table.detach().to("cpu", torch.float32).contiguous()
    if not torch.isfinite(table).all():
        bad = int((~torch.isfinite(table)).any(dim=1).sum())
        raise SlateRLError(f"{origin}: {bad} row(s) contain NaN or infinite values")
    negative_rows = (table < 0).any(dim=1)
    if negative_rows.any():
        first = int(negative_rows.nonzero()[0])
        raise SlateRLError(
            f"{origin}: {int(negative_rows.sum())} row(s) have negative entries (first: item {first}); "
            "TopicRec items are non-negative topic mixtures"
        )
    zero_rows = table.norm(dim=1) == 0
    if zero_rows.any():
        raise SlateRLError(
            f"{origin}: {int(zero_rows.sum())} row(s) are all zero (first: item {int(zero_rows.nonzero()[0])})"
        )
    return table


def fingerprint(table: torch.Tensor) -> str:
    """sha256 of the float32 values (first 16 hex digits): identifies the table in run tags and dataset metadata."""
    data = table.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    return hashlib.sha256(data).hexdigest()[:16]


def item_topics(table: torch.Tensor, num_topics: int, topic_size: int) -> torch.Tensor:
    """Topic of each item: the block with the largest L2 norm (first on ties)."""
    block_norms = table.reshape(table.shape[0], num_topics, topic_size).norm(dim=2)
    return block_norms.argmax(dim=1)


def initial_slate(table: torch.Tensor, num_topics: int, topic_size: int, slate_size: int) -> torch.Tensor:
    """The fixed slate shown at every reset: the strongest item of each topic, in topic order.

    With fewer topics than slots, each topic contributes its slate_size // num_topics strongest items.
    """
    block_norms = table.reshape(table.shape[0], num_topics, topic_size).norm(dim=2)
    if num_topics >= slate_size:
        return block_norms[:, :slate_size].argmax(dim=0)
    per_topic = slate_size // num_topics
    return block_norms.topk(per_topic, dim=0).indices.T.reshape(-1)
