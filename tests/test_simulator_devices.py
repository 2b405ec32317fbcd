"""The simulator's random draws do not depend on its device: a run meets the same users on CPU and on CUDA."""

from __future__ import annotations

import pytest
import torch

from slate_rl import envs
from slate_rl.envs.randomness import UserStream


def test_draws_are_made_on_the_cpu_and_land_on_the_simulators_device():
    stream = UserStream(123, device="meta")  # meta: any tensor drawn on the device itself would carry no values
    assert stream.generator.device == torch.device("cpu")
    draws = stream.reset_draws(4, 10, 2, 10)
    assert draws.normal.device == torch.device("meta") and stream.step_draws(4, 10).device == torch.device("meta")
    # the CPU stream advanced exactly as a CPU simulator's would
    reference = UserStream(123)
    reference.reset_draws(4, 10, 2, 10)
    reference.step_draws(4, 10)
    assert torch.equal(stream.get_state(), reference.get_state())


def _episode(device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Clicks of 50 users served the short-term oracle's slates for 20 steps, and their final effective states."""
    env = envs.make("focused_topdown", sim_seed=7, device=device)
    env.reset(50)
    clicks = []
    for _ in range(20):
        obs, _, _, _ = env.step(env.oracle_slates())
        clicks.append(obs["clicks"].cpu())
    return torch.stack(clicks), env.effective_user().cpu()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cpu_and_cuda_simulators_meet_the_same_users():
    cpu_clicks, cpu_users = _episode("cpu")
    cuda_clicks, cuda_users = _episode("cuda")
    assert torch.equal(cpu_clicks, cuda_clicks)
    assert torch.allclose(cpu_users, cuda_users, atol=1e-5)
