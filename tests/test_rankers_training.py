"""Short trainings on simulator-logged sessions (epsilon = 0.5 oracle logging): GeMS through Lightning, BPR MF."""

import io
import logging
import math
import warnings

import pytest
import pytorch_lightning as pl
import torch

from slate_rl.envs import make
from slate_rl.envs.evaluate import play
from slate_rl.envs.policies import EpsilonGreedyOracle
from slate_rl.errors import SlateRLError
from slate_rl.rankers.bounds import gems_action_bounds
from slate_rl.rankers.data import SlateDataModule
from slate_rl.rankers.decoders import GeMSDecoder
from slate_rl.rankers.gems import GeMS
from slate_rl.rankers.mf import (
    BPRMatrixFactorization,
    _held_out_loss,
    _reference_validation_loss,
    click_pairs,
    popularity_correlation,
    rekeyed_click_pairs,
    split_click_pairs,
    topic_alignment,
    train_mf,
)


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


def test_reference_split_rekeys_each_part_from_user_zero(logged):
    sessions, items = click_pairs(*logged)
    (train_users, train_items), (val_users, val_items) = rekeyed_click_pairs(sessions, items, 30)
    assert torch.equal(val_users, sessions[sessions < 30]) and torch.equal(val_items, items[sessions < 30])
    assert torch.equal(train_users, sessions[sessions >= 30] - 30) and torch.equal(train_items, items[sessions >= 30])
    assert set(val_users.tolist()) <= set(train_users.tolist())  # validation sessions share training users' rows


def test_all_pairs_loss_pairs_every_user_with_every_click_of_the_batch():
    model = BPRMatrixFactorization(5, 12, 4, seed=3)
    users, positives, negatives = torch.tensor([0, 2, 4]), torch.tensor([1, 5, 7]), torch.tensor([3, 3, 11])
    with torch.no_grad():
        each = [
            float(model.bpr_loss(users[a : a + 1], positives[b : b + 1], negatives[b : b + 1]))
            for a in range(3)
            for b in range(3)
        ]
        all_pairs = float(model.all_pairs_bpr_loss(users, positives, negatives))
    assert all_pairs == pytest.approx(sum(each) / 9)


def test_reference_validation_pass_trains_on_the_validation_clicks(logged):
    sessions, items = click_pairs(*logged)
    _, (val_users, val_items) = rekeyed_click_pairs(sessions, items, 30)
    model = BPRMatrixFactorization(300, 1000, 20, seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    before = model.items.weight.detach().clone()
    assert float(_held_out_loss(model, val_users, val_items, val_items.flip(0))) > 0  # the default: no step
    assert torch.equal(model.items.weight, before)
    loss = _reference_validation_loss(model, optimizer, (val_users, val_items), 256, torch.Generator().manual_seed(0))
    assert loss == pytest.approx(math.log(2), abs=0.01)  # all-pairs loss of a near-untrained model
    steps = -(-val_users.numel() // 256)  # one Adam step per batch: a row moves by at most lr per step
    moved = (model.items.weight.detach() - before).abs().amax(dim=1)
    assert steps > 1 and float(moved[val_items].min()) > 0 and float(moved.max()) <= steps * 1e-4 * 1.01
    assert float(moved[val_items].median()) > 0.5e-4 * steps  # the clicked items moved by about lr per step


def test_train_mf_evaluates_with_the_reference_pass(logged):
    slates, clicks = logged
    result = train_mf(slates, clicks, max_steps=5, eval_every=1000, seed=0, reference_validation=True)
    assert [step for step, _ in result.evaluations] == [1, 5]
    assert result.evaluations[0][1] == pytest.approx(math.log(2), abs=0.01)


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


def _saved(state: dict) -> dict:
    """A state as `--resume` reads it back: through torch.save and a weights-only load."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)


@pytest.mark.parametrize(
    "options",
    [
        dict(lr=1.0, eval_every=2, patience=3),  # diverges: stops early, so the evaluations without improvement count
        dict(lr=1e-2, eval_every=4, max_steps=30, reference_validation=True),  # its validation draws and trains
    ],
    ids=["held-out, early stopping", "reference validation, max steps"],
)
def test_mf_resumed_from_any_saved_state_ends_as_the_uninterrupted_training(logged, options):
    slates, clicks = logged
    options = dict(options, batch_size=4096, seed=0)  # about 7 batches an epoch: the states span several epochs
    states: list[dict] = []
    uninterrupted = train_mf(slates, clicks, save_every=3, on_save=lambda s: states.append(_saved(s)), **options)
    assert [state["steps"] for state in states] == list(range(3, uninterrupted.steps, 3))
    sessions, _ = click_pairs(slates, clicks)
    if options.get("reference_validation"):
        n_batches = -(-int((sessions >= 30).sum()) // 4096)  # the training sessions' clicks (30 validation sessions)
        assert n_batches in [state["next_batch"] for state in states]  # one saved at the end of an epoch
    else:
        assert uninterrupted.stop_reason == "early_stopping" and any(state["stale"] > 0 for state in states)
    for state in states:
        resumed = train_mf(slates, clicks, save_every=3, resume=state, **options)
        assert torch.equal(resumed.item_table, uninterrupted.item_table), state["steps"]
        assert resumed.evaluations == uninterrupted.evaluations
        assert (resumed.steps, resumed.stop_reason, resumed.best_val_loss) == (
            uninterrupted.steps,
            uninterrupted.stop_reason,
            uninterrupted.best_val_loss,
        )


def test_mf_state_saved_on_another_kind_of_device_is_refused(logged):
    slates, clicks = logged
    states: list[dict] = []
    train_mf(slates, clicks, max_steps=2, save_every=1, seed=0, on_save=states.append)
    assert states[0]["device"] == "cpu"
    with pytest.raises(SlateRLError, match=r"saved on cuda; resume it there \(--device cuda\)"):
        train_mf(slates, clicks, max_steps=2, seed=0, resume={**states[0], "device": "cuda"})


def test_topic_alignment_tells_a_table_with_topics_from_one_without():
    env = make("focused_topdown")
    truth, topics = env.item_embeddings, env.item_topics
    mixed = truth @ torch.randn(20, 20, generator=torch.Generator().manual_seed(1)) + 3.0  # invertible, shifted
    assert topic_alignment(mixed, truth, topics)[0] == pytest.approx(1.0, abs=1e-9)
    r2, same_topic = topic_alignment(torch.randn(1000, 20, generator=torch.Generator().manual_seed(0)), truth, topics)
    chance = float((torch.bincount(topics).double() / topics.numel()).square().sum())
    # a random table: R² about (20 regressors) / (1000 items); neighbours of the same topic by chance (SE ~0.01)
    assert r2 < 0.05 and abs(same_topic - chance) < 4 * math.sqrt(chance * (1 - chance) / topics.numel())
    assert topic_alignment(truth, truth, topics)[1] > chance + 0.3
