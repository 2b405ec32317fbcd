"""The SAC heads differentiated by hand, for the fused update (`slate_rl.agents.fused_sac`).

The products autograd would form minus the ones no loss needs (e.g. gradients for the stored actions), as few passes
as possible over the (rows x 2 * 256) critic activations, biases carried by a column of ones, and each skinny product
in the orientation MKL runs fastest. The plain update differentiates `slate_rl.agents.nets` with autograd instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def with_ones(*columns: torch.Tensor) -> torch.Tensor:
    """[columns..., 1] (N, sum of widths + 1): with `affine` weights the bias rides through the products, so no
    broadcast copy of it is made before the product and its gradient needs no separate sum over rows."""
    return torch.cat([*columns, columns[0].new_ones(columns[0].shape[0], 1)], 1)


def affine(weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """[weight | bias] (out, in + 1), the weights for `with_ones` inputs."""
    return torch.cat([weight, bias.unsqueeze(1)], 1)


def twin_q_hidden(params: Sequence[torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
    """ReLU layer of packed twin critics on `with_ones(state, action)` inputs (N, S + A + 1) -> (N, 2 * hidden)."""
    return torch.mm(inputs, affine(params[0], params[1]).t()).relu_()


def twin_q_values(params: Sequence[torch.Tensor], hidden: torch.Tensor) -> torch.Tensor:
    """(N, 2) critic values from `twin_q_hidden`: one matrix-vector product per critic (reads the hidden layer
    once, unlike a broadcast product and a sum)."""
    weight2, bias2 = params[2], params[3]
    width = weight2.shape[1]
    return torch.stack([torch.addmv(bias2[k], hidden[:, k * width : (k + 1) * width], weight2[k]) for k in range(2)], 1)


def twin_q_min(params: Sequence[torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
    """min(Q1, Q2) per row of `with_ones(state, action)` inputs, (N,)."""
    return twin_q_values(params, twin_q_hidden(params, inputs)).min(1).values


# The backward passes below use that the gradient at critic k's pre-activations is
#   d_pre_k = mask_k * (d_q_k w2_k^T)   (mask_k: where the ReLU passes, d_q_k: per row, w2_k: per unit),
# so the products with d_pre_k are products with the 0/1 mask, the row factor applied to the other operand and the
# unit factor to the (small) result. The (N, 2 x 256) gradient is never formed: the mask overwrites the hidden layer
# in place (hidden >= 0, so sign(hidden) is the mask), which saves three passes over it per backward.


def twin_q_regression(
    params: Sequence[torch.Tensor], inputs: torch.Tensor, targets: torch.Tensor, state_dim: int
) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """The critics' loss 0.5 * sum_k mean_n (Q_k(inputs_n) - y_n)^2 on `with_ones(state, action)` inputs,
    differentiated by hand.

    Returns the values (N, 2), the gradients [weight1, bias1, weight2, bias2] (contiguous, as fused Adam needs)
    and the gradient at the states (N, state_dim)."""
    rows, width = inputs.shape[0], params[2].shape[1]
    hidden = twin_q_hidden(params, inputs)
    values = twin_q_values(params, hidden)
    d_q = (values - targets.unsqueeze(1)).div_(rows)
    d_weight2 = torch.bmm(d_q.t().unsqueeze(1), hidden.view(rows, 2, width).transpose(0, 1)).squeeze(1)
    mask = hidden.sign_()
    d_layers: list[torch.Tensor] = []
    d_states = inputs.new_zeros(rows, state_dim)
    for k in range(2):
        units, row_factor, unit_factor = slice(k * width, (k + 1) * width), d_q[:, k : k + 1], params[2][k]
        d_layers.append(torch.mm((inputs * row_factor).t(), mask[:, units]).mul_(unit_factor))  # [dW1_k^T; db1_k]
        state_weights = params[0][units, :state_dim] * unit_factor.unsqueeze(1)
        d_states.addcmul_(input_grad(mask[:, units], state_weights), row_factor)
    d_layer1 = torch.cat(d_layers, 1)
    return values, [d_layer1[:-1].t().contiguous(), d_layer1[-1].contiguous(), d_weight2, d_q.sum(0)], d_states


def twin_q_min_action_grad(
    params: Sequence[torch.Tensor], inputs: torch.Tensor, state_dim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """min(Q1, Q2) per row of `with_ones(state, action)` inputs (N,) and the gradient of its sum at the actions
    (N, A): it flows through the smaller critic of each row (the index `min` returns, as autograd does)."""
    width = params[2].shape[1]
    hidden = twin_q_hidden(params, inputs)
    q_min, which = twin_q_values(params, hidden).min(1)
    mask = hidden.sign_()
    actions = slice(state_dim, inputs.shape[1] - 1)
    per_critic = [
        input_grad(
            mask[:, k * width : (k + 1) * width],
            params[0][k * width : (k + 1) * width, actions] * params[2][k].unsqueeze(1),
        )
        for k in range(2)
    ]
    return q_min, torch.where(which.unsqueeze(1) == 0, per_critic[0], per_critic[1])


def mlp_forward(params: Sequence[torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(inputs, hidden, out) of `MLP` with explicit parameters [weight1, bias1, weight2, bias2]; inputs = [x, 1]
    and hidden are kept for `mlp_backward`."""
    weight1, bias1, weight2, bias2 = params
    inputs = with_ones(x)
    hidden = torch.mm(inputs, affine(weight1, bias1).t()).relu_()
    return inputs, hidden, torch.addmm(bias2, hidden, weight2.t())


def mlp_backward(
    params: Sequence[torch.Tensor], inputs: torch.Tensor, hidden: torch.Tensor, d_out: torch.Tensor
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Gradients of sum(d_out * MLP(x)) from `mlp_forward`'s tensors: the parameters' (contiguous) and x's."""
    weight1, weight2 = params[0], params[2]
    d_pre = relu_backward(input_grad(d_out, weight2), hidden)
    d_layer1 = weight_grad(d_pre, inputs)  # [dW1 | db1]
    grads = [
        d_layer1[:, :-1].contiguous(),
        d_layer1[:, -1].contiguous(),
        weight_grad(d_out, hidden).contiguous(),  # a transposed view when out > hidden: fused Adam reads flat memory
        d_out.sum(0),
    ]
    return grads, input_grad(d_pre, weight1)


def relu_backward(d_hidden: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """d_hidden where the ReLU output `hidden` is positive, else 0: ReLU's own backward kernel (one pass; a
    comparison and a product would be two, and slower on bool masks)."""
    return torch.ops.aten.threshold_backward(d_hidden, hidden, 0)


def weight_grad(d_out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """d_out^T x, the (out, in) gradient of a linear layer. For narrow inputs it is formed as (x^T d_out)^T: with
    the long row dimension inside, MKL runs these skinny products ~30% faster here (AVX2). May be a transposed view."""
    if x.shape[1] < d_out.shape[1]:
        return torch.mm(x.t(), d_out).t()
    return torch.mm(d_out.t(), x)


def input_grad(d_out: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """d_out @ weight, the input gradient of a linear layer; for very narrow inputs (<= 24 columns, the belief
    states) formed as (weight^T d_out^T)^T, ~30% faster here. May be a transposed view."""
    if weight.shape[1] <= 24:
        return torch.mm(weight.t(), d_out.t()).t()
    return torch.mm(d_out, weight)
