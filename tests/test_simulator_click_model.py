"""Click model: propensity matrices, the last-click cascade, marginal probabilities, diversity penalty."""

from __future__ import annotations

import pytest
import torch

from sim_helpers import ScriptedUser, single_torch_thread, small_env
from slate_rl.envs import env_params
from slate_rl.envs.click_models import (
    attractiveness_scale,
    is_position_based,
    marginal_click_probabilities,
    propensity_matrix,
    sample_clicks,
)

TOP_DOWN = [1.0, 0.85, 0.7225, 0.614125, 0.522006, 0.443705, 0.377150, 0.320577, 0.272491, 0.231617]
MIXED = [0.615808, 0.561245, 0.521539, 0.495637, 0.482856, 0.482856, 0.495637, 0.521539, 0.561245, 0.615808]

pytestmark = pytest.mark.usefixtures(single_torch_thread.__name__)  # tiny tensors: threads only add overhead


@pytest.mark.parametrize("model, row", [("tdPBM", TOP_DOWN), ("mixPBM", MIXED)])
def test_paper_propensities(model: str, row: list[float]) -> None:
    gamma = propensity_matrix(env_params("focused_topdown", click_model=model))
    assert tuple(gamma.shape) == (10, 11)
    expected = torch.tensor(row).unsqueeze(1).expand(10, 11)
    torch.testing.assert_close(gamma, expected, rtol=0, atol=1e-6)
    assert is_position_based(gamma)


def test_prop_threshold_binarises() -> None:
    gamma = propensity_matrix(env_params("focused_topdown", prop_threshold=0.5))
    assert gamma[:, 10].tolist() == [1.0] * 5 + [0.0] * 5  # 0.522 > 0.5 > 0.4437


def _custom_values() -> list[float]:
    """A general propensity matrix whose rows depend on the rank of the last click (no click = column 10)."""
    return [round(0.9 - 0.05 * r - (0.04 * j if j < 10 else 0.0), 6) for r in range(10) for j in range(11)]


def test_custom_propensities_are_row_major_and_use_alpha() -> None:
    values = _custom_values()
    params = env_params("focused_mix", click_model="custom", env_propensities=values, env_alpha=0.7)
    gamma = propensity_matrix(params)
    for r in range(10):
        for j in range(11):
            assert float(gamma[r, j]) == pytest.approx(values[11 * r + j], abs=1e-7)
    assert not is_position_based(gamma)
    assert attractiveness_scale(params) == pytest.approx(0.7)
    assert attractiveness_scale(env_params("focused_mix", env_alpha=0.7)) == 1.0  # forced by the paper models


def test_cascade_uses_the_rank_of_the_last_click() -> None:
    """Gamma[r, j] = 0.9 before any click, 0.3 right after a click on rank r - 1, 0.05 otherwise."""
    gamma = torch.full((10, 11), 0.05)
    gamma[:, 10] = 0.9
    for r in range(1, 10):
        gamma[r, r - 1] = 0.3
    attraction = torch.ones(2, 10)
    uniforms = torch.tensor(
        [
            [0.5, 0.2, 0.2, 0.1, 0.04, 0.5, 0.5, 0.04, 0.5, 0.5],  # chain of 5, then 0.04 < 0.05
            [0.5, 0.4, 0.2, 0.1, 0.04, 0.5, 0.5, 0.5, 0.5, 0.5],
        ]
    )  # chain broken at rank 1
    clicks = sample_clicks(attraction, gamma, uniforms)
    assert clicks.tolist() == [[1, 1, 1, 1, 1, 0, 0, 1, 0, 0], [1, 0, 0, 0, 1, 0, 0, 0, 0, 0]]
    assert clicks.dtype == torch.int64


def test_position_based_clicks_are_independent_bernoullis() -> None:
    gamma = propensity_matrix(env_params("focused_topdown"))
    attraction = torch.rand(5, 10, generator=torch.Generator().manual_seed(0))
    uniforms = torch.rand(5, 10, generator=torch.Generator().manual_seed(1))
    expected = (uniforms < attraction * torch.tensor(TOP_DOWN)).long()
    assert torch.equal(sample_clicks(attraction, gamma, uniforms), expected)


def test_marginals_of_position_based_models_are_rel_times_gamma() -> None:
    relevance = torch.rand(6, 10, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for model, row in (("tdPBM", TOP_DOWN), ("mixPBM", MIXED)):
        gamma = propensity_matrix(env_params("focused_topdown", click_model=model))
        marginals = marginal_click_probabilities(relevance, gamma)
        torch.testing.assert_close(marginals, relevance * torch.tensor(row, dtype=torch.float64), rtol=0, atol=1e-6)


def test_marginals_of_a_general_model_match_monte_carlo() -> None:
    values = _custom_values()
    gamma = propensity_matrix(env_params("focused_mix", click_model="custom", env_propensities=values))
    generator = torch.Generator().manual_seed(3)
    relevance = 0.3 + 0.7 * torch.rand(1, 10, generator=generator, dtype=torch.float64)
    exact = marginal_click_probabilities(relevance, gamma, alpha=0.8)[0]
    samples = 200_000
    uniforms = torch.rand(samples, 10, generator=generator)
    clicks = sample_clicks((0.8 * relevance).float().expand(samples, 10), gamma, uniforms).double().mean(dim=0)
    standard_error = (exact * (1 - exact) / samples).sqrt()
    assert bool(((clicks - exact).abs() <= 4.5 * standard_error).all()), (clicks, exact)
    # the last-click dependence matters here: the position-based formula is off by many standard errors
    naive = 0.8 * relevance[0] * gamma[:, 10].double()
    assert float(((naive - exact).abs() / standard_error).max()) > 20


# ---------------------------------------------------------------- diversity penalty (whole slate, Q8)
@pytest.mark.parametrize(
    "threshold, shared, duplicate, penalised",
    [
        (4, 4, False, True),  # four distinct items of one topic
        (4, 3, False, False),  # three: below the threshold
        (4, 4, True, True),  # one item four times: duplicates count
        (5, 4, False, False),  # threshold 5 is not reached by four
    ],
)
def test_diversity_penalty_divides_every_attraction(
    threshold: int, shared: int, duplicate: bool, penalised: bool
) -> None:
    """rel_threshold = -1 makes every relevance 1, so a_r * gamma_r = gamma_r / P. With U_r = gamma_r / 2 and
    P = 3 every rank clicks without the penalty and none does with it."""
    env = small_env(
        env_params("focused_divpen", click_model="tdPBM", rel_threshold=-1.0, diversity_threshold=threshold)
    )
    user = ScriptedUser(env, reset_clicks=[])
    topic0 = user.topic_items[0]
    repeated = [topic0[0]] * shared if duplicate else topic0[:shared]
    others = [user.topic_items[k][0] for k in range(1, 11 - shared)]
    slate = repeated + others
    uniforms = 0.5 * torch.tensor(TOP_DOWN)
    obs, _, _, _ = env.step_with(torch.tensor([slate]), uniforms.unsqueeze(0))
    ref_obs, _, _, _ = user.reference.step(slate, uniforms)
    expected = [0] * 10 if penalised else [1] * 10
    assert obs["clicks"][0].tolist() == expected
    assert ref_obs["clicks"].tolist() == expected
