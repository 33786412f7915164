"""The paper's Hessian regularizer: squared Frobenius norm of each 2-D function's Hessian on the non-uniform grid.

Second derivatives come from non-uniform finite differences at the interior nodes (i, j in 1..G-1, the ghost rows
and columns enter as stencil neighbours): H = D11^2 + 2 D12^2 + D22^2. The penalty averages H over the interior
nodes and sums over every 2-D function. hessian_penalty evaluates it with three small per-axis operator matmuls
(second and first differences as [G-1, G+1] matrices, built once per G from the stencils), about 2x cheaper than
the stencil expressions. Training skips autograd and adds the gradient to the tables (hessian_term: the
penalty is quadratic, so the gradient of one function f is 2 Q f, Q the quadratic form f^T Q f: one matmul straight
on the table layout up to G = 8, per-axis products beyond); Q also serves the closed-form fit.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from ..grid import grid_nodes


def _second_difference(values: torch.Tensor, h_left: torch.Tensor, h_right: torch.Tensor, dim: int) -> torch.Tensor:
    """Non-uniform second derivative along `dim` at interior nodes; h_* broadcast along that dim."""
    n = values.shape[dim]
    prev = values.narrow(dim, 0, n - 2)
    mid = values.narrow(dim, 1, n - 2)
    nxt = values.narrow(dim, 2, n - 2)
    return 2.0 * (h_left * nxt - (h_left + h_right) * mid + h_right * prev) / (h_left * h_right * (h_left + h_right))


@functools.lru_cache(maxsize=32)
def _form(n: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    """Q [n*n, n*n] with stencil_penalty(f) == f^T Q f for one function f [1, n, n, 1] (float64 math)."""
    q = 0.5 * torch.autograd.functional.hessian(lambda v: stencil_penalty(v.view(1, n, n, 1)),
                                                 torch.zeros(n * n, dtype=torch.float64))
    return q.to(dtype=dtype, device=device)


def hessian_form(num_grids: int) -> torch.Tensor:
    """Q [(G+1)^2, (G+1)^2] (float64, a copy): hessian_penalty of one 2-D function f is f^T Q f."""
    return _form(num_grids + 1, torch.float64, "cpu").clone()


@functools.lru_cache(maxsize=32)
def _axis_operators(n: int, dtype: torch.dtype, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Second-difference and centred first-difference matrices [n-2, n] (rows: interior nodes) on the grid."""
    eye = torch.eye(n, dtype=torch.float64)
    h = (lambda nodes: nodes[1:] - nodes[:-1])(grid_nodes(n - 1, torch.float64))
    second = _second_difference(eye, h[:-1].view(-1, 1), h[1:].view(-1, 1), 0)
    first = (eye[2:] - eye[:-2]) / (h[:-1] + h[1:]).view(-1, 1)
    return second.to(dtype=dtype, device=device), first.to(dtype=dtype, device=device)


def hessian_penalty(table: torch.Tensor) -> torch.Tensor:
    """Sum over functions of the mean interior squared Hessian norm; table [..., G+1, G+1, N_out]."""
    n, outputs = table.shape[-2], table.shape[-1]
    values = table.float() if table.dtype in (torch.float16, torch.bfloat16) else table
    second, first = _axis_operators(n, values.dtype, str(values.device))
    t = values.reshape(-1, n, n, outputs)
    along1 = torch.matmul(second, t.reshape(-1, n, n * outputs)).view(-1, n - 2, n, outputs)  # [L, a, j, O]
    d11 = along1[:, :, 1:-1]
    d22 = torch.matmul(second, t[:, 1:-1])  # [L, a, b, O] (second difference along axis 2, interior axis 1)
    d12 = torch.matmul(first, torch.matmul(first, t.reshape(-1, n, n * outputs)).view(-1, n - 2, n, outputs))
    frobenius = d11.square() + 2.0 * d12.square() + d22.square()
    return frobenius.sum() / (n - 2) ** 2


_DENSE_MAX_NODES = 9  # up to G = 8 one (n^2 x n^2) matmul beats the per-axis form; G = 16 loses 2x to it


@functools.lru_cache(maxsize=32)
def _gradient_factors(n: int, dtype: torch.dtype, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """[S^T S; 2 F^T F] [2n, n] and F^T F [n, n] (S, F: the per-axis second and first differences)."""
    second, first = _axis_operators(n, torch.float64, "cpu")
    a, c = second.t() @ second, first.t() @ first
    return torch.cat([a, 2.0 * c]).to(dtype=dtype, device=device), c.to(dtype=dtype, device=device)


@functools.lru_cache(maxsize=32)
def _gradient_operator(n: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    """2 Q [n*n, n*n] (symmetric): the gradient of one function's penalty is 2 Q vec(f)."""
    return (2.0 * _form(n, torch.float64, "cpu")).to(dtype=dtype, device=device)


def _factored_gradient(values: torch.Tensor) -> torch.Tensor:
    """The gradient per function T [n, n], 2c (S^T S T J^T J + 2 F^T F T F^T F + J^T J T S^T S) (J: the interior
    rows, c = (n-2)^-2): n x n matmuls, O(n^3) per function, grid axes first so every function shares one product."""
    n, outputs = values.shape[-2], values.shape[-1]
    stacked, c = _gradient_factors(n, values.dtype, str(values.device))
    t = values.reshape(-1, n, n, outputs).permute(1, 2, 0, 3).reshape(n, n, -1)  # [i, j, functions]
    left = (stacked @ t.reshape(n, -1)).view(2 * n, n, -1)  # [S^T S; 2 F^T F] along axis 1
    grad = torch.matmul(c, left[n:])  # then F^T F along axis 2
    grad[:, 1:-1] += left[:n, 1:-1]  # S^T S T J^T J
    grad[1:-1] += torch.matmul(stacked[:n], t[1:-1])  # J^T J T S^T S
    grad.mul_(2.0 / (n - 2) ** 2)
    return grad.view(n, n, -1, outputs).permute(2, 0, 1, 3).reshape(values.shape)


def _gradient(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(T . gradient, d penalty / d table) for a detached table T [..., n, n, N_out]. Up to G = 8 one matmul with 2Q
    (one output: [P, n*n] @ 2Q on the layout as it is; more: 2Q @ [n*n, P * N_out] after one copy, 20% faster than
    P batched products), the gradient a view in the table's shape; beyond G = 8 the per-axis form."""
    n, outputs = values.shape[-2], values.shape[-1]
    if n > _DENSE_MAX_NODES:
        grad = _factored_gradient(values)
        return torch.dot(values.reshape(-1), grad.reshape(-1)), grad
    operator = _gradient_operator(n, values.dtype, str(values.device))
    if outputs == 1:
        grad = torch.mm(values.reshape(-1, n * n), operator)
        return torch.dot(values.reshape(-1), grad.view(-1)), grad.view(values.shape)
    columns = values.reshape(-1, n * n, outputs).transpose(0, 1).reshape(n * n, -1)  # [i*n + j, (P, o)]
    grad = operator @ columns
    return torch.dot(columns.view(-1), grad.view(-1)), grad.view(n * n, -1, outputs).transpose(0, 1).view(values.shape)


def _detached(table: torch.Tensor) -> torch.Tensor:
    return table.detach().float() if table.dtype in (torch.float16, torch.bfloat16) else table.detach()


def hessian_term(tables: list[torch.Tensor], relative: bool) -> tuple[torch.Tensor, list[torch.Tensor], list[float]]:
    """The training term over several tables, no autograd: (value, unscaled gradient per table, the factor of
    each): value = sum_l factor_l * penalty_l, its gradient factor_l * gradient_l. factor_l is 1, or (relative)
    1 / (L * F_l * var(T_l)) with L tables, F_l 2-D functions and var(T_l) the variance of the table's entries
    (held constant; in the table's dtype, float32 for half tables). The scalars are read in one go and combined
    in Python: no per-table small ops or reads. The gradient of one table alone: hessian_term([table], False)."""
    values = [_detached(t) for t in tables]
    scalars, grads = (list(part) for part in zip(*(_gradient(v) for v in values)))
    if relative:  # two-pass variance, 2-3x faster than torch.var's on CPU: sum((T - mean)^2) / (N - 1)
        centred = [v.reshape(-1) - v.mean() for v in values]
        scalars += [torch.dot(c, c) for c in centred]
    read = torch.stack(scalars).tolist()
    dots, count = read[:len(tables)], len(tables)
    if relative:
        factors = [1.0 / (count * (v.numel() // (v.shape[-2] * v.shape[-3])) * max(square / (v.numel() - 1), 1e-30))
                   for v, square in zip(values, read[count:])]
    else:
        factors = [1.0] * count
    value = sum(0.5 * dot * factor for dot, factor in zip(dots, factors))
    return torch.tensor(value, dtype=values[0].dtype, device=values[0].device), grads, factors


def stencil_penalty(table: torch.Tensor) -> torch.Tensor:
    """The penalty written with the finite-difference stencils (the definition the quadratic form comes from)."""
    n = table.shape[-2]
    nodes = grid_nodes(n - 1, torch.float64, table.device)
    h = (nodes[1:] - nodes[:-1]).to(table.dtype if table.dtype.is_floating_point else torch.float32)
    h_left, h_right = h[:-1], h[1:]  # spacing left/right of interior nodes 1..G-1
    values = table.float() if table.dtype in (torch.float16, torch.bfloat16) else table
    ax1, ax2 = values.dim() - 3, values.dim() - 2
    d11 = _second_difference(values, h_left.view(-1, 1, 1), h_right.view(-1, 1, 1), ax1).narrow(ax2, 1, n - 2)
    d22 = _second_difference(values, h_left.view(-1, 1), h_right.view(-1, 1), ax2).narrow(ax1, 1, n - 2)
    span = (h_left + h_right)
    corners = (
        values.narrow(ax1, 2, n - 2).narrow(ax2, 2, n - 2)
        - values.narrow(ax1, 2, n - 2).narrow(ax2, 0, n - 2)
        - values.narrow(ax1, 0, n - 2).narrow(ax2, 2, n - 2)
        + values.narrow(ax1, 0, n - 2).narrow(ax2, 0, n - 2)
    )
    d12 = corners / (span.view(-1, 1, 1) * span.view(-1, 1))
    frobenius = d11.square() + 2.0 * d12.square() + d22.square()
    return frobenius.mean(dim=(ax1, ax2)).sum()


def model_hessian_penalty(model: nn.Module) -> torch.Tensor:
    """Sum of hessian_penalty() over every lmKAN layer of a model (a zero tensor when there is none)."""
    from .base import LMKANLayer

    terms = [m.hessian_penalty() for m in model.modules() if isinstance(m, LMKANLayer)]
    return torch.stack(terms).sum() if terms else torch.zeros(())
