"""Presets and typed configs: the six environments, stage presets, overrides, and MLproject consistency."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from slate_rl import config, envs, stage_configs
from slate_rl.errors import SlateRLError
from slate_rl.stage_configs import GenerateDatasetConfig

REPO = Path(__file__).resolve().parents[1]


def test_six_paper_environments_with_their_distinguishing_parameters():
    assert envs.ENV_NAMES == ("focused_topdown", "focused_mix", "focused_divpen", "diffuse_topdown", "diffuse_mix",
                              "diffuse_divpen")
    table = {name: (p.item_embeddings, p.click_model, p.diversity_penalty)
             for name in envs.ENV_NAMES for p in [envs.env_params(name)]}
    assert table["focused_topdown"] == ("focused", "tdPBM", 1.0)
    assert table["diffuse_mix"] == ("diffuse", "mixPBM", 1.0)
    assert table["focused_divpen"] == ("focused", "mixPBM", 3.0)  # DivPen uses the mixed click model
    common = envs.env_params("diffuse_divpen")
    assert (common.env_offset, common.env_slope, common.boredom_threshold, common.diversity_threshold,
            common.short_term_boost, common.env_omega) == (0.28, 100.0, 5, 4, 1.0, 0.9)


def test_overrides_change_any_parameter_and_unknown_ones_are_named():
    assert envs.env_params("focused_mix", boredom_threshold=3).boredom_threshold == 3
    with pytest.raises(SlateRLError, match="unknown simulator parameter"):
        envs.make("focused_mix", boredom=3)
    with pytest.raises(SlateRLError, match="env_omega must lie in"):
        envs.make("focused_mix", env_omega=2.0)
    with pytest.raises(SlateRLError, match="unknown environment 'focused'; choose one of"):
        envs.make("focused")


def test_stage_config_takes_preset_values_then_explicit_overrides():
    quick = GenerateDatasetConfig.resolve("focused_mix", "quick")
    paper = GenerateDatasetConfig.resolve("focused_mix", "paper", epsilon=0.2)
    assert (quick.n_sessions, paper.n_sessions, paper.epsilon, paper.seed) == (2000, 100000, 0.2, 2754851)
    with pytest.raises(SlateRLError, match="unknown preset 'fast'"):
        GenerateDatasetConfig.resolve("focused_mix", "fast")


def test_assignments_are_typed():
    assert config.parse_assignments(["a=3", "b=0.5", "c=tdPBM", "d=null"]) == {"a": 3, "b": 0.5, "c": "tdPBM", "d": None}
    with pytest.raises(SlateRLError, match="must look like key=value"):
        config.parse_assignments(["oops"])


@pytest.mark.parametrize("entry_point, config_class", [
    ("generate_dataset", stage_configs.GenerateDatasetConfig),
    ("pretrain_gems", stage_configs.PretrainGemsConfig),
    ("train_mf", stage_configs.TrainMFConfig),
    ("train_online", stage_configs.TrainOnlineConfig),
])
def test_mlproject_fixed_defaults_equal_the_stage_defaults(entry_point, config_class):
    """Declared MLproject parameters are logged by `mlflow run`; they must agree with the resolved config, and
    every parameter the command passes must be a declared one."""
    spec = yaml.safe_load((REPO / "MLproject").read_text())["entry_points"][entry_point]
    declared = spec["parameters"]
    cfg = config_class.resolve(declared["env"]["default"], declared["preset"]["default"])
    resolved = cfg.as_params()
    assert declared.pop("env_param") == {"type": "string", "default": ""} and cfg.env_params == {}
    assert "--env-param {env_param}" in spec["command"]
    for name, param in declared.items():
        assert str(param["default"]) == str(resolved[name] if resolved[name] is not None else ""), name
        assert "{" + name + "}" in spec["command"], name
