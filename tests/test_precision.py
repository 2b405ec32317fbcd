"""precision=bf16: the SAC-family updates and GeMS pretraining under bfloat16 autocast stay close to fp32.

Tolerances come from bfloat16's 8-bit significand: every matmul operand is rounded with a relative error of at most
u = 2^-8 (~0.004), while sums, losses, parameters and optimiser states stay fp32. A loss is a few layers deep, so
its relative error is a few u (bound: 4u). A gradient of the belief GRU goes through the 10 steps of the episodes
twice (forward and back-propagation through time), each step's matmuls rounding again: we allow a relative error
||g_bf16 - g_fp32|| / ||g_fp32|| of 50u = 0.2, i.e. cosine similarity > 0.98, per parameter tensor; all gradients
together (dominated by the shallow critic heads) must have cosine > 0.999 (relative error < 12u). That the gradients
differ at all by more than fp32 rounding (1e-4 relative, > 1e5 fp32 ulps) shows that bf16 was used. Gradients are
compared rather than parameter steps: Adam's first step is lr * sign(gradient), where a component of near-zero
gradient flips sign under any rounding.
"""

from __future__ import annotations

import logging
import math
import warnings

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from agents_helpers import gems_decoder, single_thread, small_env, upstream  # noqa: F401 (autouse fixture)
from slate_rl.agents import EXPLORE, BeliefConfig, SACConfig, TrajectoryBuffer, build_agent, play
from slate_rl.agents.seed_group import SeedGroup
from slate_rl.errors import SlateRLError
from slate_rl.precision import LIGHTNING_PRECISION
from slate_rl.rankers.data import SlateDataModule
from slate_rl.rankers.gems import GeMS
from slate_rl.stage_configs import PretrainGemsConfig, TrainOnlineConfig

U = 2.0**-8  # unit roundoff of bfloat16 (8-bit significand)
SMALL = {"hidden": 32, "batch_size": 4, "belief": BeliefConfig(item_dim=8, hidden_dim=8)}
SEEDS = (3, 11)


def gradients_at_steps(optimizers) -> dict[int, torch.Tensor]:
    """Record, by parameter id, the gradient each optimiser steps with (a step pre-hook)."""
    seen: dict[int, torch.Tensor] = {}

    def record(optimizer, args, kwargs) -> None:
        for group in optimizer.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    seen[id(param)] = param.grad.clone()

    for optimizer in optimizers:
        optimizer.register_step_pre_hook(record)
    return seen


def fresh_agents(env, method: str, precision: str, seeds) -> list:
    """One fresh agent per seed (SAC+GeMS seeds each with their own untrained GeMS decoder)."""
    overrides = {**SMALL, "precision": precision}
    return [
        build_agent(
            method, env, seed, **{**upstream(env), "gems_decoder": gems_decoder(env, seed)}, overrides=overrides
        )
        for seed in seeds
    ]


def filled_buffer(env, method: str, seed: int) -> TrajectoryBuffer:
    """8 episodes collected by the exploring policy of the seed's fresh agent."""
    (collector,) = fresh_agents(env, method, "fp32", [seed])
    buffer = TrajectoryBuffer(8, env.episode_length, env.slate_size, env.num_items, collector.stored_action_dim)
    buffer.add(play(env, collector, 8, EXPLORE))
    return buffer


def one_update(env, method: str, precision: str, grouped: bool, buffers: list[TrajectoryBuffer]):
    """Diagnostics, gradients by parameter name, trained parameters and optimisers after one update of fresh agents
    (a group of two seeds, or the first seed alone) on batches sampled from `buffers`."""
    built = fresh_agents(env, method, precision, SEEDS[: len(buffers)])
    if grouped:
        group = SeedGroup(built)
        optimizers = list(group.optimizers.values())
        seen = gradients_at_steps(optimizers)
        batch = group.sample(buffers)
        assert batch is not None
        diagnostics = group.update(batch)
        params = group.params
    else:
        (agent,) = built
        optimizers = [agent.q_optimizer, agent.optimizer]
        seen = gradients_at_steps(optimizers)
        batch = buffers[0].sample(agent.batch_size, agent.generator)
        assert batch is not None
        diagnostics = agent.update(batch)
        params = {name: p for name, p in agent.named_parameters() if p.requires_grad}
    grads = {name: seen[id(p)] for name, p in params.items() if id(p) in seen}
    return diagnostics, grads, params, optimizers


@pytest.mark.parametrize(
    ("method", "grouped"),
    [("sac_topk_ideal", False), ("sac_gems", False), ("sac_wknn", False), ("sac_topk_ideal", True)],
)
def test_a_bf16_update_has_the_gradients_of_the_fp32_update_up_to_bf16_rounding(method, grouped):
    env = small_env("focused_divpen", episode_length=10, num_items=200)
    buffers = [filled_buffer(env, method, seed) for seed in (SEEDS if grouped else SEEDS[:1])]
    fp32, fp32_grads, _, _ = one_update(env, method, "fp32", grouped, buffers)
    bf16, bf16_grads, params, optimizers = one_update(env, method, "bf16", grouped, buffers)

    assert all(p.dtype == torch.float32 for p in params.values())
    states = [s for optimizer in optimizers for s in optimizer.state.values()]
    assert states and all(s["exp_avg"].dtype == s["exp_avg_sq"].dtype == torch.float32 for s in states)
    for name in ("q_loss", "pi_loss", "alpha_loss"):
        assert bf16[name].dtype == torch.float32 and bool(torch.isfinite(bf16[name]).all()), name
        torch.testing.assert_close(bf16[name], fp32[name], rtol=4 * U, atol=0, msg=name)

    assert sorted(bf16_grads) == sorted(fp32_grads) and len(fp32_grads) >= 12  # every trained tensor was stepped
    errors = {}
    for name, expected in fp32_grads.items():
        got = bf16_grads[name]
        assert got.dtype == torch.float32 and bool(torch.isfinite(got).all()), name
        if expected.norm() > 0:
            errors[name] = float((got - expected).norm() / expected.norm())
            assert F.cosine_similarity(got.flatten(), expected.flatten(), dim=0) > 1 - (50 * U) ** 2 / 2, name
    everything = [torch.cat([g[name].flatten() for name in sorted(fp32_grads)]) for g in (bf16_grads, fp32_grads)]
    assert F.cosine_similarity(*everything, dim=0) > 0.999
    assert max(errors.values()) > 1e-4  # bf16 did run: fp32 alone would agree to ~1e-6


def quiet_trainer(precision: str) -> pl.Trainer:
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    return pl.Trainer(
        max_epochs=1,
        num_sanity_val_steps=0,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
        precision=LIGHTNING_PRECISION[precision],
    )


def test_one_epoch_of_gems_in_bf16_ends_close_to_fp32():
    """200 random sessions of 5 slates (N = 50, R = 4): one epoch of 4 batches from the same initial weights."""
    generator = torch.Generator().manual_seed(0)
    slates = torch.randint(0, 50, (200, 5, 4), generator=generator, dtype=torch.int16)
    clicks = (torch.rand(200, 5, 4, generator=generator) < 0.3).to(torch.uint8)
    metrics = {}
    for precision in ("fp32", "bf16"):
        vae = GeMS(num_items=50, slate_size=4, item_dim=8, latent_dim=4, encoder_hidden=(32,), decoder_hidden=(32,))
        trainer = quiet_trainer(precision)
        trainer.fit(vae, datamodule=SlateDataModule(slates, clicks, batch_size=256, seed=0))
        metrics[precision] = {k: float(v) for k, v in trainer.callback_metrics.items()}
        assert all(p.dtype == torch.float32 for p in vae.parameters())
    fp32, bf16 = metrics["fp32"], metrics["bf16"]
    assert sorted(bf16) == sorted(fp32) and "val/slot_accuracy" in fp32
    for name in ("train/loss", "val/loss", "val/slate_loss"):
        assert math.isfinite(bf16[name]), name
        assert bf16[name] == pytest.approx(fp32[name], rel=4 * U), name  # a few layers of rounding of u each
    assert bf16["train/loss"] != fp32["train/loss"]  # bf16 did run


def test_precision_is_recorded_in_the_params():
    gems = PretrainGemsConfig.resolve("focused_topdown", "paper", precision="bf16")
    assert gems.as_params()["precision"] == "bf16"
    assert PretrainGemsConfig.resolve("focused_topdown", "paper").as_params()["precision"] == "fp32"
    online = TrainOnlineConfig.resolve("focused_topdown", "paper", method="sac_gems", agent={"precision": "bf16"})
    assert online.as_params()["agent.precision"] == "bf16"


def test_fused_update_with_bf16_and_unknown_precisions_are_refused():
    with pytest.raises(SlateRLError, match=r"fused_update=true runs fp32 kernels .* precision=bf16"):
        SACConfig(fused_update=True, precision="bf16")
    with pytest.raises(SlateRLError, match="precision must be one of fp32, bf16 \\(got 'fp16'\\)"):
        SACConfig(precision="fp16")
    with pytest.raises(SlateRLError, match="precision must be one of fp32, bf16 \\(got 'half'\\)"):
        PretrainGemsConfig.resolve("focused_topdown", "paper", precision="half")
    with pytest.raises(SlateRLError, match="fused_update=true runs fp32 kernels"):
        TrainOnlineConfig.resolve(
            "focused_topdown", "paper", method="sac_topk_ideal", agent={"precision": "bf16", "fused_update": True}
        )


def test_a_seed_of_a_bf16_group_updates_as_it_does_alone_in_bf16():
    """The group's networks cast their outputs back to fp32 as the agent's do, so sampling and losses see the same
    values: the first seed's diagnostics and gradients equal its update alone."""
    env = small_env("focused_divpen", episode_length=10, num_items=200)
    buffers = [filled_buffer(env, "sac_topk_ideal", seed) for seed in SEEDS]
    grouped, grouped_grads, _, _ = one_update(env, "sac_topk_ideal", "bf16", True, buffers)
    alone, alone_grads, _, _ = one_update(env, "sac_topk_ideal", "bf16", False, buffers[:1])
    for name, value in alone.items():
        assert torch.equal(grouped[name][0], value), name
    assert sorted(grouped_grads) == sorted(alone_grads)
    for name, grad in alone_grads.items():
        assert torch.equal(grouped_grads[name][0], grad), name
