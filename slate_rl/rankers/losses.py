"""Loss terms of the GeMS slate VAE under the two variance conventions.

"reference" (default, paper parity): the reparameterisation uses exp(logvar) as the standard deviation (G1) and the
KL is averaged over the latent dimensions as well as the batch (G2; lambda_KL = 1 then equals beta = 1/d in the usual
convention). "standard": std = exp(logvar / 2) and the KL is summed over latent dimensions, averaged over the batch.
Both conventions use the same KL formula 0.5 * (-logvar + exp(logvar) + mu^2 - 1), i.e. logvar is the log-variance
there; only the reference's sampling treats exp(logvar) as a standard deviation.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from slate_rl.errors import SlateRLError

LOSS_CONVENTIONS = ("reference", "standard")


def check_convention(convention: str) -> str:
    """`convention` if it is one of LOSS_CONVENTIONS, else SlateRLError."""
    if convention not in LOSS_CONVENTIONS:
        raise SlateRLError(f"loss_convention must be one of {LOSS_CONVENTIONS} (got {convention!r})")
    return convention


def reparameterise(
    mu: torch.Tensor, logvar: torch.Tensor, noise: torch.Tensor, convention: str = "reference"
) -> torch.Tensor:
    """z = mu + noise * std with std = exp(logvar) ("reference", G1) or exp(logvar / 2) ("standard")."""
    std = logvar.exp() if check_convention(convention) == "reference" else (0.5 * logvar).exp()
    return mu + noise * std


def kl_to_standard_normal(mu: torch.Tensor, logvar: torch.Tensor, convention: str = "reference") -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) of (..., B, d) codes: mean over batch and latent dims ("reference", G2)
    or sum over latent dims and mean over the batch ("standard"); one value per leading index (stacked models)."""
    per_entry = 0.5 * (logvar.exp() - logvar + mu.square() - 1.0)
    if check_convention(convention) == "reference":
        return per_entry.mean(dim=(-2, -1))
    return per_entry.sum(dim=-1).mean(dim=-1)


CE_ROWS = 256  # slots per block in the fused cross-entropy: a 256 x 1000 logit block stays in cache
# Shifted logits are clamped here before exp: exp of arguments below about -87 hits a denormal / underflow path
# that is 10-30x slower on CPU (confident models produce such gaps), while terms below e^-80 relative to the
# largest one (which contributes 1 to the sum) change the sum by less than 1e-31 relatively.
EXP_FLOOR = -80.0


class _ItemCrossEntropy(torch.autograd.Function):
    """Mean softmax cross-entropy of logits = slot_vectors @ table^T; gradient to the slot vectors only.

    Works on blocks of CE_ROWS slots so that each logit block is reused while in cache, and computes the gradient
    in the same pass: d loss_m / d v_m = softmax_m @ table - table[target_m] (no one-hot, no log-softmax matrix,
    nothing of size M x N kept for the backward). About twice as fast as autograd's cross-entropy on CPU. Leading
    dimensions (stacked models, each with its own table) are kept: one mean per leading index.
    """

    @staticmethod
    def forward(ctx, slot_vectors: torch.Tensor, table: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        losses = slot_vectors.new_empty(slot_vectors.shape[:-1])
        grad = slot_vectors.new_empty(slot_vectors.shape) if ctx.needs_input_grad[0] else None
        for start in range(0, slot_vectors.shape[-2], CE_ROWS):
            rows = slice(start, start + CE_ROWS)
            logits = (slot_vectors[..., rows, :] @ table.mT).to(table.dtype)  # bf16 product under autocast, fp32 sums
            target_logits = logits.gather(-1, targets[..., rows, None])
            peak = logits.amax(dim=-1, keepdim=True)
            weights = logits.sub_(peak).clamp_(min=EXP_FLOOR).exp_()
            total = weights.sum(dim=-1, keepdim=True)
            losses[..., rows] = (peak + total.log() - target_logits)[..., 0]
            if grad is not None:
                grad[..., rows, :] = (weights @ table).div_(total)
        if grad is not None:
            ctx.save_for_backward(grad.sub_(table.take_along_dim(targets[..., None], dim=-2)))
        return losses.mean(dim=-1)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: torch.Tensor):
        (grad,) = ctx.saved_tensors
        return grad * (grad_output[..., None, None] / grad.shape[-2]), None, None


def item_cross_entropy(slot_vectors: torch.Tensor, item_table: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy over the N items, averaged over the M slots.

    slot_vectors (..., M, D), item_table (..., N, D), targets (..., M) int64; leading dimensions (stacked models)
    give one mean each. Equal to `F.cross_entropy(slot_vectors @ item_table.T, targets)` for one model, with the
    table treated as a constant (detached, G5).
    """
    return _ItemCrossEntropy.apply(slot_vectors, item_table.detach(), targets)
