"""PyTorch Lightning inside a stage's run: a logger that writes into the run without ending it, and progress that
prints log lines when there is no terminal (Lightning's own bar never reaches a nohup log)."""

from __future__ import annotations

import logging
import time

import mlflow
import pytorch_lightning as pl
from pytorch_lightning.loggers import MLFlowLogger

from slate_rl.progress import interactive
from slate_rl.tracking.runs import StageRun

log = logging.getLogger("slate_rl")


class _RunLogger(MLFlowLogger):
    """MLFlowLogger attached to an existing run; `finalize` does not mark the run FINISHED (the stage does, once
    its outputs are logged), so that no later stage can see a finished run without its outputs."""

    def finalize(self, status: str = "success") -> None:
        pass


def run_logger(run: StageRun) -> MLFlowLogger:
    return _RunLogger(run_id=run.run_id, tracking_uri=mlflow.get_tracking_uri())


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
            log.info("%s: epoch %d/%d, batch %d/%s, %.1f batches/s", self.name, trainer.current_epoch + 1,
                     trainer.max_epochs, batch_idx + 1, total, rate)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if "/" in k}
        text = ", ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items()))
        log.info("%s: epoch %d/%d done (%.0f s): %s", self.name, trainer.current_epoch + 1, trainer.max_epochs,
                 time.monotonic() - getattr(self, "_start", time.monotonic()), text)


def trainer_options(name: str) -> dict:
    """Trainer arguments shared by the stages: rich bar on a terminal, log lines otherwise, no model summary."""
    from pytorch_lightning.callbacks import RichProgressBar

    return {"enable_progress_bar": interactive(), "enable_model_summary": False,
            "callbacks": [RichProgressBar()] if interactive() else [LogLinesProgress(name)]}
