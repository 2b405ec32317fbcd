"""Policies as MLflow models and the Model Registry: one registered model per environment, versions from any
method, seed or checkpoint, and the aliases `expert`, `medium`, `random` that choose collection policies.

A version's source is a pyfunc model folder logged under a run's artifacts (`policies/<name>/`): MLmodel, the
slate_rl code it needs, and `artifacts/policy.pt` (the payload of `slate_rl.agents.export`). The model is logged from
code (`policy_model.py` builds it when MLflow loads the folder), so loading it unpickles nothing. It loads with
`mlflow.pyfunc.load_model("models:/slate-rl.<env>@expert")`, whose `predict({"slates": (B,T,R), "clicks":
(B,T,R)})` returns the next slates (B,R) for observation histories that start with the reset observation.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types.schema import Schema, TensorSpec

import slate_rl
from slate_rl import atomic
from slate_rl.errors import SlateRLError
from slate_rl.safe_load import torch_load
from slate_rl.tracking.lineage import artifact_dir, get_finished_run
from slate_rl.tracking.runs import StageRun, format_param

MODEL_PREFIX = "slate-rl."
ALIASES = ("expert", "medium", "random")
POLICY_FILE = "policy.pt"
POLICIES_DIR = "policies"
MODEL_CODE = Path(__file__).with_name("policy_model.py")  # the logged model's code
log = logging.getLogger("slate_rl")


def registered_model_name(env: str) -> str:
    return f"{MODEL_PREFIX}{env}"


class SlatePolicyModel(mlflow.pyfunc.PythonModel):
    """pyfunc flavour of a slate-rl policy: observation histories -> next slates."""

    _skip_type_hint_validation = True  # the input is a dict of arrays, described by the explicit signature

    def load_context(self, context: Any) -> None:
        from slate_rl.agents.export import agent_from_payload

        payload = torch_load(context.artifacts["policy"], "policy file")
        self.agent, _ = agent_from_payload(payload)

    def predict(self, context, model_input, params=None):  # no type hints: MLflow would try to infer a schema
        """Next slates (B, R) int64 for histories {'slates': (B, T, R), 'clicks': (B, T, R)}."""
        slates, clicks = _histories(model_input)
        with torch.no_grad():
            return self.agent.recommend(slates, clicks).cpu().numpy().astype(np.int64)


def _histories(model_input: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(model_input, dict):
        slates, clicks = model_input.get("slates"), model_input.get("clicks")
    else:  # a DataFrame with list-valued columns (e.g. from `mlflow models serve` JSON records)
        slates, clicks = np.stack(model_input["slates"].tolist()), np.stack(model_input["clicks"].tolist())
    if slates is None or clicks is None:
        raise SlateRLError("the policy model takes {'slates': (B, T, R), 'clicks': (B, T, R)}")
    return torch.as_tensor(np.asarray(slates), dtype=torch.long), torch.as_tensor(np.asarray(clicks), dtype=torch.long)


_SIGNATURE = ModelSignature(
    inputs=Schema(
        [TensorSpec(np.dtype(np.int64), (-1, -1, -1), "slates"), TensorSpec(np.dtype(np.int64), (-1, -1, -1), "clicks")]
    ),
    outputs=Schema([TensorSpec(np.dtype(np.int64), (-1, -1))]),
)


def log_policy(run: StageRun, payload: dict[str, Any], name: str) -> str:
    """Log `payload` as a pyfunc model folder `policies/<name>` of the run; returns its artifact path."""
    with tempfile.TemporaryDirectory(prefix="slate-rl-policy-") as tmp:
        policy_file = atomic.torch_save(payload, Path(tmp) / POLICY_FILE)
        folder = Path(tmp) / "model"
        with warnings.catch_warnings():  # the signature is given
            warnings.simplefilter("ignore")
            logging.getLogger("mlflow.pyfunc").setLevel(logging.ERROR)
            mlflow.pyfunc.save_model(
                path=str(folder),
                python_model=str(MODEL_CODE),
                artifacts={"policy": str(policy_file)},
                code_paths=[str(Path(slate_rl.__file__).parent)],
                signature=_SIGNATURE,  # presets included
                pip_requirements=[
                    "torch",
                    "numpy",
                    "pyyaml",
                    "click",
                    "rich",
                    "gymnasium",
                    "pytorch-lightning",
                    "mlflow",
                ],
            )
        path = f"{POLICIES_DIR}/{name}"
        run.log_artifacts(folder, path)
    return path


def register(env: str, run_id: str, artifact_path: str, tags: dict[str, Any]) -> ModelVersion:
    """A new version of the environment's registered model from a logged policy folder."""
    client = MlflowClient()
    name = registered_model_name(env)
    _ensure_registered_model(client, name, env)
    version = client.create_model_version(
        name, f"runs:/{run_id}/{artifact_path}", run_id=run_id, tags={k: format_param(v) for k, v in tags.items()}
    )
    log.info("registered %s version %s (%s)", name, version.version, artifact_path)
    return version


def _ensure_registered_model(client: MlflowClient, name: str, env: str) -> None:
    """Create the environment's registered model unless it exists; of jobs that register at the same moment, one
    creates it and the others take it as it is."""
    try:
        client.get_registered_model(name)
        return
    except MlflowException:
        pass
    try:
        client.create_registered_model(name, tags={"env": env}, description=f"slate-rl policies for {env}")
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def versions(env: str) -> list[ModelVersion]:
    """All versions of the environment's registered model, oldest first (empty if it has none)."""
    client = MlflowClient()
    try:
        found = client.search_model_versions(f"name = '{registered_model_name(env)}'")
    except MlflowException:
        return []
    return sorted(found, key=lambda v: int(v.version))


def aliases(env: str) -> dict[str, str]:
    """alias -> version of the environment's registered model."""
    try:
        model = MlflowClient().get_registered_model(registered_model_name(env))
    except MlflowException:
        return {}
    return {alias: str(version) for alias, version in model.aliases.items()}


def get_version(env: str, version: str) -> ModelVersion:
    """A version by number, or by alias (with the aliases that exist named when it is not set)."""
    client, name = MlflowClient(), registered_model_name(env)
    try:
        if str(version).isdigit():
            return client.get_model_version(name, str(version))
        return client.get_model_version_by_alias(name, str(version))
    except MlflowException as exc:
        existing = aliases(env)
        what = f"alias {version!r}" if not str(version).isdigit() else f"version {version}"
        listed = ", ".join(f"{a} -> v{v}" for a, v in sorted(existing.items())) or "none"
        raise SlateRLError(
            f"{name} has no {what} (aliases set: {listed}; see `slate-rl registry list --env {env}`)"
        ) from exc


def set_alias(env: str, version: str, alias: str) -> ModelVersion:
    """Point `alias` at `version` (moving it if it was elsewhere)."""
    target = get_version(env, version)
    MlflowClient().set_registered_model_alias(registered_model_name(env), alias, str(target.version))
    return target


def remove_alias(env: str, alias: str) -> None:
    if alias not in aliases(env):
        raise SlateRLError(
            f"{registered_model_name(env)} has no alias {alias!r} (set: {', '.join(aliases(env)) or 'none'})"
        )
    MlflowClient().delete_registered_model_alias(registered_model_name(env), alias)


def parse_model_uri(uri: str) -> tuple[str, str]:
    """('<env>', '<version or alias>') from 'models:/slate-rl.<env>@alias' or 'models:/slate-rl.<env>/<version>'."""
    text = uri.strip()
    if not text.startswith("models:/" + MODEL_PREFIX):
        raise SlateRLError(
            f"{uri!r} is not a slate-rl policy URI; give models:/{MODEL_PREFIX}<env>@<alias> or "
            f"models:/{MODEL_PREFIX}<env>/<version>"
        )
    rest = text[len("models:/" + MODEL_PREFIX) :]
    env, sep, ref = rest.partition("@") if "@" in rest else rest.partition("/")
    if not sep or not env or not ref:
        raise SlateRLError(f"{uri!r} names no version or alias")
    return env, ref


def load_version_payload(version: ModelVersion) -> dict[str, Any]:
    """The policy payload behind a registered version (from its source run's artifacts)."""
    source = version.source
    if not source.startswith("runs:/"):
        raise SlateRLError(f"version {version.version} of {version.name} has an unexpected source {source!r}")
    run_id, _, path = source[len("runs:/") :].partition("/")
    folder = artifact_dir(get_finished_run(run_id), path)
    return torch_load(folder / "artifacts" / POLICY_FILE, "policy file")
