"""Stage `pretrain_gems`: the GeMS slate VAE on logged sessions, with its action bounds, as one artifact; resumable
into the same run after a kill, from its last finished epoch."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from slate_rl import atomic
from slate_rl.devices import DEVICE_TAG, resolve_device
from slate_rl.errors import SlateRLError
from slate_rl.precision import LIGHTNING_PRECISION
from slate_rl.rankers.bounds import gems_action_bounds
from slate_rl.rankers.decoders import GeMSDecoder
from slate_rl.safe_load import torch_load
from slate_rl.seeds import describe
from slate_rl.stage_configs import PretrainGemsConfig
from slate_rl.stages import environment, generate_dataset, on_dataset
from slate_rl.stages.on_dataset import dataset_stage_run
from slate_rl.tracking.lineage import (
    artifact_dir,
    find_finished_run,
    get_finished_run,
    get_unfinished_run,
    parse_run_uri,
)
from slate_rl.tracking.runs import RESUME_FILE, RESUME_PATH, StageRun, stage_run

if TYPE_CHECKING:
    from mlflow.entities import Run

    from slate_rl.data.logged import LoggedSessions
    from slate_rl.rankers.data import SlateDataModule
    from slate_rl.rankers.gems import GeMS
    from slate_rl.rankers.gems_group import Best

STAGE = "pretrain_gems"
ARTIFACT = "gems"
MODEL_FILE = "gems.pt"
FORMAT = "slate-rl/gems"
RESUME_FORMAT = "slate-rl/gems-resume"
GROUP_STAGE = "pretrain_gems_group"  # the parent run of a seed group (its seeds' runs are pretrain_gems runs)
SEED_GROUP_TAG = "seed_group"  # on a seed's run trained in a group: the group's run id
log = logging.getLogger("slate_rl")


def run(
    cfg: PretrainGemsConfig,
    parent: StageRun | None = None,
    experiment_name: str | None = None,
    resume_run: str | None = None,
    device: str = "cpu",
) -> str:
    """Pretrain GeMS inside an MLflow run; returns the run id. Its artifact `gems/gems.pt` holds the VAE, the
    decoder and the action bounds (`load_decoder`), on the CPU.

    resume_run: continue that (killed or failed) run from its last finished epoch instead of starting anew; `cfg`
    must be its configuration, `resumable(resume_run)`.
    device: where Lightning trains ('cpu', 'cuda' or 'cuda:K'; tag `device`).
    """
    on = resolve_device(device)
    from slate_rl.rankers.data import SlateDataModule  # Lightning loads only to train (seconds of start-up)

    state = None
    if resume_run is not None:  # checked before the run is touched
        state = on_dataset.resume_state_for(STAGE, resume_run, cfg, load_resume_state, config_of)
    with dataset_stage_run(STAGE, cfg, parent, experiment_name, resume_run) as (mlrun, dataset_run, data):
        mlrun.set_tags({DEVICE_TAG: str(on)})
        config = on_dataset.saved_config(cfg, dataset_run)
        slates, clicks = data.tensors()
        datamodule = SlateDataModule(slates, clicks, batch_size=cfg.batch_size, shuffle=cfg.shuffle, seed=cfg.seed)
        with tempfile.TemporaryDirectory(prefix="slate-rl-gems-") as tmp:
            best = fit(new_vae(cfg, data), datamodule, cfg.epochs, mlrun, Path(tmp), config, state, on, cfg.precision)
            log_model(mlrun, cfg, dataset_run, best, slates, clicks)
        return mlrun.run_id


def new_vae(cfg: PretrainGemsConfig, data: LoggedSessions) -> GeMS:
    """The untrained GeMS of `cfg` (its seed's initialisation) for the catalogue of `data`."""
    from slate_rl.rankers.gems import GeMS

    return GeMS(
        num_items=int(data.meta["num_items"]),
        slate_size=int(data.meta["slate_size"]),
        latent_dim=cfg.latent_dim,
        lambda_kl=cfg.lambda_kl,
        lambda_click=cfg.lambda_click,
        lambda_prior=cfg.lambda_prior,
        lr=cfg.lr,
        loss_convention=cfg.loss_convention,
        seed=cfg.seed,
    )


def log_model(
    mlrun: StageRun, cfg: PretrainGemsConfig, dataset_run: str, best: GeMS, slates: torch.Tensor, clicks: torch.Tensor
) -> None:
    """Log the trained VAE with its decoder and action bounds (from the logged sessions `slates`, `clicks`) as the
    artifact `gems/gems.pt` (`load_decoder`), and the bounds' summary metrics."""
    bounds = gems_action_bounds(best, slates, clicks, num_sessions=cfg.bound_sessions)
    decoder = GeMSDecoder.from_vae(best, bounds)
    payload = {
        "format": FORMAT,
        "env": cfg.env,
        "env_spec": environment.spec_of(cfg).as_dict(),
        "dataset_run": dataset_run,
        "hparams": dict(best.hparams),
        "vae": best.state_dict(),
        "decoder": decoder.save_payload(),
    }
    with tempfile.TemporaryDirectory(prefix="slate-rl-gems-") as tmp:
        folder = Path(tmp) / ARTIFACT
        folder.mkdir()
        atomic.torch_save(payload, folder / MODEL_FILE)
        mlrun.log_artifacts(folder, ARTIFACT)
    mlrun.log_metrics(
        {
            "bounds/mean_half_range": float(bounds.scale.mean()),
            "bounds/mean_center_abs": float(bounds.center.abs().mean()),
        }
    )
    log.info("%s: done; decoder with bounds in runs:/%s/%s/%s", STAGE, mlrun.run_id, ARTIFACT, MODEL_FILE)


@dataclasses.dataclass
class SeedRuns:
    """The runs of a seed group: its parent run and each seed's pretrain_gems run, by seed."""

    group_run: str
    runs: dict[int, str]


def run_seeds(
    cfg: PretrainGemsConfig,
    seeds: list[int],
    parent: StageRun | None = None,
    experiment_name: str | None = None,
    device: str = "cpu",
) -> SeedRuns:
    """Pretrain `cfg` for each of `seeds` (its own seed is replaced) as one stacked training (`GeMSGroup`: one pass
    over the data per epoch, every batch through all seeds' models at once), under a parent run of stage
    `pretrain_gems_group` that records them (params seeds_resolved, env, preset; tags run.<seed>; the dataset they
    share is its upstream). Each seed has its child run, holding what a single-seed run given that dataset holds
    (params, per-epoch metrics at the same steps, `checkpoint/`, `gems/gems.pt`, lineage key: `find_or_pretrain`
    finds it), except the resume state: a group is not resumable, and an error fails every seed's run."""
    from slate_rl.rankers.data import split_sessions
    from slate_rl.rankers.gems_group import GeMSGroup

    on = resolve_device(device)
    tags = {"env": cfg.env, "preset": cfg.preset, "seeds": describe(seeds), DEVICE_TAG: str(on)}
    name = f"{STAGE}/{cfg.env}/seeds {describe(seeds)}"
    with stage_run(GROUP_STAGE, name, tags, parent=parent, experiment_name=experiment_name) as group_run:
        group_run.log_params({"env": cfg.env, "preset": cfg.preset, "seeds_resolved": describe(seeds)})
        dataset_run, data = generate_dataset.resolve_dataset(cfg, group_run)
        dataset = f"runs:/{dataset_run}/{generate_dataset.ARTIFACT}"
        group_run.set_tags({"upstream.dataset": dataset})
        configs = [dataclasses.replace(cfg, seed=seed, dataset=dataset) for seed in seeds]
        with contextlib.ExitStack() as members:
            runs = [members.enter_context(dataset_stage_run(STAGE, c, group_run, None, data=data))[0] for c in configs]
            for seed, mlrun in zip(seeds, runs, strict=True):
                mlrun.set_tags({DEVICE_TAG: str(on), SEED_GROUP_TAG: group_run.run_id})
                group_run.set_tags({f"run.{seed}": f"runs:/{mlrun.run_id}"})
            vaes = [new_vae(c, data) for c in configs]
            for vae, mlrun in zip(vaes, runs, strict=True):
                mlrun.log_params(dict(vae.hparams))  # as Lightning's logger logs them in a single-seed run
            slates, clicks = data.tensors()
            train, val = (part.to(on) for part in split_sessions(slates, clicks))

            def on_epoch(epoch: int, step: int, metrics: list[dict[str, float]]) -> None:
                for mlrun, values in zip(runs, metrics, strict=True):
                    mlrun.log_metrics(values, step=step)
                    mlrun.flush()
                log.info("%s: epoch %d/%d of %d seeds done", GROUP_STAGE, epoch + 1, cfg.epochs, len(seeds))

            group = GeMSGroup(vaes, on, cfg.precision)
            best = group.fit(train, val, cfg.batch_size, cfg.shuffle, cfg.epochs, on_epoch)
            for c, mlrun, chosen in zip(configs, runs, best, strict=True):
                log_checkpoint(mlrun, chosen)
                log_model(mlrun, c, dataset_run, chosen.model, slates, clicks)
        return SeedRuns(group_run.run_id, {seed: mlrun.run_id for seed, mlrun in zip(seeds, runs, strict=True)})


def log_checkpoint(mlrun: StageRun, best: Best) -> None:
    """Log a group seed's best-validation model as the Lightning checkpoint `checkpoint/best.ckpt` a single-seed
    run logs (weights, hyperparameters, epoch and step; `GeMS.load_from_checkpoint` reads it)."""
    import pytorch_lightning as pl

    checkpoint = {
        "epoch": best.epoch,
        "global_step": best.step,
        "pytorch-lightning_version": pl.__version__,
        "state_dict": best.model.state_dict(),
        "hyper_parameters": dict(best.model.hparams),
    }
    with tempfile.TemporaryDirectory() as tmp:
        mlrun.log_artifact(atomic.torch_save(checkpoint, Path(tmp) / "best.ckpt"), "checkpoint")


def fit(
    vae: GeMS,
    datamodule: SlateDataModule,
    epochs: int,
    mlrun: StageRun,
    folder: Path,
    config: dict[str, Any],
    state: dict[str, Any] | None = None,
    device: torch.device | None = None,
    precision: str = "fp32",
) -> GeMS:
    """Train with Lightning on `device` (default: the CPU; metrics per epoch into the run, the resume state after
    every epoch) and return the best-validation model, on the CPU; with `state` (a resume state), continue from
    where it was taken. precision 'bf16': forward passes and losses under bfloat16 autocast (Lightning's
    'bf16-mixed'; parameters and optimiser state stay fp32)."""
    import pytorch_lightning as pl

    from slate_rl.rankers.gems import GeMS
    from slate_rl.tracking.lightning import BestCheckpoint, EpochState, interruptible_fit, run_logger, trainer_options

    def publish(epoch_state: dict[str, Any]) -> None:
        resume = {"format": RESUME_FORMAT, "config": config, **epoch_state}
        with tempfile.TemporaryDirectory() as tmp:
            mlrun.replace_artifact(atomic.torch_save(resume, Path(tmp) / RESUME_FILE), RESUME_PATH)
        log.info("%s: resume state saved after epoch %d", STAGE, epoch_state["epoch"])

    best = BestCheckpoint(dirpath=folder / "checkpoints", filename="best", monitor="val/loss", mode="min", save_top_k=1)
    saver = EpochState(folder, best, publish)
    options = trainer_options(STAGE)
    trainer = pl.Trainer(
        max_epochs=int(epochs),
        logger=run_logger(mlrun, resumed=state is not None),
        **lightning_device(device),
        precision=LIGHTNING_PRECISION[precision],
        num_sanity_val_steps=0,
        log_every_n_steps=50,
        callbacks=[best, saver, *options.pop("callbacks")],
        **options,
    )
    if state is not None:
        log.info("%s: resuming run %s after epoch %d", STAGE, mlrun.run_id, state["epoch"])
    interruptible_fit(
        trainer,
        vae,
        datamodule=datamodule,
        ckpt_path=saver.unpack(state) if state is not None else None,
        weights_only=True,
    )
    if not best.best_model_path:
        raise SlateRLError("GeMS training produced no checkpoint (no validation epoch ran)")
    mlrun.log_artifact(best.best_model_path, "checkpoint")
    checkpoint = torch_load(best.best_model_path, "GeMS checkpoint")
    model = GeMS(**checkpoint["hyper_parameters"])
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()


def lightning_device(device: torch.device | None) -> dict[str, Any]:
    """Lightning's `accelerator` and `devices` for a torch device (CPU when None)."""
    if device is None or device.type == "cpu":
        return {"accelerator": "cpu", "devices": 1}
    return {
        "accelerator": "gpu",
        "devices": [device.index if device.index is not None else torch.cuda.current_device()],
    }


def load_resume_state(run: Run) -> dict[str, Any]:
    """The resume state of a pretrain_gems run (saved after each of its epochs); a seed's run of a group has none."""
    group = run.data.tags.get(SEED_GROUP_TAG)
    if group:
        raise SlateRLError(
            f"run {run.info.run_id} was trained in the seed group {group} (pretrain-gems --seeds), which keeps no "
            f"resume state; train its seed again (pretrain-gems --seed {run.data.tags.get('seed')} or --seeds)"
        )
    state = on_dataset.load_resume_state(run, RESUME_FORMAT, "after each epoch")
    for key in ("checkpoint", "best"):  # Lightning's files, kept as bytes: refused here, before the run is touched
        if state[key]:
            torch_load(state[key], f"Lightning checkpoint {key!r} inside the resume state of run {run.info.run_id}")
    return state


def config_of(state: dict[str, Any]) -> PretrainGemsConfig:
    """The configuration a resume state was saved with; fields added since it was saved take their defaults."""
    return on_dataset.config_of(state, PretrainGemsConfig)


def resumable(run_id: str) -> PretrainGemsConfig:
    """The configuration of a pretrain_gems run that can be resumed (it exists, did not finish, and saved a resume
    state after at least one epoch)."""
    return config_of(load_resume_state(get_unfinished_run(run_id, STAGE)))


def load_payload(run_ref: str) -> dict[str, Any]:
    """The `gems.pt` payload of a FINISHED pretrain_gems run ('runs:/<id>[/gems]' or a run id)."""
    run_id, _ = parse_run_uri(run_ref)
    path = artifact_dir(get_finished_run(run_id, STAGE), ARTIFACT) / MODEL_FILE
    payload = torch_load(path, "GeMS model")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise SlateRLError(f"{path} is not a slate-rl GeMS model")
    return payload


def load_decoder(run_ref: str, expected_latent_dim: int | None = None) -> GeMSDecoder:
    """The frozen GeMS decoder of a run with its stored action bounds, in one call."""
    payload = load_payload(run_ref)
    latent = int(payload["hparams"]["latent_dim"])
    if expected_latent_dim is not None and latent != int(expected_latent_dim):
        raise SlateRLError(
            f"GeMS run {run_ref} has latent_dim {latent}, but latent_dim {expected_latent_dim} was requested"
        )
    return GeMSDecoder.from_payload(payload["decoder"])


def find_or_pretrain(cfg: PretrainGemsConfig, dataset_run: str, parent: StageRun | None, device: str = "cpu") -> str:
    """Run id of a FINISHED GeMS run for this dataset and configuration; pretrains one (on `device`) as a child run
    if none."""
    return on_dataset.find_or_train(STAGE, cfg, dataset_run, parent, functools.partial(run, device=device))


def find_or_pretrain_seeds(
    cfg: PretrainGemsConfig, seeds: list[int], dataset_run: str, parent: StageRun | None, device: str = "cpu"
) -> dict[int, str]:
    """`find_or_pretrain` for each of `seeds` (`cfg`'s seed replaced), by seed: the seeds without a finished run
    are pretrained together (`run_seeds`, a group under `parent`; a single missing seed as one run)."""
    explicit = dataclasses.replace(cfg, dataset=f"runs:/{dataset_run}/{generate_dataset.ARTIFACT}")
    found: dict[int, str] = {}
    for seed in seeds:
        keys = on_dataset.lookup_keys(STAGE, dataclasses.replace(cfg, seed=seed), dataset_run)
        existing = find_finished_run(STAGE, keys)
        if existing is not None:
            log.info("%s: reusing finished run %s for seed %d", STAGE, existing.info.run_id, seed)
            found[seed] = existing.info.run_id
    missing = [seed for seed in seeds if seed not in found]
    if len(missing) == 1:
        found[missing[0]] = run(dataclasses.replace(explicit, seed=missing[0]), parent=parent, device=device)
    elif missing:
        log.info("%s: pretraining seeds %s together", STAGE, describe(missing))
        found.update(run_seeds(explicit, missing, parent=parent, device=device).runs)
    return {seed: found[seed] for seed in seeds}
