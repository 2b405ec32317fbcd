"""PyTorch Lightning inside a stage's run: a logger that writes into the run without ending it, the state a killed
fit resumes from, and progress that prints log lines when there is no terminal (Lightning's own bar never reaches a
nohup log)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import mlflow
import pytorch_lightning as pl
from pytorch_lightning.callbacks import Checkpoint, ModelCheckpoint
from pytorch_lightning.loggers import MLFlowLogger
from pytorch_lightning.utilities.exceptions import SIGTERMException

from slate_rl.progress import interactive
from slate_rl.tracking.runs import StageRun

log = logging.getLogger("slate_rl")


class _RunLogger(MLFlowLogger):
    """MLFlowLogger attached to an existing run; `finalize` does not mark the run FINISHED (the stage does, once
    its outputs are logged), so that no later stage can see a finished run without its outputs. A (metric, step)
    point is logged once: Lightning's second `epoch` at the step of an epoch's end, and the points in `logged`
    (already in the run), are left out."""

    def __init__(self, logged: set[tuple[str, int]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.logged = logged

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        fresh = {k: v for k, v in metrics.items() if (k, step or 0) not in self.logged}
        if fresh:
            super().log_metrics(fresh, step)
            self.logged.update((k, step or 0) for k in fresh)

    def finalize(self, status: str = "success") -> None:
        pass


def run_logger(run: StageRun, resumed: bool = False) -> MLFlowLogger:
    """A Lightning logger writing into `run`; for a resumed run, the epochs it re-trains after its last saved state
    log only the points the run does not have yet (no metric step twice)."""
    logged: set[tuple[str, int]] = set()
    if resumed:
        keys = run.client.get_run(run.run_id).data.metrics
        logged = {(m.key, m.step) for key in keys for m in run.client.get_metric_history(run.run_id, key)}
    return _RunLogger(logged, run_id=run.run_id, tracking_uri=mlflow.get_tracking_uri())


class BestCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose record of the best checkpoint survives a move: a resumed fit keeps its checkpoints in
    a new folder, and Lightning would otherwise forget the best score there (and take any epoch as the best)."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        def moved(path: str) -> str:
            return os.path.join(self.dirpath, os.path.basename(path)) if path and self.dirpath else path

        super().load_state_dict(
            {
                **state_dict,
                "dirpath": self.dirpath,
                "best_model_path": moved(state_dict["best_model_path"]),
                "kth_best_model_path": moved(state_dict["kth_best_model_path"]),
                "last_model_path": moved(state_dict["last_model_path"]),
                "best_k_models": {moved(path): score for path, score in state_dict["best_k_models"].items()},
            }
        )


class EpochState(Checkpoint):
    """What a fit needs to continue after its last finished epoch: Lightning's checkpoint (weights, optimiser, loop
    counters, callback states and what the module and datamodule keep in it, such as their random generators) and
    the best checkpoint's file, as one dict of bytes.

    Taken at the end of every epoch, it is handed to `publish` at the start of the next one (or at the end of
    training), once Lightning has logged the epoch's metrics: a fit resumed from it never lacks a logged epoch.
    """

    def __init__(self, folder: Path, best: ModelCheckpoint, publish: Callable[[dict[str, Any]], None]) -> None:
        self.folder, self.best, self.publish = folder, best, publish
        self._pending: dict[str, Any] | None = None

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        path = self.folder / "epoch_state.ckpt"
        trainer.save_checkpoint(path)
        best = Path(self.best.best_model_path) if self.best.best_model_path else None
        self._pending = {
            "epoch": trainer.current_epoch + 1,
            "checkpoint": path.read_bytes(),
            "best_name": best.name if best else "",
            "best": best.read_bytes() if best else None,  # not b"": torch pickles empty bytes as a call to bytes()
        }

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._publish()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._publish()

    def _publish(self) -> None:
        if self._pending is not None:
            self.publish(self._pending)
            self._pending = None

    def unpack(self, state: dict[str, Any]) -> Path:
        """Write a published state's files back (the best one into the best checkpoint's folder); returns the
        checkpoint to pass to `Trainer.fit(ckpt_path=...)`."""
        if state["best_name"]:
            folder = Path(self.best.dirpath)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / state["best_name"]).write_bytes(state["best"])
        path = self.folder / "resumed.ckpt"
        path.write_bytes(state["checkpoint"])
        return path


class LogLinesProgress(pl.Callback):
    """One log line per epoch (with the epoch's logged metrics) and one every `interval` seconds within an epoch."""

    def __init__(self, name: str, interval: float = 30.0) -> None:
        self.name, self.interval = name, interval

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = self._last = time.monotonic()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx) -> None:
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            total = trainer.num_training_batches
            rate = (batch_idx + 1) / max(now - self._start, 1e-9)
            log.info(
                "%s: epoch %d/%d, batch %d/%s, %.1f batches/s",
                self.name,
                trainer.current_epoch + 1,
                trainer.max_epochs,
                batch_idx + 1,
                total,
                rate,
            )

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if "/" in k}
        text = ", ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items()))
        log.info(
            "%s: epoch %d/%d done (%.0f s): %s",
            self.name,
            trainer.current_epoch + 1,
            trainer.max_epochs,
            time.monotonic() - getattr(self, "_start", time.monotonic()),
            text,
        )


def interruptible_fit(trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
    """`trainer.fit(*args, **kwargs)`, where an interruption stays one. Lightning ends a fit stopped by Ctrl-C with
    exit status 1, and one stopped by SIGTERM (without the CLI's handler) with status 0: the run would be marked
    FAILED without its resume command, or a pipeline would count the job as finished. Both come out as
    KeyboardInterrupt, so the run is marked KILLED and says how to continue."""
    try:
        trainer.fit(*args, **kwargs)
    except SIGTERMException:
        raise KeyboardInterrupt("SIGTERM") from None
    except SystemExit as exc:
        if isinstance(exc.__context__, KeyboardInterrupt):  # Lightning's exit after its graceful shutdown
            raise KeyboardInterrupt(*exc.__context__.args) from None
        raise


def trainer_options(name: str) -> dict:
    """Trainer arguments shared by the stages: rich bar on a terminal, log lines otherwise, no model summary."""
    from pytorch_lightning.callbacks import RichProgressBar

    return {
        "enable_progress_bar": interactive(),
        "enable_model_summary": False,
        "callbacks": [RichProgressBar()] if interactive() else [LogLinesProgress(name)],
    }
