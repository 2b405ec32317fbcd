"""The environment spec of every stage (preset, overrides, item-table fingerprint): in params and lineage, checked
against upstream runs and registered policies, and lineage keys that survive new fields and old stores."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from slate_rl import config, envs
from slate_rl.cli import main
from slate_rl.config import parse_env_params
from slate_rl.data import load_offline
from slate_rl.envs.spec import EnvSpec
from slate_rl.errors import SlateRLError
from slate_rl.stage_configs import GenerateDatasetConfig, PretrainGemsConfig, TrainMFConfig, TrainOnlineConfig
from slate_rl.stages import (
    compare,
    environment,
    generate_dataset,
    on_dataset,
    pipeline,
    pretrain_gems,
    registry,
    train_mf,
    train_online,
)
from slate_rl.tracking import models
from slate_rl.tracking.lineage import LINEAGE_TAG, artifact_dir, find_finished_run, lineage_key
from slate_rl.tracking.runs import format_param

ENV = "focused_mix"


def _invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def _dataset(env_params=None, **values) -> str:
    cfg = GenerateDatasetConfig.resolve(ENV, "quick", n_sessions=20, chunk_size=20, env_params=env_params, **values)
    return generate_dataset.run(cfg)


# --- the spec itself ---------------------------------------------------------------------------------------------


def test_spec_keeps_only_overrides_that_differ_from_the_preset_and_reads_back_from_params():
    spec = EnvSpec.build("diffuse_mix", {"boredom_threshold": 3, "diversity_penalty": 1, "env_omega": 0.9})
    assert spec.overrides == {"boredom_threshold": 3}  # 1 == the preset's 1.0, 0.9 == the preset's
    assert spec.as_params() == {
        "env.name": "diffuse_mix",
        "env.boredom_threshold": 3,
        "env.item_table": envs.fingerprint(envs.make("diffuse_mix").item_embeddings),
    }
    logged = {k: format_param(v) for k, v in spec.as_params().items()}  # what MLflow stores
    assert EnvSpec.from_params({**logged, "epsilon": "0.5"}) == spec
    assert EnvSpec.from_dict(json.loads(json.dumps(spec.as_dict()))) == spec
    assert EnvSpec.from_params({"epsilon": "0.5"}) is None


def test_differences_name_each_parameter_with_both_values():
    here = EnvSpec.build("diffuse_mix", {"boredom_threshold": 3})
    there = EnvSpec.build("diffuse_mix", {"diversity_penalty": 5.0})
    assert here.differences(there) == [("boredom_threshold", 3, 5), ("diversity_penalty", 1.0, 5.0)]
    assert here.differences(EnvSpec.build("diffuse_mix", {"boredom_threshold": 3})) == []
    variant = EnvSpec.build("diffuse_mix_bt3_dp5")  # a named variant: same simulator as the overrides, other name
    assert variant.differences(EnvSpec.build("diffuse_mix", {"boredom_threshold": 3, "diversity_penalty": 5})) == [
        ("environment", "diffuse_mix_bt3_dp5", "diffuse_mix")
    ]


def test_named_variants_and_the_paper_six():
    assert (
        config.paper_env_names()
        == envs.ENV_NAMES
        == ("focused_topdown", "focused_mix", "focused_divpen", "diffuse_topdown", "diffuse_mix", "diffuse_divpen")
    )
    variants = {name: envs.env_params(name) for name in config.env_names() if name not in envs.ENV_NAMES}
    assert {
        n: (p.item_embeddings, p.click_model, p.diversity_penalty, p.boredom_threshold) for n, p in variants.items()
    } == {
        "diffuse_topdown_bt3_dp5": ("diffuse", "tdPBM", 5.0, 3),
        "diffuse_topdown_bt5_dp5": ("diffuse", "tdPBM", 5.0, 5),
        "diffuse_mix_bt3_dp5": ("diffuse", "mixPBM", 5.0, 3),
        "diffuse_mix_bt5_dp5": ("diffuse", "mixPBM", 5.0, 5),
        "diffuse_divpen_bt3_dp5": ("diffuse", "mixPBM", 5.0, 3),
    }
    assert envs.make("diffuse_mix_bt3_dp5").name == "diffuse_mix_bt3_dp5"
    # 'all' in comparisons and the pipeline is the paper's table; a variant is there when named
    assert compare.CompareConfig.resolve("all", "all").envs == list(envs.ENV_NAMES)
    assert pipeline.PipelineConfig.resolve("all", "random", "1").envs == list(envs.ENV_NAMES)
    assert compare.CompareConfig.resolve("diffuse_mix_bt5_dp5", "all").envs == ["diffuse_mix_bt5_dp5"]


def test_env_param_values_parse_repeated_and_comma_joined():
    assert parse_env_params(["boredom_threshold=3,diversity_penalty=5.0", "", "click_only_once=true"]) == {
        "boredom_threshold": 3,
        "diversity_penalty": 5.0,
        "click_only_once": True,
    }
    assert parse_env_params(["env_propensities=[0.5, 0.25],click_model=custom"]) == {
        "env_propensities": [0.5, 0.25],
        "click_model": "custom",
    }
    assert parse_env_params([""]) == {}


# --- the item table counts by content ----------------------------------------------------------------------------


def test_item_table_enters_the_identity_by_content_not_by_path(tmp_path):
    table = envs.generate_item_embeddings(7)
    for name in ("a.pt", "b.pt"):
        torch.save(table, tmp_path / name)
    torch.save(envs.generate_item_embeddings(8), tmp_path / "c.pt")

    def keys(path):
        return generate_dataset.lookup_keys(GenerateDatasetConfig.resolve(ENV, "quick", item_embeddings=str(path)))

    assert keys(tmp_path / "a.pt")[0] == keys(tmp_path / "b.pt")[0]  # same table at two paths
    assert keys(tmp_path / "a.pt")[0] != keys(tmp_path / "c.pt")[0]  # other content
    online = [TrainOnlineConfig.resolve(ENV, "quick", item_embeddings=str(tmp_path / n)) for n in ("a.pt", "b.pt")]
    assert train_online.lookup_keys(online[0])[0] == train_online.lookup_keys(online[1])[0]
    assert "a.pt" not in json.dumps(train_online.identity(online[0]))


# --- bad input ---------------------------------------------------------------------------------------------------

STAGE_ARGS = {
    "generate-dataset": [],
    "pretrain-gems": [],
    "train-mf": [],
    "train-online": ["--method", "random"],
    "collect": ["--quality", "expert"],
}


@pytest.mark.parametrize("stage", sorted(STAGE_ARGS))
@pytest.mark.parametrize(
    "value, message",
    [
        (
            "boredom_treshold=3",
            "unknown simulator parameter(s) boredom_treshold; valid ones: bored_timeout, "
            "boredom_moving_window, boredom_threshold",
        ),
        ("boredom_threshold=three", "simulator parameter boredom_threshold must be an integer (got 'three')"),
        ("diversity_penalty=true", "simulator parameter diversity_penalty must be a number (got True)"),
        ("item_embeddings=x.pt", "item_embeddings is not an --env-param: give the table with --item-embeddings"),
    ],
)
def test_bad_env_param_is_named_before_any_run(tracking_store, stage, value, message):
    result = _invoke(stage, "--env", ENV, "--preset", "quick", "--env-param", value, *STAGE_ARGS[stage])
    assert result.exit_code == 1, result.output
    assert message in result.output
    assert MlflowClient().search_runs(["0"]) == []


@pytest.mark.parametrize("stage", [*sorted(STAGE_ARGS), "train-offline"])
def test_malformed_env_param_is_a_usage_error_before_any_run(tracking_store, stage):
    result = _invoke(stage, "--env", ENV, "--env-param", "boredom_threshold", *STAGE_ARGS.get(stage, []))
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--env-param'" in result.output and "'boredom_threshold' must look like key=value" in (
        result.output
    )
    assert MlflowClient().search_runs(["0"]) == []


# --- spec in params, lineage, payloads; upstream checks ----------------------------------------------------------


def test_dataset_run_logs_its_spec_and_its_lineage_depends_on_it(tracking_store):
    result = _invoke(
        "generate-dataset",
        "--env",
        ENV,
        "--preset",
        "quick",
        "--n-sessions",
        "20",
        "--env-param",
        "boredom_threshold=3",
        "--env-param",
        "diversity_penalty=2.0,env_omega=0.9",
    )
    assert result.exit_code == 0, result.output
    (run,) = MlflowClient().search_runs(["0"])
    params, tags = run.data.params, run.data.tags
    spec = EnvSpec.build(ENV, {"boredom_threshold": 3, "diversity_penalty": 2.0})
    assert {k: v for k, v in params.items() if k.startswith("env.")} == {
        "env.name": ENV,
        "env.boredom_threshold": "3",
        "env.diversity_penalty": "2.0",
        "env.item_table": spec.item_table,
    }
    assert params["sim.boredom_threshold"] == "3" and tags["env_spec"] == spec.summary()
    assert generate_dataset.load_from_run(run.info.run_id).meta["env_spec"] == spec.as_dict()
    cfg = GenerateDatasetConfig.resolve(
        ENV, "quick", n_sessions=20, env_params={"boredom_threshold": 3, "diversity_penalty": 2.0}
    )
    assert tags[LINEAGE_TAG] == generate_dataset.lookup_keys(cfg)[0]
    assert generate_dataset.find_or_generate(cfg, None) == run.info.run_id
    other = dataclasses.replace(cfg, env_params={"boredom_threshold": 4, "diversity_penalty": 2.0})
    assert generate_dataset.lookup_keys(other)[0] != tags[LINEAGE_TAG]


def test_train_online_runs_on_its_spec_and_registers_it(tracking_store):
    result = _invoke(
        "train-online",
        "--env",
        ENV,
        "--preset",
        "quick",
        "--method",
        "random",
        "--test-episodes",
        "20",
        "--env-param",
        "boredom_threshold=3",
    )
    assert result.exit_code == 0, result.output
    (run,) = MlflowClient().search_runs(["0"], "tags.stage = 'train_online'")
    assert run.data.params["env.boredom_threshold"] == "3" and "env_params.boredom_threshold" not in run.data.params
    cfg = TrainOnlineConfig.resolve(
        ENV, "quick", method="random", test_episodes=20, env_params={"boredom_threshold": 3}
    )
    assert run.data.tags[LINEAGE_TAG] == train_online.lookup_keys(cfg)[0]
    (version,) = models.versions(ENV)
    assert version.tags["env.boredom_threshold"] == "3"
    assert models.load_version_payload(version)["env_params"]["boredom_threshold"] == 3  # the simulator it played


def test_explicit_dataset_of_another_simulator_is_refused_or_allowed_with_a_tag(tracking_store):
    dataset = f"runs:/{_dataset({'boredom_threshold': 3})}/dataset"
    refused = _invoke("train-mf", "--env", ENV, "--preset", "quick", "--dataset", dataset, "--max-steps", "5")
    assert refused.exit_code == 1
    assert "was made on another simulator: boredom_threshold = 3 there, 5 here" in refused.output
    assert "--allow-env-mismatch true" in refused.output
    (failed,) = MlflowClient().search_runs(["0"], "tags.stage = 'train_mf'")
    assert failed.info.status == "FAILED" and not MlflowClient().list_artifacts(failed.info.run_id, "mf")
    gems = _invoke("pretrain-gems", "--env", ENV, "--preset", "quick", "--dataset", dataset, "--epochs", "1")
    assert gems.exit_code == 1 and "boredom_threshold = 3 there, 5 here" in gems.output

    matching = _invoke(
        "train-mf",
        "--env",
        ENV,
        "--preset",
        "quick",
        "--dataset",
        dataset,
        "--max-steps",
        "5",
        "--env-param",
        "boredom_threshold=3",
    )
    assert matching.exit_code == 0, matching.output
    allowed = _invoke(
        "train-mf",
        "--env",
        ENV,
        "--preset",
        "quick",
        "--dataset",
        dataset,
        "--max-steps",
        "5",
        "--allow-env-mismatch",
        "true",
    )
    assert allowed.exit_code == 0, allowed.output
    runs = {
        r.data.params.get("env.boredom_threshold", "5"): r
        for r in MlflowClient().search_runs(["0"], "tags.stage = 'train_mf' and attributes.status = 'FINISHED'")
    }
    assert "env_mismatch.dataset" not in runs["3"].data.tags
    recorded = json.loads((artifact_dir(runs["3"], "mf") / train_mf.SPEC_FILE).read_text())
    assert recorded == EnvSpec.build(ENV, {"boredom_threshold": 3}).as_dict()
    assert "boredom_threshold = 3 there, 5 here" in runs["5"].data.tags["env_mismatch.dataset"]
    assert runs["3"].data.params["allow_env_mismatch"] == "false"

    # train_online acting through that MF run: the same check, by the MF run's recorded spec
    mf = f"runs:/{runs['3'].info.run_id}"
    online = _invoke(
        "train-online", "--env", ENV, "--preset", "quick", "--method", "sac_topk_mf", "--mf", mf, "--register", "false"
    )
    assert online.exit_code == 1 and "the mf run" in online.output
    assert "boredom_threshold = 3 there, 5 here" in online.output


def test_gems_payload_and_policy_versions_record_the_spec(tracking_store):
    spec = EnvSpec.build(ENV, {"boredom_threshold": 3})
    dataset = _dataset({"boredom_threshold": 3})
    cfg = PretrainGemsConfig.resolve(
        ENV,
        "quick",
        dataset=f"runs:/{dataset}",
        env_params={"boredom_threshold": 3},
        epochs=1,
        batch_size=64,
        bound_sessions=10,
        latent_dim=4,
    )
    gems_run = pretrain_gems.run(cfg)
    assert pretrain_gems.load_payload(gems_run)["env_spec"] == spec.as_dict()
    assert environment.recorded_spec(MlflowClient().get_run(gems_run)) == spec

    registry.register_random(ENV, seed=0)
    (version,) = models.versions(ENV)
    assert version.tags["env.name"] == ENV and version.tags["env.item_table"] == EnvSpec.build(ENV).item_table


def test_collect_refuses_a_policy_of_another_simulator_unless_allowed(tracking_store):
    registry.register_random(ENV, seed=0)
    args = [
        "collect",
        "--env",
        ENV,
        "--preset",
        "quick",
        "--policy",
        f"models:/slate-rl.{ENV}/1",
        "--episodes",
        "20",
        "--batch-size",
        "20",
        "--reference-episodes",
        "10",
        "--format",
        "npz",
        "--env-param",
        "boredom_threshold=3",
    ]
    refused = _invoke(*args)
    assert refused.exit_code == 1
    assert (
        "policy version 1 of slate-rl.focused_mix was made on another simulator: boredom_threshold = 5 there, 3 here"
    ) in refused.output
    allowed = _invoke(*args, "--allow-env-mismatch", "true")
    assert allowed.exit_code == 0, allowed.output
    (run,) = MlflowClient().search_runs(["0"], "tags.stage = 'collect' and attributes.status = 'FINISHED'")
    assert "boredom_threshold = 5 there, 3 here" in run.data.tags["env_mismatch.source.v1"]
    assert run.data.params["env.boredom_threshold"] == "3"
    episodes = load_offline(run.info.run_id)
    assert episodes.metadata["env_spec"]["overrides"] == {"boredom_threshold": 3}  # played on the requested one
    assert episodes.metadata["env_params"]["boredom_threshold"] == 3


def test_runs_that_predate_specs_are_checked_by_what_they_logged(tracking_store):
    """A 0.1.0 dataset run logged sim.* params and an 'embeddings' tag; a 0.1.0 GeMS / MF run named its dataset."""
    env = envs.make(ENV, boredom_threshold=3)
    client = MlflowClient()
    old = client.create_run(
        "0", tags={"stage": "generate_dataset", "embeddings": envs.fingerprint(env.item_embeddings)}
    )
    for key, value in {"env": ENV, **{f"sim.{k}": v for k, v in env.params.as_dict().items()}}.items():
        client.log_param(old.info.run_id, key, format_param(value))
    client.set_terminated(old.info.run_id)
    model = client.create_run("0", tags={"stage": "train_mf", "upstream.dataset": f"runs:/{old.info.run_id}/dataset"})
    client.set_terminated(model.info.run_id)
    for run_id in (old.info.run_id, model.info.run_id):
        assert environment.recorded_spec(client.get_run(run_id)) == EnvSpec.build(ENV, {"boredom_threshold": 3})
    bare = client.create_run("0", tags={"stage": "pretrain_gems"})
    with pytest.raises(SlateRLError, match=r"records no environment spec .* --allow-env-mismatch true"):
        environment.recorded_spec(client.get_run(bare.info.run_id))


# --- lineage that survives growth ---------------------------------------------------------------------------------

TINY = dict(
    episodes=60,
    warmup_episodes=20,
    val_every=20,
    val_episodes=20,
    test_episodes=100,
    save_every=20,
    parallel_episodes=10,
)
DATASET_RUN = "0123456789abcdef0123456789abcdef"
# Lineage keys that slate-rl 0.1.0 (before environment specs) wrote for these configurations, computed with that
# release and copied here literally: its stores must still be found.
LEGACY = [
    (
        "generate_dataset",
        lambda: GenerateDatasetConfig.resolve(ENV, "quick", n_sessions=50, chunk_size=20),
        "6da4c8bedd87a311abd6edeb",
    ),
    (
        "generate_dataset",
        lambda: GenerateDatasetConfig.resolve(
            "diffuse_mix", "paper", env_params={"boredom_threshold": 3, "diversity_penalty": 5.0}
        ),
        "e788522ea0b2c5fe821ddede",
    ),
    ("generate_dataset", lambda: GenerateDatasetConfig.resolve("focused_topdown", "paper"), "f5f56cee361619cca9b7b21d"),
    (
        "pretrain_gems",
        lambda: PretrainGemsConfig.resolve(ENV, "quick", seed=7, latent_dim=16),
        "6faa5498ac509e5fab80caa1",
    ),
    ("pretrain_gems", lambda: PretrainGemsConfig.resolve("focused_topdown", "paper"), "b9aa474a57f311b6f8585a95"),
    ("train_mf", lambda: TrainMFConfig.resolve(ENV, "quick"), "196bcd1ecace6dcb8a42c733"),
    (
        "train_online",
        lambda: TrainOnlineConfig.resolve(ENV, "quick", method="sac_topk_ideal", **TINY),
        "98be73a1253471fce567ef22",
    ),
    (
        "train_online",
        lambda: TrainOnlineConfig.resolve(
            "focused_topdown", "paper", method="sac_gems", seed=496912423, agent={"gamma": 0.8}
        ),
        "b2af8272775cfc5d51725050",
    ),
]


def _keys(stage: str, cfg) -> tuple[str, ...]:
    if stage == "generate_dataset":
        return generate_dataset.lookup_keys(cfg)
    if stage == "train_online":
        return train_online.lookup_keys(cfg)
    return on_dataset.lookup_keys(stage, cfg, DATASET_RUN)


def _never(*_):
    raise AssertionError("a finished run of this configuration exists; nothing should run")


@pytest.mark.parametrize("stage, make_config, old_key", LEGACY)
def test_a_store_written_before_specs_is_still_found(tracking_store, stage, make_config, old_key):
    client = MlflowClient()
    old = client.create_run("0", tags={"stage": stage, LINEAGE_TAG: old_key})
    client.set_terminated(old.info.run_id)
    cfg = make_config()
    current, *legacy = _keys(stage, cfg)
    assert current != old_key and legacy == [old_key]  # found through the legacy key, not by chance
    assert find_finished_run(stage, (current, *legacy)).info.run_id == old.info.run_id
    if stage == "generate_dataset":
        assert generate_dataset.find_or_generate(cfg, None) == old.info.run_id
    elif stage == "pretrain_gems":
        assert pretrain_gems.find_or_pretrain(cfg, DATASET_RUN, None) == old.info.run_id
    elif stage == "train_mf":
        assert train_mf.find_or_train(cfg, DATASET_RUN, None) == old.info.run_id
    newer = client.create_run("0", tags={"stage": stage, LINEAGE_TAG: current})
    client.set_terminated(newer.info.run_id)
    assert find_finished_run(stage, _keys(stage, cfg)).info.run_id == newer.info.run_id  # the current key first


def test_simulator_overrides_on_train_online_have_no_legacy_key():
    cfg = TrainOnlineConfig.resolve(ENV, "quick", method="random", env_params={"boredom_threshold": 3})
    assert len(train_online.lookup_keys(cfg)) == 1  # 0.1.0 could not override train_online's simulator


def test_a_new_field_at_its_default_leaves_every_key_unchanged():
    @dataclasses.dataclass
    class GrownOnline(TrainOnlineConfig):
        device: str = "cpu"

    @dataclasses.dataclass
    class GrownDataset(GenerateDatasetConfig):
        shards: int = 1

    base = TrainOnlineConfig.resolve(ENV, "quick", method="slateq", seed=3)
    assert train_online.identity(GrownOnline.resolve(ENV, "quick", method="slateq", seed=3)) == train_online.identity(
        base
    )
    assert (
        lineage_key(
            "train_online",
            train_online.identity(GrownOnline.resolve(ENV, "quick", method="slateq", seed=3, device="cuda")),
        )
        != train_online.lookup_keys(base)[0]
    )
    data = GenerateDatasetConfig.resolve(ENV, "quick")
    assert generate_dataset.lookup_keys(GrownDataset.resolve(ENV, "quick")) == generate_dataset.lookup_keys(data)
    sharded = generate_dataset.lookup_keys(GrownDataset.resolve(ENV, "quick", shards=2))
    assert len(sharded) == 1 and sharded[0] not in generate_dataset.lookup_keys(data)  # no 0.1.0 run had 2 shards
