"""The simulator of a stage: built from its config's environment fields, its spec logged, and upstream runs (or
registered policies) checked to come from the same simulator."""

from __future__ import annotations

import logging
from typing import Any

import torch
import yaml
from mlflow.entities import Run

from slate_rl import envs
from slate_rl.envs.randomness import DEFAULT_SIM_SEED
from slate_rl.envs.spec import EnvSpec
from slate_rl.errors import SlateRLError
from slate_rl.tracking.lineage import get_finished_run, parse_run_uri
from slate_rl.tracking.runs import StageRun

SPEC_TAG = "env_spec"
MISMATCH_TAG = "env_mismatch"  # env_mismatch.<upstream>: the differences a user let through
log = logging.getLogger("slate_rl")


def make_env(cfg: Any, sim_seed: int = DEFAULT_SIM_SEED, device: str | torch.device = "cpu") -> envs.TopicRec:
    """The simulator `cfg.env`, `cfg.env_params` and `cfg.item_embeddings` describe, on `device`."""
    return envs.make(
        cfg.env, item_embeddings=cfg.item_embeddings or None, sim_seed=int(sim_seed), device=device, **cfg.env_params
    )


def spec_of(cfg: Any) -> EnvSpec:
    """The environment spec of a config (its item table is generated or read to fingerprint it)."""
    return EnvSpec.build(cfg.env, cfg.env_params, cfg.item_embeddings or None)


def log_spec(mlrun: StageRun, spec: EnvSpec) -> None:
    """Params env.name, env.<overridden parameter>, env.item_table, and a one-line tag `env_spec`."""
    mlrun.log_params(spec.as_params())
    mlrun.set_tags({SPEC_TAG: spec.summary()})


def recorded_spec(run: Run) -> EnvSpec:
    """The environment spec a run records: its env.* params; for runs that predate them, what they logged instead
    (a dataset run's sim.* params and table fingerprint; a GeMS or MF run's dataset)."""
    spec = EnvSpec.from_params(run.data.params)
    if spec is not None:
        return spec
    params, tags = run.data.params, run.data.tags
    if tags.get("stage") == "generate_dataset" and "env" in params and "embeddings" in tags:
        simulator = {
            k[len("sim.") :]: yaml.safe_load(v) if v != "" else None for k, v in params.items() if k.startswith("sim.")
        }
        return EnvSpec.from_params_of(params["env"], simulator, tags["embeddings"])
    if tags.get("upstream.dataset"):
        return recorded_spec(get_finished_run(parse_run_uri(tags["upstream.dataset"])[0]))
    raise SlateRLError(
        f"run {run.info.run_id} records no environment spec (it predates them and names no "
        "dataset), so it cannot be checked against this simulator; pass --allow-env-mismatch true "
        "to use it anyway"
    )


def check_upstream(spec: EnvSpec, run_ref: str, what: str, allow: bool, mlrun: StageRun) -> None:
    """Refuse the upstream run `run_ref` (a `what`: dataset, gems, mf) unless it was made on the simulator `spec`
    describes, or `allow` is set, in which case the differences are recorded as the tag env_mismatch.<what>."""
    run_id, _ = parse_run_uri(run_ref)
    try:
        theirs = recorded_spec(get_finished_run(run_id))
    except SlateRLError:
        if not allow:
            raise
        mlrun.set_tags({f"{MISMATCH_TAG}.{what}": f"run {run_id}: no environment spec recorded"})
        return
    check_same(spec, theirs, f"the {what} run {run_id}", what, allow, mlrun)


def check_same(spec: EnvSpec, theirs: EnvSpec, source: str, what: str, allow: bool, mlrun: StageRun) -> None:
    """Refuse `source` (made on the simulator `theirs`) unless it matches `spec`, or `allow` is set: then its
    differences are recorded as the tag env_mismatch.<what>."""
    differences = spec.differences(theirs)
    if not differences:
        return
    listing = "; ".join(f"{name} = {there!r} there, {here!r} here" for name, here, there in differences)
    if not allow:
        raise SlateRLError(
            f"{source} was made on another simulator: {listing}. Pass the same --env / --env-param / "
            "--item-embeddings as it used, give another one, or pass --allow-env-mismatch true to use "
            "it anyway"
        )
    log.warning("%s was made on another simulator (%s); used anyway (--allow-env-mismatch)", source, listing)
    mlrun.set_tags({f"{MISMATCH_TAG}.{what}": f"{source}: {listing}"})
