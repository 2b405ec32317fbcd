"""GeMS of several seeds trained stacked (`GeMSGroup`, `pretrain-gems --seeds`): each seed trains as it would alone,
its run holds what a single-seed run holds and is found by lineage; train-online --seeds pretrains its missing GeMS
as one group; bad input."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from slate_rl.cli import main
from slate_rl.errors import SlateRLError
from slate_rl.rankers.data import SeedBatches, SlateSamples, SliceBatches
from slate_rl.rankers.gems import GeMS
from slate_rl.rankers.gems_group import GeMSGroup
from slate_rl.safe_load import torch_load
from slate_rl.stage_configs import GenerateDatasetConfig, PretrainGemsConfig, TrainOnlineConfig
from slate_rl.stages import generate_dataset, pretrain_gems, train_online
from slate_rl.tracking.lineage import artifact_dir

TINY_VAE = dict(num_items=50, slate_size=4, item_dim=5, latent_dim=3, encoder_hidden=(16,), decoder_hidden=(12,))
SEEDS = [58407201, 496912423]


@pytest.fixture(autouse=True)
def two_threads():
    """A fixed intra-op thread count, whatever earlier tests left (the CLI sets one thread process-wide). The float32
    comparisons of a grouped run with a single run depend on it: with two threads the stacked and the single products
    agree to float32 rounding (relative differences ~1e-7 after two epochs); with one they take different kernels,
    and Adam magnifies the rounding to 0.5% in the click loss. The float64 test is the exact check."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def _samples(n: int = 44) -> SlateSamples:
    generator = torch.Generator().manual_seed(0)
    clicks = (torch.rand(n, 4, generator=generator) < 0.3).to(torch.uint8)
    return SlateSamples(torch.randint(0, 50, (n, 4), generator=generator, dtype=torch.int16), clicks)


def _alone(seed: int, samples: SlateSamples, epochs: int) -> GeMS:
    """One seed trained by a plain loop: Lightning's automatic optimisation of `GeMS` on its datamodule's batches."""
    model = GeMS(**TINY_VAE, seed=seed).double()
    optimiser = model.configure_optimizers()
    batches = SliceBatches(samples, 8, shuffle=True, generator=torch.Generator().manual_seed(seed))
    for _ in range(epochs):
        for slates, clicks in batches:
            loss = model.loss_terms(slates, clicks.double())["loss"]
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return model


def test_seed_batches_give_each_seed_its_single_run_batches():
    samples = _samples(20)
    for shuffle in (True, False):
        stacked = list(SeedBatches(samples, 8, shuffle, [torch.Generator().manual_seed(s) for s in (3, 4)]))
        assert [tuple(slates.shape) for slates, _ in stacked] == [(2, 8, 4), (2, 8, 4), (2, 4, 4)]
        for index, seed in enumerate((3, 4)):
            alone = list(SliceBatches(samples, 8, shuffle, torch.Generator().manual_seed(seed)))
            for (slates, clicks), (expected_slates, expected_clicks) in zip(stacked, alone, strict=True):
                assert torch.equal(slates[index], expected_slates) and torch.equal(clicks[index], expected_clicks)
    first, second = next(iter(SeedBatches(samples, 20, True, [torch.Generator().manual_seed(s) for s in (3, 4)])))[0]
    assert not torch.equal(first, second)  # the seeds' orders differ


def test_a_seed_in_a_stacked_group_trains_as_it_would_alone():
    """Float64, 2 epochs of 6 batches (the last one partial): init, batch order, noise and Adam steps per seed."""
    samples, seeds = _samples(), [5, 58407201, 17]
    group = GeMSGroup([GeMS(**TINY_VAE, seed=seed).double() for seed in seeds], torch.device("cpu"))
    orders = [torch.Generator().manual_seed(seed) for seed in seeds]
    for _ in range(2):
        for slates, clicks in SeedBatches(samples, 8, True, orders):
            terms = group.step(slates, clicks)
    assert terms["loss"].shape == (3,)
    for index, seed in enumerate(seeds):
        expected, got = _alone(seed, samples, epochs=2).state_dict(), group.model(index).state_dict()
        initial = GeMS(**TINY_VAE, seed=seed).double().state_dict()
        for name, value in expected.items():
            assert not torch.allclose(value, initial[name]), name  # it trained
            torch.testing.assert_close(got[name], value, rtol=1e-8, atol=1e-12)
    slates, clicks = samples.batch(slice(0, 10))
    validation = group.evaluate(slates, clicks)
    for index in range(len(seeds)):
        alone = group.model(index).evaluation_terms(slates, clicks.double())
        assert validation.keys() == alone.keys()
        for name, value in alone.items():
            torch.testing.assert_close(validation[name][index], value, rtol=1e-10, atol=0.0)


def test_a_bf16_group_step_is_the_fp32_step_up_to_bfloat16_rounding():
    """Under bf16 autocast the losses of one step stay within a few bfloat16 roundings (u = 2^-8) of fp32's and the
    parameters stay fp32; an unknown precision is refused."""
    samples, seeds = _samples(), [5, 17]
    slates, clicks = next(iter(SeedBatches(samples, 8, True, [torch.Generator().manual_seed(s) for s in seeds])))
    terms = {
        precision: GeMSGroup([GeMS(**TINY_VAE, seed=s) for s in seeds], torch.device("cpu"), precision).step(
            slates, clicks
        )["loss"]
        for precision in ("fp32", "bf16")
    }
    assert not torch.equal(terms["bf16"], terms["fp32"])  # bf16 really ran
    torch.testing.assert_close(terms["bf16"], terms["fp32"], rtol=4 * 2**-8, atol=0.0)
    group = GeMSGroup([GeMS(**TINY_VAE, seed=s) for s in seeds], torch.device("cpu"), "bf16")
    group.step(slates, clicks)
    assert all(value.dtype == torch.float32 for value in group.params.values())
    with pytest.raises(SlateRLError, match="precision must be one of fp32, bf16"):
        GeMSGroup([GeMS(**TINY_VAE, seed=5)], torch.device("cpu"), "fp16")


def test_a_group_refuses_models_that_differ_by_more_than_their_seed():
    with pytest.raises(SlateRLError, match="differ by their seed only"):
        GeMSGroup([GeMS(**TINY_VAE, seed=1), GeMS(**{**TINY_VAE, "latent_dim": 4}, seed=2)], torch.device("cpu"))


@pytest.fixture(scope="module")
def dataset(module_store) -> str:
    config = GenerateDatasetConfig.resolve(
        "focused_mix", "quick", n_sessions=60, chunk_size=60, env_params={"episode_length": 10}
    )
    return f"runs:/{generate_dataset.run(config)}/dataset"


def _config(dataset: str, **values) -> PretrainGemsConfig:
    values = dict(dataset=dataset, epochs=3, latent_dim=8, batch_size=16, bound_sessions=20, **values)
    return PretrainGemsConfig.resolve("focused_mix", "quick", env_params={"episode_length": 10}, **values)


def _history(run_id: str) -> dict[str, list[tuple[int, float]]]:
    client = MlflowClient()
    keys = client.get_run(run_id).data.metrics
    return {key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)] for key in keys}


def _paths(run_id: str, path: str = "") -> set[str]:
    found: set[str] = set()
    for item in MlflowClient().list_artifacts(run_id, path):
        found |= _paths(run_id, item.path) if item.is_dir else {item.path}
    return found


@pytest.mark.slow
def test_seeds_stage_runs_equal_single_runs_and_are_found_by_lineage(dataset):
    result = pretrain_gems.run_seeds(_config(dataset), SEEDS)
    client = MlflowClient()
    parent = client.get_run(result.group_run)
    assert parent.info.status == "FINISHED" and parent.data.tags["stage"] == "pretrain_gems_group"
    assert parent.data.params["seeds_resolved"] == "58407201,496912423"
    assert [parent.data.tags[f"run.{seed}"] for seed in SEEDS] == [f"runs:/{result.runs[seed]}" for seed in SEEDS]
    for seed in SEEDS:
        child = client.get_run(result.runs[seed])
        assert child.info.status == "FINISHED" and child.data.tags["mlflow.parentRunId"] == result.group_run
        assert child.data.tags["seed"] == str(seed) and child.data.tags["stage"] == "pretrain_gems"
        assert pretrain_gems.load_decoder(result.runs[seed], expected_latent_dim=8).action_dim == 8

    seed = SEEDS[1]  # the second seed of the group against its single-seed run
    single_id = pretrain_gems.run(_config(dataset, seed=seed))
    grouped, single = client.get_run(result.runs[seed]), client.get_run(single_id)
    assert grouped.data.params == single.data.params
    assert grouped.data.tags["lineage_key"] == single.data.tags["lineage_key"]
    assert _paths(result.runs[seed]) == _paths(single_id) - {"resume/state.pt"}
    got, expected = _history(result.runs[seed]), _history(single_id)
    assert sorted(got) == sorted(expected)
    # float32: the stacked matmuls round differently and Adam's first step magnifies that where gradients are ~0
    # (the float64 test above is the exact check); the bounds (extremes of encodings, ~1.2 wide) move most
    for key, points in expected.items():
        assert [step for step, _ in got[key]] == [step for step, _ in points], key
        close = dict(rel=1e-2, abs=5e-3) if key.startswith("bounds/") else dict(rel=1e-3, abs=3e-4)
        assert [v for _, v in got[key]] == pytest.approx([v for _, v in points], **close), key
    ours, theirs = (pretrain_gems.load_payload(run_id)["vae"] for run_id in (result.runs[seed], single_id))
    for name, value in theirs.items():  # weights of order 1; entries with ~0 gradients move most (Adam)
        assert float((ours[name] - value).abs().max()) < 2e-2 and float((ours[name] - value).abs().mean()) < 5e-4
    checkpoints = [torch_load(artifact_dir(run, "checkpoint/best.ckpt"), "checkpoint") for run in (grouped, single)]
    assert checkpoints[0]["epoch"] == checkpoints[1]["epoch"]
    assert checkpoints[0]["global_step"] == checkpoints[1]["global_step"]
    assert checkpoints[0]["hyper_parameters"] == dict(checkpoints[1]["hyper_parameters"])

    dataset_run = dataset.split("/")[1]
    before = len(client.search_runs(["0"], "tags.stage = 'pretrain_gems'"))
    for seed in SEEDS:  # the newest finished run of the seed: the single run for the second seed
        found = pretrain_gems.find_or_pretrain(_config("", seed=seed), dataset_run, None)
        assert found == (single_id if seed == SEEDS[1] else result.runs[seed])
    assert pretrain_gems.find_or_pretrain_seeds(_config(""), SEEDS, dataset_run, None) == {
        SEEDS[0]: result.runs[SEEDS[0]],
        SEEDS[1]: single_id,
    }
    assert len(client.search_runs(["0"], "tags.stage = 'pretrain_gems'")) == before  # nothing trained

    with pytest.raises(SlateRLError, match=r"was trained in the seed group .* keeps no resume state"):
        pretrain_gems.load_resume_state(client.get_run(result.runs[SEEDS[0]]))


@pytest.mark.slow
def test_train_online_seed_group_pretrains_its_missing_gems_together(dataset, monkeypatch):
    calls: list[list[int]] = []
    run_seeds = pretrain_gems.run_seeds

    def counted(cfg, seeds, **kwargs):
        calls.append(list(seeds))
        return run_seeds(cfg, seeds, **kwargs)

    monkeypatch.setattr(pretrain_gems, "run_seeds", counted)
    monkeypatch.setattr(pretrain_gems, "run", lambda *args, **kwargs: pytest.fail("a single GeMS run was started"))
    cfg = TrainOnlineConfig.resolve(
        "focused_mix",
        "quick",
        method="sac_gems",
        dataset=dataset,
        latent_dim=4,  # no GeMS of this setting exists yet
        env_params={"episode_length": 10},
        agent={"hidden": 32, "batch_size": 4},
        episodes=10,
        warmup_episodes=5,
        val_every=5,
        val_episodes=5,
        test_episodes=5,
        save_every=10,
        register=False,
    )
    seeds = [*SEEDS, 2465781]
    result = train_online.run_seeds(cfg, seeds)
    assert calls == [seeds] and result.failed == {}
    client = MlflowClient()
    under_group = f"tags.mlflow.parentRunId = '{result.group_run}'"
    (group,) = client.search_runs(["0"], f"{under_group} and tags.stage = 'pretrain_gems_group'")
    assert group.data.params["seeds_resolved"] == "58407201,496912423,2465781"
    for seed in seeds:
        tags = client.get_run(result.runs[seed]).data.tags
        assert tags["upstream.gems"] == group.data.tags[f"run.{seed}"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--seeds", "3,3"], "names seed 3 twice"),
        (["--seeds", "-3"], "neither a count in [1, 10] nor a seed above 10"),
        (["--seeds", "5,-3"], "-3 is not a seed"),
        (["--seeds", ","], "has an empty entry"),
        (["--seeds", "2", "--resume", "0123456789abcdef0123456789abcdef"], "a --seeds group is not resumable"),
    ],
)
def test_cli_bad_seeds(tracking_store, args, message):
    result = CliRunner().invoke(main, ["pretrain-gems", "--env", "focused_mix", "--preset", "quick", *args])
    assert result.exit_code == 1 and message in result.output, result.output
    assert MlflowClient().search_runs(["0"]) == []  # refused before any run starts
