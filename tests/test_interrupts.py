"""A stage stopped by SIGTERM (kill, timeout, a batch scheduler) or Ctrl-C ends its run KILLED, not FAILED or left
RUNNING, with a non-zero exit status and the command that continues it; checked on real processes, for a stage with
its own training loop and for one trained by Lightning (which turns an interruption into an exit of its own)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import pytorch_lightning as pl
import torch
from mlflow.tracking import MlflowClient
from pytorch_lightning.utilities.exceptions import SIGTERMException
from torch.utils.data import DataLoader, TensorDataset

from slate_rl.tracking.lightning import interruptible_fit
from slate_rl.tracking.runs import has_resume_state

STAGES = {
    "train_online": ["--method", "reinforce_softmax", "--episodes", "100000", "--register", "false"],
    "pretrain_gems": ["--epochs", "100"],
    "train_mf": ["--max-steps", "10000000", "--patience", "1000", "--eval-every", "20", "--save-every", "200"],
}


@pytest.mark.parametrize(
    "stage, sig",
    [
        ("train_online", signal.SIGTERM),
        ("pretrain_gems", signal.SIGTERM),
        ("pretrain_gems", signal.SIGINT),
        ("train_mf", signal.SIGTERM),
    ],
    ids=["train_online-SIGTERM", "pretrain_gems-SIGTERM", "pretrain_gems-Ctrl-C", "train_mf-SIGTERM"],
)
def test_an_interrupted_stage_marks_its_run_killed_and_says_how_to_resume(tracking_store, tmp_path, stage, sig):
    client = MlflowClient()
    command = stage.replace("_", "-")
    args = [command, "--env", "focused_mix", "--preset", "quick", *STAGES[stage]]
    process = subprocess.Popen(
        [sys.executable, "-c", "from slate_rl.cli import main; main()", *args],
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"},  # two threads beside the other tests' processes crawl
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 180
    while not _training(client, stage) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.5)
    process.send_signal(sig)
    output = process.communicate(timeout=60)[0]
    assert process.returncode != 0, output
    (run,) = client.search_runs(["0"], f"tags.stage = '{stage}'")
    assert run.info.status == "KILLED", (process.returncode, output)
    assert f"continue it with: slate-rl {command} --resume {run.info.run_id}" in output


def _training(client: MlflowClient, stage: str) -> bool:
    """Whether the stage's run is inside its training loop (it has logged a metric or saved a resume state)."""
    runs = client.search_runs(["0"], f"tags.stage = '{stage}' and attributes.status = 'RUNNING'")
    return any(run.data.metrics or has_resume_state(run.info.run_id) for run in runs)


class _Interrupt(pl.Callback):
    """Raises `error` at the first training batch, as Lightning's loop does on SIGTERM or Python does on Ctrl-C."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def on_train_batch_start(self, *args: object) -> None:
        raise self.error


class _Regression(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize("error", [SIGTERMException(), KeyboardInterrupt()], ids=["SIGTERM", "Ctrl-C"])
def test_lightning_fit_stopped_by_an_interruption_raises_keyboard_interrupt(error, tmp_path):
    """Lightning turns these into SystemExit (status 0 for SIGTERM, 1 for Ctrl-C); `interruptible_fit` gives them
    back."""
    data = DataLoader(TensorDataset(torch.zeros(8, 2), torch.zeros(8, 1)), batch_size=4)
    trainer = pl.Trainer(
        max_epochs=1, callbacks=[_Interrupt(error)], default_root_dir=tmp_path, logger=False, enable_progress_bar=False
    )
    sigint = signal.getsignal(signal.SIGINT)  # Lightning ignores Ctrl-C while it shuts down, and leaves it so
    try:
        with pytest.raises(SystemExit):
            trainer.fit(_Regression(), data)
        with pytest.raises(KeyboardInterrupt):
            interruptible_fit(trainer, _Regression(), data)
    finally:
        signal.signal(signal.SIGINT, sigint)
