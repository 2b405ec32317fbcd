"""Stage `train_mf`: BPR matrix-factorisation item embeddings (for SAC+TopK (MF) and SAC+WkNN); resumable into the
same run after a kill, from its last saved state, to the same table as a run never stopped."""

from __future__ import annotations

import functools
import logging
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from slate_rl import atomic
from slate_rl.devices import DEVICE_TAG, resolve_device
from slate_rl.errors import SlateRLError
from slate_rl.rankers.mf import check_resume_device, popularity_correlation, topic_alignment, train_mf
from slate_rl.safe_load import torch_load
from slate_rl.stage_configs import TrainMFConfig
from slate_rl.stages import environment, on_dataset
from slate_rl.stages.on_dataset import dataset_stage_run
from slate_rl.tracking.lineage import artifact_dir, get_finished_run, get_unfinished_run, parse_run_uri
from slate_rl.tracking.runs import RESUME_FILE, RESUME_PATH, StageRun, format_param, normal_param

if TYPE_CHECKING:
    from mlflow.entities import Run

STAGE = "train_mf"
ARTIFACT = "mf"
TABLE_FILE = "item_embeddings.pt"
SPEC_FILE = "env_spec.json"  # the environment spec of the dataset's simulator (EnvSpec.as_dict)
RESUME_FORMAT = "slate-rl/mf-resume"
log = logging.getLogger("slate_rl")


class _EvaluationLog:
    """Each held-out evaluation as the metric `val/bpr_loss` (at the training step) while MF trains, and a log line
    at most every `interval` seconds, so that a long run shows how far it got."""

    def __init__(self, mlrun: StageRun, interval: float = 30.0, best: float = float("inf")) -> None:
        self.mlrun, self.interval = mlrun, interval
        self.best, self.last_line = best, time.monotonic()

    def __call__(self, steps: int, loss: float) -> None:
        self.mlrun.log_metrics({"val/bpr_loss": loss}, step=steps)
        self.best = min(self.best, loss)
        if time.monotonic() - self.last_line >= self.interval:
            self.last_line = time.monotonic()
            log.info("%s: step %d, held-out BPR loss %.4f (best %.4f)", STAGE, steps, loss, self.best)


def run(
    cfg: TrainMFConfig,
    parent: StageRun | None = None,
    experiment_name: str | None = None,
    device: str = "cpu",
    resume_run: str | None = None,
) -> str:
    """Train MF on `device` ('cpu', 'cuda' or 'cuda:K'; tag `device`) inside an MLflow run; returns the run id.
    Artifacts: `mf/item_embeddings.pt` (num_items x dim, on the CPU) and `mf/env_spec.json` (the simulator it
    learned from); while it trains, the resume state every `cfg.save_every` steps.

    resume_run: continue that (killed or failed) run from its last resume state; `cfg` must be its configuration,
    `resumable(resume_run)`, and `device` of the kind it trained on.
    """
    on = resolve_device(device)
    state = None
    if resume_run is not None:  # checked before the run is touched
        state = on_dataset.resume_state_for(STAGE, resume_run, cfg, load_resume_state, config_of)
        check_resume_device(state["training"], on)
    with dataset_stage_run(STAGE, cfg, parent, experiment_name, resume_run) as (mlrun, dataset_run, data):
        mlrun.set_tags({DEVICE_TAG: str(on)})
        slates, clicks = data.tensors()
        config = on_dataset.saved_config(cfg, dataset_run)

        def save(training: dict[str, Any]) -> None:
            with tempfile.TemporaryDirectory() as tmp:
                resume = {"format": RESUME_FORMAT, "config": config, "training": training}
                mlrun.replace_artifact(atomic.torch_save(resume, Path(tmp) / RESUME_FILE), RESUME_PATH)
            log.info("%s: resume state saved at step %d", STAGE, training["steps"])

        training = state["training"] if state is not None else None
        if training is None:
            log.info("%s: BPR on %d sessions (early stopping, patience %d)", STAGE, data.n_sessions, cfg.patience)
        else:
            log.info("%s: resuming run %s at step %d", STAGE, mlrun.run_id, training["steps"])
        evaluations = _EvaluationLog(mlrun, best=training["best_val_loss"] if training else float("inf"))
        result = train_mf(
            slates,
            clicks,
            num_items=int(data.meta["num_items"]),
            dim=cfg.dim,
            lr=cfg.lr,
            batch_size=cfg.batch_size,
            eval_every=cfg.eval_every,
            patience=cfg.patience,
            max_steps=cfg.max_steps or None,
            max_seconds=cfg.max_seconds or None,
            seed=cfg.seed,
            device=on,
            on_evaluation=evaluations,
            reference_validation=cfg.reference_validation,
            save_every=cfg.save_every,
            on_save=save,
            resume=training,
        )
        correlation = popularity_correlation(result.item_table, slates, clicks)
        simulator = environment.make_env(cfg)
        topic_r2, same_topic = topic_alignment(result.item_table, simulator.item_embeddings, simulator.item_topics)
        mlrun.log_metrics(
            {
                "best_val_bpr_loss": result.best_val_loss,
                "steps": result.steps,
                "popularity_correlation": correlation,
                "topic_r2": topic_r2,
                "neighbour_same_topic": same_topic,
            }
        )
        mlrun.set_tags({"stop_reason": result.stop_reason})
        with tempfile.TemporaryDirectory(prefix="slate-rl-mf-") as tmp:
            atomic.torch_save(result.item_table.cpu().contiguous(), Path(tmp) / TABLE_FILE)
            atomic.write_json(Path(tmp) / SPEC_FILE, environment.spec_of(cfg).as_dict())
            mlrun.log_artifacts(tmp, ARTIFACT)
        log.info(
            "%s: %d steps (%s), best held-out BPR loss %.4f, popularity correlation %.2f, topic R² %.2f, "
            "nearest neighbour of the same topic %.1f%%",
            STAGE,
            result.steps,
            result.stop_reason,
            result.best_val_loss,
            correlation,
            topic_r2,
            100 * same_topic,
        )
        return mlrun.run_id


def load_resume_state(run: Run) -> dict[str, Any]:
    """The resume state of a train_mf run (saved every `save_every` training steps)."""
    state = on_dataset.load_resume_state(run, RESUME_FORMAT, "every save_every training steps")
    if not isinstance(state.get("training"), dict):
        raise SlateRLError(f"the resume state of run {run.info.run_id} holds no MF training state")
    return state


def config_of(state: dict[str, Any]) -> TrainMFConfig:
    """The configuration a resume state was saved with; fields added since it was saved take their defaults."""
    return on_dataset.config_of(state, TrainMFConfig)


def resumable(run_id: str) -> TrainMFConfig:
    """The configuration of a train_mf run that can be resumed (it exists, did not finish, and saved a resume
    state)."""
    return config_of(load_resume_state(get_unfinished_run(run_id, STAGE)))


def load_item_table(run_ref: str) -> torch.Tensor:
    """The MF item table of a FINISHED train_mf run."""
    run_id, _ = parse_run_uri(run_ref)
    table = torch_load(artifact_dir(get_finished_run(run_id, STAGE), ARTIFACT) / TABLE_FILE, "MF item table")
    if not isinstance(table, torch.Tensor) or table.dim() != 2:
        raise SlateRLError(f"run {run_id} holds no MF item table")
    return table


def check_setting(run_ref: str, reference_validation: bool) -> None:
    """Refuse MF run `run_ref` unless it was trained with the validation requested (runs that predate the switch
    used the default one)."""
    run_id, _ = parse_run_uri(run_ref)
    logged = normal_param(get_finished_run(run_id, STAGE).data.params.get("reference_validation", "false"))
    if logged != format_param(reference_validation):
        raise SlateRLError(
            f"MF run {run_id} was trained with reference_validation = {logged}, but mf_reference_validation = "
            f"{format_param(reference_validation)} was requested; pass mf_reference_validation={logged} or another "
            "MF run"
        )


def find_or_train(cfg: TrainMFConfig, dataset_run: str, parent: StageRun | None, device: str = "cpu") -> str:
    """Run id of a FINISHED MF run for this dataset and configuration; trains one (on `device`) as a child run if
    none."""
    return on_dataset.find_or_train(STAGE, cfg, dataset_run, parent, functools.partial(run, device=device))
