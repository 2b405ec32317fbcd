"""Stage `pretrain_gems`: the GeMS slate VAE on logged sessions, with its action bounds, as one artifact."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import torch

from slate_rl import atomic
from slate_rl.errors import SlateRLError
from slate_rl.rankers.bounds import gems_action_bounds
from slate_rl.rankers.decoders import GeMSDecoder
from slate_rl.stage_configs import PretrainGemsConfig
from slate_rl.stages import environment, on_dataset
from slate_rl.stages.on_dataset import dataset_stage_run
from slate_rl.tracking.lineage import artifact_dir, get_finished_run, parse_run_uri
from slate_rl.tracking.runs import StageRun

if TYPE_CHECKING:
    from slate_rl.rankers.data import SlateDataModule
    from slate_rl.rankers.gems import GeMS

STAGE = "pretrain_gems"
ARTIFACT = "gems"
MODEL_FILE = "gems.pt"
FORMAT = "slate-rl/gems"
log = logging.getLogger("slate_rl")


def run(cfg: PretrainGemsConfig, parent: Optional[StageRun] = None, experiment_name: Optional[str] = None) -> str:
    """Pretrain GeMS inside an MLflow run; returns the run id. Its artifact `gems/gems.pt` holds the VAE, the
    decoder and the action bounds (`load_decoder`)."""
    from slate_rl.rankers.data import SlateDataModule  # Lightning loads only to train (seconds of start-up)
    from slate_rl.rankers.gems import GeMS

    with dataset_stage_run(STAGE, cfg, parent, experiment_name) as (mlrun, dataset_run, data):
        slates, clicks = data.tensors()
        vae = GeMS(num_items=int(data.meta["num_items"]), slate_size=int(data.meta["slate_size"]),
                   latent_dim=cfg.latent_dim, lambda_kl=cfg.lambda_kl, lambda_click=cfg.lambda_click,
                   lambda_prior=cfg.lambda_prior, lr=cfg.lr, loss_convention=cfg.loss_convention, seed=cfg.seed)
        datamodule = SlateDataModule(slates, clicks, batch_size=cfg.batch_size, shuffle=cfg.shuffle, seed=cfg.seed)
        with tempfile.TemporaryDirectory(prefix="slate-rl-gems-") as tmp:
            best = fit(vae, datamodule, cfg.epochs, mlrun, Path(tmp) / "checkpoints")
            bounds = gems_action_bounds(best, slates, clicks, num_sessions=cfg.bound_sessions)
            decoder = GeMSDecoder.from_vae(best, bounds)
            payload = {"format": FORMAT, "env": cfg.env, "env_spec": environment.spec_of(cfg).as_dict(),
                       "dataset_run": dataset_run,
                       "hparams": dict(best.hparams), "vae": best.state_dict(), "decoder": decoder.save_payload()}
            folder = Path(tmp) / ARTIFACT
            folder.mkdir()
            atomic.torch_save(payload, folder / MODEL_FILE)
            mlrun.log_artifacts(folder, ARTIFACT)
        mlrun.log_metrics({"bounds/mean_half_range": float(bounds.scale.mean()),
                           "bounds/mean_center_abs": float(bounds.center.abs().mean())})
        log.info("%s: done; decoder with bounds in runs:/%s/%s/%s", STAGE, mlrun.run_id, ARTIFACT, MODEL_FILE)
        return mlrun.run_id


def fit(vae: GeMS, datamodule: SlateDataModule, epochs: int, mlrun: StageRun, checkpoints: Path) -> GeMS:
    """Train with Lightning (metrics per epoch into the run) and return the best-validation model."""
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint

    from slate_rl.rankers.gems import GeMS
    from slate_rl.tracking.lightning import run_logger, trainer_options

    best = ModelCheckpoint(dirpath=checkpoints, filename="best", monitor="val/loss", mode="min", save_top_k=1)
    options = trainer_options(STAGE)
    trainer = pl.Trainer(max_epochs=int(epochs), logger=run_logger(mlrun), accelerator="auto", devices=1,
                         num_sanity_val_steps=0, log_every_n_steps=50, callbacks=[best, *options.pop("callbacks")],
                         **options)
    trainer.fit(vae, datamodule=datamodule)
    if not best.best_model_path:
        raise SlateRLError("GeMS training produced no checkpoint (no validation epoch ran)")
    mlrun.log_artifact(best.best_model_path, "checkpoint")
    state = torch.load(best.best_model_path, map_location="cpu", weights_only=False)
    model = GeMS(**state["hyper_parameters"])
    model.load_state_dict(state["state_dict"])
    return model.eval()


def load_payload(run_ref: str) -> dict[str, Any]:
    """The `gems.pt` payload of a FINISHED pretrain_gems run ('runs:/<id>[/gems]' or a run id)."""
    run_id, _ = parse_run_uri(run_ref)
    path = artifact_dir(get_finished_run(run_id, STAGE), ARTIFACT) / MODEL_FILE
    payload = torch.load(path, map_location="cpu", weights_only=False)
    if payload.get("format") != FORMAT:
        raise SlateRLError(f"{path} is not a slate-rl GeMS model")
    return payload


def load_decoder(run_ref: str, expected_latent_dim: Optional[int] = None) -> GeMSDecoder:
    """The frozen GeMS decoder of a run with its stored action bounds, in one call."""
    payload = load_payload(run_ref)
    latent = int(payload["hparams"]["latent_dim"])
    if expected_latent_dim is not None and latent != int(expected_latent_dim):
        raise SlateRLError(f"GeMS run {run_ref} has latent_dim {latent}, but latent_dim {expected_latent_dim} "
                           "was requested")
    return GeMSDecoder.from_payload(payload["decoder"])


def find_or_pretrain(cfg: PretrainGemsConfig, dataset_run: str, parent: Optional[StageRun]) -> str:
    """Run id of a FINISHED GeMS run for this dataset and configuration; pretrains one as a child run if none."""
    return on_dataset.find_or_train(STAGE, cfg, dataset_run, parent, run)
