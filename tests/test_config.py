"""Presets and typed configs: the six environments, stage presets, overrides, and MLproject consistency."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from slate_rl import config, envs, stage_configs
from slate_rl.errors import SlateRLError
from slate_rl.stage_configs import GenerateDatasetConfig
from slate_rl.tracking.runs import format_param

REPO = Path(__file__).resolve().parents[1]


def test_six_paper_environments_with_their_distinguishing_parameters():
    assert envs.ENV_NAMES == (
        "focused_topdown",
        "focused_mix",
        "focused_divpen",
        "diffuse_topdown",
        "diffuse_mix",
        "diffuse_divpen",
    )
    table = {
        name: (p.item_embeddings, p.click_model, p.diversity_penalty)
        for name in envs.ENV_NAMES
        for p in [envs.env_params(name)]
    }
    assert table["focused_topdown"] == ("focused", "tdPBM", 1.0)
    assert table["diffuse_mix"] == ("diffuse", "mixPBM", 1.0)
    assert table["focused_divpen"] == ("focused", "mixPBM", 3.0)  # DivPen uses the mixed click model
    common = envs.env_params("diffuse_divpen")
    assert (
        common.env_offset,
        common.env_slope,
        common.boredom_threshold,
        common.diversity_threshold,
        common.short_term_boost,
        common.env_omega,
    ) == (0.28, 100.0, 5, 4, 1.0, 0.9)


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
    assert config.parse_assignments(["a=3", "b=0.5", "c=tdPBM", "d=null"]) == {
        "a": 3,
        "b": 0.5,
        "c": "tdPBM",
        "d": None,
    }
    with pytest.raises(SlateRLError, match="must look like key=value"):
        config.parse_assignments(["oops"])


@pytest.mark.parametrize(
    "entry_point, config_class",
    [
        ("generate_dataset", stage_configs.GenerateDatasetConfig),
        ("pretrain_gems", stage_configs.PretrainGemsConfig),
        ("train_mf", stage_configs.TrainMFConfig),
        ("train_online", stage_configs.TrainOnlineConfig),
    ],
)
def test_mlproject_fixed_defaults_equal_the_stage_defaults(entry_point, config_class):
    """Declared MLproject parameters are logged by `mlflow run`; they must agree with the resolved config, and
    every parameter the command passes must be a declared one."""
    spec = yaml.safe_load((REPO / "MLproject").read_text())["entry_points"][entry_point]
    declared = spec["parameters"]
    cfg = config_class.resolve(declared["env"]["default"], declared["preset"]["default"])
    resolved = cfg.as_params()
    assert declared.pop("env_param") == {"type": "string", "default": ""} and cfg.env_params == {}
    assert "--env-param {env_param}" in spec["command"]
    # the device is where the run computes, recorded as a tag, not a param of its configuration
    if entry_point in ("train_online", "pretrain_gems"):  # empty: one run of `seed`; a list or count: a group
        assert declared.pop("seeds") == {"type": "string", "default": ""} and "--seeds {seeds}" in spec["command"]
    if entry_point != "generate_dataset":
        assert declared.pop("device") == {"type": "string", "default": "cpu"}
        assert "--device {device}" in spec["command"]
    for name, param in declared.items():
        assert str(param["default"]) == format_param(resolved[name]), name  # as the stage logs it
        assert "{" + name + "}" in spec["command"], name


def test_presets_ship_in_the_package_and_experiments_is_the_same_folder():
    packaged = Path(str(config.packaged_presets())).resolve()
    assert packaged == (REPO / "slate_rl" / "presets").resolve()
    assert (REPO / "experiments").resolve() == packaged  # one copy: the checkout's experiments/ links to it
    assert {"envs.yaml", "quick.yaml", "paper.yaml"} <= {path.name for path in packaged.iterdir()}


def test_a_file_in_the_override_folder_replaces_the_packaged_file_of_that_name(tmp_path, monkeypatch):
    packaged_envs = config.env_names()
    (tmp_path / "quick.yaml").write_text("generate_dataset:\n  n_sessions: 123\n  chunk_size: 50\n")
    monkeypatch.setenv(config.OVERRIDE_VARIABLE, str(tmp_path))
    assert GenerateDatasetConfig.resolve("focused_mix", "quick").n_sessions == 123
    assert config.stage_preset("quick", "train_online") == {}  # the whole file is replaced, not merged
    assert GenerateDatasetConfig.resolve("focused_mix", "paper").n_sessions == 100000  # files left out: packaged
    assert config.env_names() == packaged_envs
    monkeypatch.delenv(config.OVERRIDE_VARIABLE)
    assert GenerateDatasetConfig.resolve("focused_mix", "quick").n_sessions == 2000


def test_a_bad_override_folder_is_refused_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv(config.OVERRIDE_VARIABLE, str(tmp_path / "missing"))
    with pytest.raises(SlateRLError, match=r"SLATE_RL_PRESETS=.*is not a folder.*or unset it"):
        config.stage_preset("quick", "generate_dataset")
    (tmp_path / "quick.yml").write_text("generate_dataset: {n_sessions: 5}\n")
    monkeypatch.setenv(config.OVERRIDE_VARIABLE, str(tmp_path))
    with pytest.raises(SlateRLError, match=r"quick\.yml .* would replace no preset file.*quick\.yaml"):
        config.stage_preset("quick", "generate_dataset")


def test_help_shows_the_preset_values_read_from_the_files():
    from click.testing import CliRunner

    from slate_rl.cli import main

    for stage, command in [("generate_dataset", "generate-dataset"), ("train_online", "train-online")]:
        result = CliRunner().invoke(main, [command, "--help"])
        text = " ".join(result.output.split())  # undo the line wrapping
        fields = set(config.stage_preset("quick", stage)) | set(config.stage_preset("paper", stage))
        assert fields
        for name in fields:
            shown = ", ".join(f"{p}: {config.stage_preset(p, stage)[name]}" for p in config.PRESETS)
            assert f"[{shown}]" in text, name


def test_help_follows_an_override_folder(tmp_path):
    (tmp_path / "quick.yaml").write_text("generate_dataset:\n  n_sessions: 321\n")
    env = {**os.environ, config.OVERRIDE_VARIABLE: str(tmp_path), "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "slate_rl.cli", "generate-dataset", "--help"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    assert "[quick: 321, paper: 100000]" in " ".join(result.stdout.split())
