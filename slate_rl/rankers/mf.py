"""BPR matrix factorisation item embeddings, sessions as users.

Positive pairs are (session, clicked item), one per click. Training: one uniform negative per positive (the positive
itself can be drawn, as in the reference), loss mean -log(sigmoid(s+ - s-) + 1e-7), Adam, shuffled batches.

Held-out evaluation (a fix of the reference, which trained on its validation data and re-keyed validation sessions
onto training users): validation sessions are still the first `val_fraction` of sessions, with their own user rows;
a random `holdout_fraction` of their clicks is held out and the rest joins the training pairs, so that those users
have learned vectors. The validation loss is the same pairwise BPR loss on the held-out clicks, with negatives drawn
once (the same for every evaluation, so evaluations are comparable), and no optimiser step.

`reference_validation=True` restores the reference: training and validation sessions are each re-keyed from user
id 0 (validation sessions share the user rows of the first training sessions), and each evaluation is a pass over
all validation clicks in batches whose loss is the BPR loss of every user of the batch against every (positive,
negative) pair of the batch, with an optimiser step per batch: the model also trains on that objective.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from slate_rl.errors import SlateRLError
from slate_rl.rankers.checks import check_logged

EVAL_ROWS = 65536  # held-out pairs scored at once


class BPRMatrixFactorization(nn.Module):
    """User and item tables (Xavier-uniform, gain 1, drawn from a generator seeded with `seed`); score = dot."""

    def __init__(self, num_users: int, num_items: int = 1000, dim: int = 20, seed: int = 0) -> None:
        super().__init__()
        if min(int(num_users), int(num_items), int(dim)) < 1:
            raise SlateRLError(f"num_users, num_items and dim must be >= 1 (got {num_users}, {num_items}, {dim})")
        generator = torch.Generator().manual_seed(int(seed))
        self.users = nn.Embedding(int(num_users), int(dim), _weight=torch.empty(int(num_users), int(dim)))
        self.items = nn.Embedding(int(num_items), int(dim), _weight=torch.empty(int(num_items), int(dim)))
        nn.init.xavier_uniform_(self.users.weight, gain=1.0, generator=generator)
        nn.init.xavier_uniform_(self.items.weight, gain=1.0, generator=generator)

    def bpr_loss(self, users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        """Mean of -log(sigmoid(<u, e+> - <u, e->) + 1e-7) over the pairs."""
        u = self.users(users)
        margin = (u * (self.items(positives) - self.items(negatives))).sum(dim=1)
        return -(torch.sigmoid(margin) + 1e-7).log().mean()

    def all_pairs_bpr_loss(self, users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        """The reference's validation objective: the BPR loss of every user of the batch against every (positive,
        negative) pair of the batch, averaged over the B x B combinations."""
        margin = self.users(users) @ (self.items(positives) - self.items(negatives)).T
        return -(torch.sigmoid(margin) + 1e-7).log().mean()


def click_pairs(slates: torch.Tensor, clicks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(session ids, item ids), int64, one pair per click of the logged sessions (n_sessions, T, R)."""
    check_logged(slates, clicks)
    session, step, slot = clicks.nonzero(as_tuple=True)
    return session, slates[session, step, slot].long()


@dataclass
class MFResult:
    """Outcome of `train_mf`: the best item table and the evaluation history."""

    item_table: torch.Tensor  # (N, D) float32, at the best held-out loss
    best_val_loss: float
    evaluations: list[tuple[int, float]] = field(default_factory=list)  # (training steps done, held-out loss)
    steps: int = 0
    stop_reason: str = ""  # "early_stopping", "max_steps" or "max_seconds"


Pairs = tuple[torch.Tensor, torch.Tensor]


def split_click_pairs(
    sessions: torch.Tensor,
    items: torch.Tensor,
    n_val_sessions: int,
    holdout_fraction: float,
    generator: torch.Generator,
) -> tuple[Pairs, Pairs]:
    """(train pairs, held-out pairs): the held-out pairs are a random `holdout_fraction` of the clicks of the
    validation sessions (ids < n_val_sessions); everything else is training data."""
    draw = torch.rand(sessions.shape[0], generator=generator, device=generator.device).to(sessions.device)
    held_out = (sessions < n_val_sessions) & (draw < holdout_fraction)
    return (sessions[~held_out], items[~held_out]), (sessions[held_out], items[held_out])


def rekeyed_click_pairs(sessions: torch.Tensor, items: torch.Tensor, n_val_sessions: int) -> tuple[Pairs, Pairs]:
    """The reference's split: (train pairs, validation pairs) by session, each with its sessions re-keyed from user
    id 0 (so validation session i has the user row of training session n_val_sessions + i)."""
    val = sessions < n_val_sessions
    return (sessions[~val] - n_val_sessions, items[~val]), (sessions[val], items[val])


def _reference_validation_loss(
    model: BPRMatrixFactorization,
    optimizer: torch.optim.Optimizer,
    pairs: Pairs,
    batch_size: int,
    generator: torch.Generator,
) -> float:
    """One reference validation pass: the all-pairs loss of each batch of validation clicks, in order, with a fresh
    uniform negative per click, and an optimiser step on it; returns the mean loss over the clicks."""
    users, positives = pairs
    total = 0.0
    for start in range(0, users.shape[0], batch_size):
        rows = slice(start, start + batch_size)
        negatives = torch.randint(
            model.items.num_embeddings, positives[rows].shape, generator=generator, device=positives.device
        )
        loss = model.all_pairs_bpr_loss(users[rows], positives[rows], negatives)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += loss.item() * users[rows].shape[0]
    return total / users.shape[0]


@torch.no_grad()
def _held_out_loss(
    model: BPRMatrixFactorization, users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor
) -> float:
    total = 0.0
    for start in range(0, users.shape[0], EVAL_ROWS):
        rows = slice(start, start + EVAL_ROWS)
        total += float(model.bpr_loss(users[rows], positives[rows], negatives[rows])) * users[rows].shape[0]
    return total / users.shape[0]


def check_resume_device(state: dict[str, Any], device: torch.device) -> None:
    """Refuse to continue a training state saved on another kind of device (its random streams would differ)."""
    if state["device"] != device.type:
        raise SlateRLError(
            f"this MF training was saved on {state['device']}; resume it there (--device {state['device']})"
        )


def _restore(
    state: dict[str, Any],
    model: BPRMatrixFactorization,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    result: MFResult,
) -> tuple[int, bool, float]:
    """Load a state saved by `train_mf` into its model, optimiser, generator and result; returns (evaluations
    without improvement, whether the last step was evaluated, seconds trained)."""
    check_resume_device(state, generator.device)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    generator.set_state(state["generator"])
    result.steps, result.best_val_loss = int(state["steps"]), float(state["best_val_loss"])
    result.item_table = state["best_table"].to(model.items.weight.device)
    result.evaluations = [(int(steps), float(loss)) for steps, loss in state["evaluations"]]
    return int(state["stale"]), bool(state["evaluated"]), float(state["seconds"])


def train_mf(
    slates: torch.Tensor,
    clicks: torch.Tensor,
    *,
    num_items: int = 1000,
    dim: int = 20,
    lr: float = 1e-4,
    batch_size: int = 256,
    eval_every: int = 1000,
    patience: int = 3,
    val_fraction: float = 0.1,
    holdout_fraction: float = 0.5,
    max_steps: int | None = None,
    max_seconds: float | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    on_evaluation: Callable[[int, float], None] | None = None,
    reference_validation: bool = False,
    save_every: int = 0,
    on_save: Callable[[dict[str, Any]], None] | None = None,
    resume: dict[str, Any] | None = None,
) -> MFResult:
    """Train BPR MF on logged sessions (n_sessions, T, R) and return the item table with the best held-out loss.

    Evaluates after training batch b of every epoch with b % eval_every == 0 (as the reference: batch 0 of each
    epoch included) and once more at the end if the last step was not evaluated; stops after `patience`
    evaluations without improvement, or at `max_steps` training steps / `max_seconds` of wall time.
    `on_evaluation(steps, held_out_loss)` is called after each evaluation (to log it while training runs).
    `reference_validation`: the reference's split and validation pass (module docstring; `holdout_fraction` unused).
    `on_save(state)` is called every `save_every` training steps (0: never) with the state that `resume` continues
    from: resumed on the same data with the same arguments, training ends as one that was never stopped.
    """
    check_logged(slates, clicks)
    n_sessions = slates.shape[0]
    n_val = int(n_sessions * float(val_fraction))
    if not 0 < n_val < n_sessions or not 0.0 < float(holdout_fraction) < 1.0:
        raise SlateRLError(
            f"val_fraction={val_fraction} and holdout_fraction={holdout_fraction} must leave "
            f"validation and training sessions among the {n_sessions} sessions"
        )
    for name, value in (("batch_size", batch_size), ("eval_every", eval_every), ("patience", patience)):
        if int(value) < 1:
            raise SlateRLError(f"{name} must be >= 1 (got {value})")
    if not float(lr) > 0.0:
        raise SlateRLError(f"lr must be > 0 (got {lr})")
    device = torch.device(device)
    generator = torch.Generator(device=device).manual_seed(int(seed))
    sessions, items = click_pairs(slates.to(device), clicks.to(device))
    if int(items.max()) >= num_items:
        raise SlateRLError(f"item id {int(items.max())} is out of range for num_items={num_items}")
    if reference_validation:  # fresh negatives at each validation pass
        (train_users, train_items), (val_users, val_items) = rekeyed_click_pairs(sessions, items, n_val)
    else:  # negatives drawn once, the same for every evaluation
        (train_users, train_items), (val_users, val_items) = split_click_pairs(
            sessions, items, n_val, holdout_fraction, generator
        )
        val_negatives = torch.randint(num_items, val_items.shape, generator=generator, device=device)
    if val_users.numel() == 0 or train_users.numel() == 0:
        raise SlateRLError("not enough clicks for a training and a held-out part")

    model = BPRMatrixFactorization(n_sessions, num_items, dim, seed).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=float(lr), fused=device.type in ("cpu", "cuda"))
    result = MFResult(item_table=model.items.weight.detach().clone(), best_val_loss=float("inf"))
    stale, evaluated, seconds_before = 0, False, 0.0
    if resume is not None:
        stale, evaluated, seconds_before = _restore(resume, model, optimizer, generator, result)
    started = time.perf_counter()

    def evaluate() -> bool:
        """Record the held-out loss; True when training should stop (patience exhausted)."""
        nonlocal stale
        if reference_validation:
            loss = _reference_validation_loss(model, optimizer, (val_users, val_items), int(batch_size), generator)
        else:
            loss = _held_out_loss(model, val_users, val_items, val_negatives)
        result.evaluations.append((result.steps, loss))
        if on_evaluation is not None:
            on_evaluation(result.steps, loss)
        if loss < result.best_val_loss:
            result.best_val_loss, result.item_table, stale = loss, model.items.weight.detach().clone(), 0
        else:
            stale += 1
        return stale >= int(patience)

    def state(epoch_start: torch.Tensor, next_batch: int) -> dict[str, Any]:
        """What `resume` needs to continue after this step (the epoch's order is drawn again from its start)."""
        return {
            "device": device.type,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "generator": generator.get_state(),
            "epoch_generator": epoch_start,
            "next_batch": next_batch,
            "steps": result.steps,
            "best_val_loss": result.best_val_loss,
            "best_table": result.item_table,
            "evaluations": list(result.evaluations),
            "stale": stale,
            "evaluated": evaluated,
            "seconds": seconds_before + time.perf_counter() - started,
        }

    n_batches = -(-train_users.shape[0] // int(batch_size))
    resumed_epoch = resume
    while not result.stop_reason:
        epoch_start = generator.get_state() if resumed_epoch is None else resumed_epoch["epoch_generator"]
        generator.set_state(epoch_start)
        order = torch.randperm(train_users.shape[0], generator=generator, device=device)
        first_batch = 0
        if resumed_epoch is not None:  # the epoch the saved state stopped in, from its next batch
            generator.set_state(resumed_epoch["generator"])
            first_batch, resumed_epoch = int(resumed_epoch["next_batch"]), None
        for batch_index in range(first_batch, n_batches):
            rows = order[batch_index * int(batch_size) : (batch_index + 1) * int(batch_size)]
            negatives = torch.randint(num_items, rows.shape, generator=generator, device=device)
            loss = model.bpr_loss(train_users[rows], train_items[rows], negatives)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            result.steps += 1
            evaluated = batch_index % int(eval_every) == 0
            if evaluated and evaluate():
                result.stop_reason = "early_stopping"
            elif max_steps is not None and result.steps >= int(max_steps):
                result.stop_reason = "max_steps"
            elif max_seconds is not None and seconds_before + time.perf_counter() - started >= float(max_seconds):
                result.stop_reason = "max_seconds"
            if result.stop_reason:
                break
            if on_save is not None and save_every > 0 and result.steps % int(save_every) == 0:
                on_save(state(epoch_start, batch_index + 1))
    if not evaluated:
        evaluate()
    result.item_table = result.item_table.cpu()
    return result


def popularity_correlation(item_table: torch.Tensor, slates: torch.Tensor, clicks: torch.Tensor) -> float:
    """Pearson correlation between each item's projection on the mean item vector and its click count in the
    logged sessions: a check that MF embeddings mainly encode popularity (about -0.83 for the reference's
    focused_topdown file; negative because the mean item vector is dominated by the many rarely clicked items,
    which BPR pushes away from the users)."""
    check_logged(slates, clicks)
    table = item_table.detach().double().cpu()
    projection = table @ table.mean(dim=0)
    counts = torch.bincount(slates[clicks.bool()].long().cpu(), minlength=table.shape[0]).double()
    return float(torch.corrcoef(torch.stack([projection, counts]))[0, 1])


def topic_alignment(item_table: torch.Tensor, true_table: torch.Tensor, topics: torch.Tensor) -> tuple[float, float]:
    """How much of the simulator's item structure an item table holds: (R² of the least-squares regression, with an
    intercept, of the true item embeddings on the table; the share of items whose cosine nearest other item in the
    table has the same topic). Near 0 and near the chance share (the sum of squared topic shares) for a table that
    knows no topics."""
    table = item_table.detach().double().cpu()
    truth = true_table.detach().double().cpu()
    design = torch.cat([table, torch.ones(table.shape[0], 1, dtype=table.dtype)], dim=1)
    residual = truth - design @ torch.linalg.lstsq(design, truth).solution
    r2 = 1.0 - float(residual.square().sum() / (truth - truth.mean(dim=0)).square().sum())
    unit = torch.nn.functional.normalize(table, dim=1)
    similarity = (unit @ unit.T).fill_diagonal_(-2.0)
    topics = topics.cpu()
    return r2, float((topics[similarity.argmax(dim=1)] == topics).double().mean())
