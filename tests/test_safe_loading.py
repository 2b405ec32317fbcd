"""Nothing in the store runs code when slate-rl loads it: a crafted torch file placed as a run's policy, GeMS model,
MF table or resume state is refused with a clear message before it runs, the pyfunc policy model holds no pickled
object, and every policy payload slate-rl writes loads as tensors and plain values."""

from __future__ import annotations

import os
import shlex
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from agents_helpers import single_thread, small_env, upstream  # noqa: F401 (autouse fixture)
from slate_rl import atomic
from slate_rl.agents import build_agent
from slate_rl.agents.export import agent_from_payload, policy_payload
from slate_rl.agents.training import Trainer
from slate_rl.cli import main
from slate_rl.errors import SlateRLError
from slate_rl.methods import Need, get_method, method_ids
from slate_rl.safe_load import torch_load
from slate_rl.stage_configs import TrainOnlineConfig
from slate_rl.stages import pretrain_gems, registry, train_mf, train_online
from slate_rl.tracking import models
from slate_rl.tracking.lineage import artifact_dir

ENV = "focused_mix"
REFUSED = r"refused to load {what}.*: it refers to the Python object (posix|nt)\.system.*re-create it with this version"


class _RunsCode:
    """Unpickled, it runs a shell command that creates `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


@pytest.fixture
def crafted(tmp_path: Path) -> tuple[Path, Path]:
    """(a torch file shaped like a policy whose pickle runs a command on load, the file that command creates)."""
    marker = tmp_path / "code-ran"
    path = tmp_path / "crafted.pt"
    torch.save({"format": "slate-rl/policy", "version": 1, "weights": _RunsCode(marker)}, path)
    return path, marker


def test_a_crafted_file_is_refused_before_it_runs(crafted):
    path, marker = crafted
    torch.load(path, weights_only=False)  # what an unsafe load does: the command runs
    assert marker.exists()
    marker.unlink()
    with pytest.raises(SlateRLError, match=REFUSED.format(what="policy file")):
        torch_load(path, "policy file")
    with pytest.raises(SlateRLError, match=REFUSED.format(what="resume state")):
        torch_load(path.read_bytes(), "resume state")  # the bytes of a file kept inside another one
    assert not marker.exists()


def test_unreadable_files_are_named(tmp_path):
    good = atomic.torch_save({"a": torch.ones(3)}, tmp_path / "good.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:100])
    with pytest.raises(SlateRLError, match=r"cannot read GeMS model .*truncated\.pt: it is not a complete torch file"):
        torch_load(truncated, "GeMS model")
    with pytest.raises(SlateRLError, match=r"policy file .*missing\.pt does not exist"):
        torch_load(tmp_path / "missing.pt", "policy file")
    text = tmp_path / "notes.pt"
    text.write_text("hello world\n")
    for source, label in ((text, r"item-embedding file .*notes\.pt"), (text.read_bytes(), "item-embedding file")):
        with pytest.raises(SlateRLError, match=label + r" is not a file written by torch.save"):
            torch_load(source, "item-embedding file")
    assert torch.equal(torch_load(good, "test file")["a"], torch.ones(3))


def _fake_run(stage: str, artifact: str, source: Path, finished: bool) -> str:
    """A run of `stage` holding `source` as its artifact `artifact` (as a tampered store would)."""
    client = MlflowClient()
    run_id = client.create_run("0", tags={"stage": stage}).info.run_id
    folder, _, name = artifact.rpartition("/")
    staged = source.parent / "staged" / name
    staged.parent.mkdir(exist_ok=True)
    shutil.copy(source, staged)
    client.log_artifact(run_id, str(staged), folder)
    client.set_terminated(run_id, "FINISHED" if finished else "FAILED")
    return run_id


@pytest.mark.parametrize(
    "stage, artifact, finished, load, what",
    [
        ("train_online", "checkpoints/best/policy.pt", True, lambda r: registry.register_checkpoint(r), "policy file"),
        ("pretrain_gems", "gems/gems.pt", True, pretrain_gems.load_decoder, "GeMS model"),
        ("pretrain_gems", "resume/state.pt", False, pretrain_gems.resumable, "resume state"),
        ("train_mf", "mf/item_embeddings.pt", True, train_mf.load_item_table, "MF item table"),
    ],
)
def test_a_crafted_artifact_of_a_run_is_refused(tracking_store, crafted, stage, artifact, finished, load, what):
    path, marker = crafted
    run_id = _fake_run(stage, artifact, path, finished)
    with pytest.raises(SlateRLError, match=REFUSED.format(what=what)):
        load(run_id)
    assert not marker.exists()


def test_a_crafted_lightning_checkpoint_inside_a_gems_resume_state_is_refused(tracking_store, crafted):
    path, marker = crafted
    state = {"format": pretrain_gems.RESUME_FORMAT, "config": {}, "epoch": 1, "checkpoint": path.read_bytes()}
    state_file = atomic.torch_save({**state, "best_name": "", "best": None}, path.parent / "state.pt")
    run_id = _fake_run("pretrain_gems", "resume/state.pt", state_file, finished=False)
    with pytest.raises(SlateRLError, match=REFUSED.format(what="Lightning checkpoint 'checkpoint' inside the resume")):
        pretrain_gems.resumable(run_id)
    assert not marker.exists()


def test_a_crafted_train_online_resume_state_is_refused(tracking_store, crafted, monkeypatch):
    path, marker = crafted
    config = TrainOnlineConfig.resolve(
        ENV, "quick", method="reinforce_softmax", episodes=40, warmup_episodes=0, val_every=20, val_episodes=10,
        test_episodes=10, save_every=20, parallel_episodes=10, register=False,
    )  # fmt: skip
    original = Trainer._block

    def killed_after_20(self):
        original(self)
        if self.episode == 20:
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_block", killed_after_20)
    with pytest.raises(KeyboardInterrupt):
        train_online.run(config)
    monkeypatch.setattr(Trainer, "_block", original)
    (killed,) = MlflowClient().search_runs(["0"], "attributes.status = 'KILLED'")
    shutil.copy(path, artifact_dir(killed, "resume/state.pt"))  # tampered with in the store
    result = CliRunner().invoke(main, ["train-online", "--resume", killed.info.run_id])
    assert result.exit_code == 1
    assert "Error: refused to load resume state" in result.output and "posix.system" in result.output
    assert not marker.exists()
    assert MlflowClient().get_run(killed.info.run_id).info.status == "FAILED"


@pytest.fixture
def random_policy(tracking_store) -> str:
    """Version 1 of the environment's registered model: the built-in random policy."""
    assert registry.register_random(ENV, seed=0) == "1"
    return f"models:/{models.registered_model_name(ENV)}/1"


def test_the_pyfunc_model_is_logged_from_code_and_loads_without_unpickling(random_policy, monkeypatch):
    folder = artifact_dir(MlflowClient().get_run(models.get_version(ENV, "1").run_id), "policies/random")
    flavor = yaml.safe_load((folder / "MLmodel").read_text())["flavors"]["python_function"]
    assert flavor["loader_module"] == "mlflow.pyfunc.loaders.code_model" and "python_model" not in flavor
    assert (folder / Path(flavor["model_code_path"]).name).is_file()
    assert not [p for p in folder.rglob("*") if p.suffix in (".pkl", ".pickle")]
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")  # MLflow refuses any pickled model
    model = mlflow.pyfunc.load_model(random_policy)
    slates = model.predict({"slates": np.full((3, 2, 10), 5), "clicks": np.zeros((3, 2, 10), dtype=np.int64)})
    assert slates.shape == (3, 10) and (np.sort(slates, axis=1)[:, 1:] != np.sort(slates, axis=1)[:, :-1]).all()


def test_a_crafted_registered_policy_is_refused(random_policy, crafted):
    path, marker = crafted
    folder = artifact_dir(MlflowClient().get_run(models.get_version(ENV, "1").run_id), "policies/random")
    shutil.copy(path, folder / "artifacts" / models.POLICY_FILE)  # tampered with in the store
    with pytest.raises(SlateRLError, match=REFUSED.format(what="policy file")):
        registry.load_policy(ENV, "1")
    with pytest.raises(SlateRLError, match=REFUSED.format(what="policy file")):
        mlflow.pyfunc.load_model(random_policy)
    result = CliRunner().invoke(main, ["collect", "--env", ENV, "--preset", "quick", "--policy", random_policy])
    assert result.exit_code == 1 and "Error: refused to load policy file" in result.output
    assert not marker.exists()


@pytest.mark.parametrize("method", method_ids())
def test_every_policy_payload_loads_as_tensors_and_plain_values(method, tmp_path):
    env = small_env()
    given = upstream(env)
    agent = build_agent(method, env, 3, **given)
    mf_table = given["mf_table"] if Need.MF in get_method(method).needs else None
    info = {"run_id": "abc", "test_return": 1.5}
    payload = policy_payload(agent, env, seed=3, episode=7, mf_table=mf_table, info=info)
    loaded = torch_load(atomic.torch_save(payload, tmp_path / "policy.pt"), "policy file")
    rebuilt, _ = agent_from_payload(loaded)
    expected, got = agent.state_dict(), rebuilt.state_dict()
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    assert loaded["info"] == info and loaded["episode"] == 7
