"""Position-based click models: propensity matrices and batched click sampling (cascade on the last-click rank)."""

from __future__ import annotations

import torch

from slate_rl.envs.params import EnvParams


def propensity_matrix(params: EnvParams) -> torch.Tensor:
    """Gamma, shape (R, R + 1): examination propensity of rank r given the rank j of the latest click (j = R: none
    yet), on the CPU."""
    size = params.slate_size
    ranks = torch.arange(size, dtype=torch.float64, device="cpu")
    if params.click_model == "tdPBM":
        row = 0.85**ranks
    elif params.click_model == "mixPBM":
        row = 0.5 * 0.85**ranks + 0.5 * 0.85 ** (size - 1 - ranks)
    else:
        assert params.env_propensities is not None  # EnvParams requires them for the 'custom' model
        gamma = torch.tensor(list(params.env_propensities), dtype=torch.float64, device="cpu").reshape(size, size + 1)
        return _threshold(gamma, params.prop_threshold).to(torch.float32)
    gamma = row.unsqueeze(1).expand(size, size + 1).clone()
    return _threshold(gamma, params.prop_threshold).to(torch.float32)


def _threshold(gamma: torch.Tensor, threshold: float | None) -> torch.Tensor:
    return gamma if threshold is None else (gamma > threshold).to(gamma.dtype)


def attractiveness_scale(params: EnvParams) -> float:
    """alpha: forced to 1 by the two paper click models, `env_alpha` for a custom one."""
    return 1.0 if params.click_model in ("tdPBM", "mixPBM") else float(params.env_alpha)


def is_position_based(gamma: torch.Tensor) -> bool:
    """True when every row of Gamma is constant: clicks are then independent across ranks."""
    return bool((gamma == gamma[:, :1]).all())


def sample_clicks(attraction: torch.Tensor, gamma: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Clicks (N, R) as int64 from attractions a (N, R) and uniforms U (N, R): click_r = U_r < a_r * Gamma[r, j].

    j is the rank of the latest click so far (R before any click), evaluated rank by rank as in the reference cascade.
    """
    size = attraction.shape[1]
    if is_position_based(gamma):
        return (uniforms < attraction * gamma[:, size]).long()
    clicks = torch.zeros_like(attraction, dtype=torch.long)
    last = torch.full((attraction.shape[0],), size, dtype=torch.long, device=attraction.device)
    for rank in range(size):
        clicked = uniforms[:, rank] < attraction[:, rank] * gamma[rank, last]
        clicks[:, rank] = clicked.long()
        last = torch.where(clicked, torch.full_like(last, rank), last)
    return clicks


def marginal_click_probabilities(relevance: torch.Tensor, gamma: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """P(click at rank r) for relevances (B, R) under Gamma: forward recursion over the rank of the last click.

    For position-based models this is alpha * rel_r * gamma_r. The diversity penalty is not applied here.
    """
    batch, size = relevance.shape
    attraction = alpha * relevance
    # state[:, j] = P(last click so far at rank j), j = size means "no click yet"
    state = torch.zeros(batch, size + 1, dtype=relevance.dtype, device=relevance.device)
    state[:, size] = 1.0
    marginals = torch.empty_like(relevance)
    for rank in range(size):
        click_given_state = attraction[:, rank : rank + 1] * gamma[rank].to(relevance.dtype)  # (B, R + 1)
        moved = (state * click_given_state).sum(dim=1)
        marginals[:, rank] = moved
        state = state * (1 - click_given_state)
        state[:, rank] = state[:, rank] + moved
    return marginals
