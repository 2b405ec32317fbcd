"""Short trainings on simulator-logged sessions (epsilon = 0.5 oracle logging): GeMS through Lightning, BPR MF."""

import logging
import warnings

import pytest
import pytorch_lightning as pl
import torch

from slate_rl.envs import make
from slate_rl.envs.evaluate import play
from slate_rl.envs.policies import EpsilonGreedyOracle
from slate_rl.rankers.bounds import gems_action_bounds
from slate_rl.rankers.data import SlateDataModule
from slate_rl.rankers.decoders import GeMSDecoder
from slate_rl.rankers.gems import GeMS
from slate_rl.rankers.mf import click_pairs, popularity_correlation, split_click_pairs, train_mf


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine, 2 OpenMP threads competing with other processes can make
    every step 10x slower; these tests check learning, not speed."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def logged():
    """300 logged sessions of focused_topdown: slates int16 and clicks uint8, (300, 100, 10)."""
    env = make("focused_topdown")
    slates, clicks = [], []

    def record(t, obs, reward, info):
        if t > 0:  # the reset observation is not logged
            slates.append(obs["slate"].to(torch.int16))
            clicks.append(obs["clicks"].to(torch.uint8))

    with torch.no_grad():
        play(env, EpsilonGreedyOracle(env.num_items, env.slate_size, 0.5, seed=0), 300, record)
    return torch.stack(slates, dim=1), torch.stack(clicks, dim=1)


def quiet_trainer(**kwargs) -> pl.Trainer:
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    return pl.Trainer(
        logger=False, enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False, **kwargs
    )


def test_gems_learns_slates_far_above_chance(logged):
    slates, clicks = logged
    vae = GeMS(seed=0)
    trainer = quiet_trainer(max_epochs=2, num_sanity_val_steps=0)
    trainer.fit(vae, datamodule=SlateDataModule(slates, clicks, seed=0))
    metrics = trainer.callback_metrics
    expected = {
        f"{stage}/{name}" for stage in ("train", "val") for name in ("loss", "slate_loss", "click_loss", "kl_loss")
    }
    assert expected | {"val/slot_accuracy", "val/click_accuracy"} <= set(metrics)
    assert float(metrics["val/slot_accuracy"]) > 0.03  # chance: 0.001
    assert float(metrics["val/slate_loss"]) < 6.0  # uniform over 1000 items: 6.91


def test_gems_decodes_encoder_means_back_to_the_slates_it_was_fit_on(logged):
    slates, clicks = logged[0][:4], logged[1][:4]  # 3 training sessions (300 slates) + 1 validation session
    vae = GeMS(seed=1)
    module = SlateDataModule(slates, clicks, batch_size=300, val_fraction=0.25, seed=1)
    quiet_trainer(max_epochs=200, limit_val_batches=0, num_sanity_val_steps=0).fit(vae, datamodule=module)
    train = module.train_samples
    bounds = gems_action_bounds(vae, slates, clicks)
    decoder = GeMSDecoder.from_vae(vae, bounds)
    with torch.no_grad():
        mu, _ = vae.encode(train.slates.long(), train.clicks.float())
    decoded = decoder.decode(mu)
    assert float((decoded == train.slates.long()).float().mean()) > 0.95
    assert float((decoded == train.slates.long()).all(dim=1).float().mean()) > 0.6
    assert bool(((mu >= bounds.low) & (mu <= bounds.high)).all())


def test_click_pairs_and_held_out_split(logged):
    slates, clicks = logged
    sessions, items = click_pairs(slates, clicks)
    assert sessions.numel() == int(clicks.sum())
    assert torch.equal(items[:3], slates[clicks.bool()][:3].long())
    (train_users, _), (val_users, _) = split_click_pairs(sessions, items, 30, 0.5, torch.Generator().manual_seed(0))
    assert bool((val_users < 30).all())  # held-out clicks come from validation sessions only
    assert train_users.numel() + val_users.numel() == sessions.numel()
    val_session_clicks = int((sessions < 30).sum())
    assert abs(val_users.numel() / val_session_clicks - 0.5) < 0.05
    assert set((train_users[train_users < 30]).tolist()) == set(range(30))  # their users still get trained


def test_mf_item_table_encodes_popularity(logged):
    slates, clicks = logged
    result = train_mf(slates, clicks, lr=1e-3, eval_every=200, max_steps=1500, seed=0)
    assert result.item_table.shape == (1000, 20) and result.item_table.dtype == torch.float32
    assert result.stop_reason in ("max_steps", "early_stopping")
    assert result.best_val_loss == min(loss for _, loss in result.evaluations)
    assert result.best_val_loss < 0.5  # BPR loss of an untrained model: log 2 = 0.69
    assert popularity_correlation(result.item_table, slates, clicks) < -0.5  # -0.83 with the reference's table


def test_mf_early_stopping_and_limits(logged):
    slates, clicks = logged
    diverging = train_mf(slates, clicks, lr=1.0, eval_every=5, patience=2, seed=0)
    assert diverging.stop_reason == "early_stopping"
    losses = [loss for _, loss in diverging.evaluations]
    assert min(losses[-2:]) >= min(losses[:-2])  # the last `patience` evaluations did not improve
    assert train_mf(slates, clicks, max_seconds=0.0, seed=0).steps == 1
    limited = train_mf(slates, clicks, max_steps=7, eval_every=1000, seed=0)
    assert limited.steps == 7 and [step for step, _ in limited.evaluations] == [1, 7]


def test_mf_reports_each_evaluation_while_it_trains(logged):
    slates, clicks = logged
    seen: list[tuple[int, float]] = []
    result = train_mf(slates, clicks, lr=1.0, eval_every=5, patience=2, seed=0, on_evaluation=lambda *e: seen.append(e))
    assert len(seen) > 2 and seen == result.evaluations
