"""What the offline agents act on: the ranker that decodes their actions, and the action labels of a dataset.

Rankers: `gems` and `gems_offline` decode with a GeMS decoder (the collecting policy's own, or one pretrained on the
dataset), `topk_ideal` with TopK over the environment's item table (privileged: the true item embeddings).

Labels of a_t (the action that produced the slate of o_{t+1}): the latent actions the collecting policy stored, when
the ranker is that policy's GeMS; otherwise the GeMS encoder's mean for the logged slate of o_{t+1} and its clicks
(real clicks, or all zero: then the label depends on the slate only); for `topk_ideal`, the mean item embedding of
that slate (TopK's best inverse: the slate's items score highest against their own mean in a well-clustered table).
Labels are then expressed in the ranker's box, normalised to [-1, 1] and clamped there.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from slate_rl.envs.topicrec import TopicRec
from slate_rl.methods import Need
from slate_rl.rankers.base import SlateDecoder
from slate_rl.rankers.decoders import TopKDecoder

_CHUNK = 65_536  # slates encoded at once


def ranker_decoder(env: TopicRec, inputs: Mapping[Need, Any]) -> SlateDecoder:
    """The GeMS decoder given as input, else TopK over the environment's own item table (`topk_ideal`)."""
    decoder = inputs.get(Need.GEMS)
    return decoder if decoder is not None else TopKDecoder(env.item_embeddings, env.slate_size)


@torch.no_grad()
def encoder_labels(encode: Any, slates: np.ndarray, clicks: np.ndarray, zero_clicks: bool = False) -> torch.Tensor:
    """Labels (E, T, A) of episodes with observations slates / clicks (E, T+1, R): `encode(slates (n, R) int64,
    clicks (n, R) float) -> (mu, logvar)` (a GeMS encoder) applied to the slate of o_{t+1} and its clicks (or, with
    `zero_clicks`, no click)."""
    chosen = torch.from_numpy(np.ascontiguousarray(slates[:, 1:])).long()
    seen = torch.from_numpy(np.ascontiguousarray(clicks[:, 1:])).float()
    if zero_clicks:
        seen = torch.zeros_like(seen)
    episodes, steps, size = chosen.shape
    flat_slates, flat_clicks = chosen.view(-1, size), seen.view(-1, size)
    means = [
        encode(flat_slates[i : i + _CHUNK], flat_clicks[i : i + _CHUNK])[0] for i in range(0, len(flat_slates), _CHUNK)
    ]
    return torch.cat(means).view(episodes, steps, -1).float()


def embedding_labels(item_table: torch.Tensor, slates: np.ndarray) -> torch.Tensor:
    """Labels (E, T, D) for TopK: the mean item embedding of the slate of o_{t+1}."""
    chosen = torch.from_numpy(np.ascontiguousarray(slates[:, 1:])).long()
    return item_table.float()[chosen].mean(dim=2)


def normalise(labels: torch.Tensor, decoder: SlateDecoder) -> tuple[torch.Tensor, float]:
    """Labels in the decoder's box mapped to [-1, 1] (clamped), and the share of label components that lay outside
    the box before clamping."""
    normalised = (labels - decoder.action_center) / decoder.action_scale
    outside = float((normalised.abs() > 1).float().mean())
    return normalised.clamp(-1.0, 1.0), outside
