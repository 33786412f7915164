"""Closed-form local fitting of lmKAN tables: regularised least squares on calibration data.

An LMKANLinear's output is linear in its table and bias, and the Hessian regularizer is quadratic in the table, so
    J(T, b) = mean_rows ||layer(x) - y||^2 + hessian * layer.hessian_penalty() + ridge * ||T - T_start||^2
has one minimiser. Every output column shares the same normal matrix, built from dense per-chunk design rows
(4 non-zeros per pair: the bilinear corner weights) and streamed over the data; above `max_dense` unknowns the
same operator is applied matrix-free by conjugate gradients, so memory stays bounded by one chunk.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lmkan_surgery.errors import ConfigError, ShapeError
from lmkan_surgery.grid import locate
from lmkan_surgery.nn import LMKANLinear
from lmkan_surgery.nn.hessian import hessian_form
from lmkan_surgery.nn.placement import quantile_knots
from lmkan_surgery.ops.dispatch import native_gram

from .calibrate import RunningMoments


@dataclass
class FitResult:
    """What fit_tables did: rows used, solver ("normal" or "cg"), relative training error of the fitted layer."""

    rows: int
    solver: str
    train_rel_error: float
    iterations: int = 0


def _corners(layer: LMKANLinear, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per (row, pair): node index i*(G+1) + j of the cell's lower corner [n, P] and the bilinear weights [n, P, 4]
    of corners (i, j), (i+1, j), (i, j+1), (i+1, j+1) (normalisation/placement of the layer applied, float64)."""
    u = layer._normalize(x.reshape(-1, layer.in_features).to(layer.table.dtype), 1).to(torch.float64)
    if u.shape[1] % 2:
        u = F.pad(u, (0, 1))
    cell, t, _ = locate(u, layer.num_grids)
    i, j, t1, t2 = cell[:, 0::2], cell[:, 1::2], t[:, 0::2], t[:, 1::2]
    weights = torch.stack([(1 - t1) * (1 - t2), t1 * (1 - t2), (1 - t1) * t2, t1 * t2], dim=2)
    return i * (layer.num_grids + 1) + j, weights


def design(layer: LMKANLinear, x: torch.Tensor) -> torch.Tensor:
    """Rows [n, P*(G+1)^2] with layer.table-weighted sums equal to the lookup: column p*(G+1)^2 + i*(G+1) + j holds
    the bilinear weight of node (i, j) of pair p (normalisation/placement of the layer applied, float64)."""
    corner, weights = _corners(layer, x)
    n_nodes = layer.num_grids + 1
    rows = torch.zeros(corner.shape[0], corner.shape[1] * n_nodes * n_nodes, dtype=torch.float64, device=corner.device)
    columns = _columns(corner, n_nodes).reshape(corner.shape[0], -1)
    return rows.scatter_add_(1, columns, weights.reshape(corner.shape[0], -1))


def _columns(corner: torch.Tensor, n_nodes: int) -> torch.Tensor:
    """Design columns [n, P, 4] of the 4 corners of each (row, pair), in the order of _corners' weights."""
    base = torch.arange(corner.shape[1], device=corner.device) * n_nodes * n_nodes + corner
    return torch.stack([base, base + n_nodes, base + 1, base + n_nodes + 1], dim=2)


def _data_terms(layer: LMKANLinear, corner: torch.Tensor, weights: torch.Tensor,
                y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """From the corner form of design rows D (bias column last): D^T y, D^T 1 and the sum of D's squared table
    entries, without building D."""
    n_nodes = layer.num_grids + 1
    columns = _columns(corner, n_nodes)
    table_columns = corner.shape[1] * n_nodes * n_nodes
    y = y.to(torch.float64)
    dty = y.new_zeros(table_columns + 1, y.shape[1])
    step = max(1, 2 ** 22 // max(1, weights[0].numel() * y.shape[1]))  # bounds the [rows, P, 4, out] products
    for begin in range(0, corner.shape[0], step):
        part = slice(begin, begin + step)
        products = weights[part].unsqueeze(-1) * y[part, None, None, :]
        dty[:-1].index_add_(0, columns[part].reshape(-1), products.reshape(-1, y.shape[1]))
    dty[-1] = y.sum(0)
    ones = weights.new_zeros(table_columns + 1)
    ones[:-1].index_add_(0, columns.reshape(-1), weights.reshape(-1))
    ones[-1] = corner.shape[0]
    return dty, ones, float((weights * weights).sum())


def _chunks(values: torch.Tensor | Sequence[torch.Tensor], rows: int) -> list[torch.Tensor]:
    parts = [values] if isinstance(values, torch.Tensor) else list(values)
    return [c for p in parts for c in p.reshape(-1, p.shape[-1]).split(rows)]


def fit_tables(layer: LMKANLinear, inputs: torch.Tensor | Sequence[torch.Tensor],
               targets: torch.Tensor | Sequence[torch.Tensor], hessian: float = 0.0, ridge: float = 1e-6,
               *, relative: bool = False, chunk_rows: int = 2048, max_dense: int = 6144, cg_iters: int = 500,
               cg_tol: float = 1e-10) -> FitResult:
    """Set layer.table and layer.bias to the minimiser of J (module docstring) on (inputs, targets), in place.

    inputs [*, in] and targets [*, out] (or equal-length sequences of such chunks). With relative=True, hessian and
    ridge are multiplied by the mean diagonal of the data term's normal matrix (weights independent of data size
    and occupancy). Needs ridge > 0 (the bias and the table's constant part are otherwise not identified).
    """
    return fit_tables_each(layer, inputs, targets, [hessian], ridge, relative=relative, chunk_rows=chunk_rows,
                           max_dense=max_dense, cg_iters=cg_iters, cg_tol=cg_tol, in_place=True)[0][1]


def fit_tables_each(layer: LMKANLinear, inputs: torch.Tensor | Sequence[torch.Tensor],
                    targets: torch.Tensor | Sequence[torch.Tensor], hessians: Sequence[float], ridge: float = 1e-6,
                    *, relative: bool = False, chunk_rows: int = 2048, max_dense: int = 6144, cg_iters: int = 500,
                    cg_tol: float = 1e-10, in_place: bool = False) -> list[tuple[LMKANLinear, FitResult]]:
    """fit_tables at each Hessian weight, one fitted copy of `layer` per weight (in_place: `layer` itself, one
    weight only); the dense path builds the normal matrix once for all of them (a calibration-time search over
    the weight then costs one matrix build and one Cholesky solve per weight)."""
    if not isinstance(layer, LMKANLinear):
        raise ConfigError(f"fit_tables fits LMKANLinear layers, got {type(layer).__name__}")
    if layer.branch is not None:
        raise ConfigError("fit_tables needs a layer without preconditioning branch: call layer.fold() first")
    if ridge <= 0 or min(hessians, default=0.0) < 0 or not hessians or (in_place and len(hessians) != 1):
        raise ConfigError(f"fit_tables needs ridge > 0 and hessian >= 0 (one weight when in place), got "
                          f"ridge={ridge}, hessian={list(hessians)}")
    xs, ys = _chunks(inputs, chunk_rows), _chunks(targets, chunk_rows)
    if [len(c) for c in xs] != [len(c) for c in ys] or not xs:
        raise ShapeError("fit_tables: inputs and targets must hold the same (non-zero) number of rows")
    if xs[0].shape[-1] != layer.in_features or ys[0].shape[-1] != layer.out_features:
        raise ShapeError(f"fit_tables: layer maps {layer.in_features} -> {layer.out_features}, got inputs "
                         f"[*, {xs[0].shape[-1]}] and targets [*, {ys[0].shape[-1]}]")
    was_training = layer.training
    layer.eval()
    try:
        with torch.no_grad():
            system = _normal_system(layer, xs, ys, relative, max_dense)
            out = []
            for index, hessian in enumerate(hessians):
                target = layer if in_place else copy.deepcopy(layer)
                last = index == len(hessians) - 1  # the last weight may use the normal matrix in place
                out.append((target, _solve(target, xs, ys, system, hessian, ridge, cg_iters, cg_tol, last)))
    finally:
        layer.train(was_training)
    if not in_place:
        for fitted, _ in out:
            fitted.train(was_training)
    return out


@dataclass
class _System:
    """The data term of J: normal matrix (None above max_dense: CG then), right-hand side, relative scale, rows."""

    gram: torch.Tensor | None
    rhs: torch.Tensor
    scale: float
    count: int


def _rows_of(layer: LMKANLinear, x: torch.Tensor) -> torch.Tensor:
    """Design rows with the bias column last."""
    d = design(layer, x)
    return torch.cat([d, d.new_ones(d.shape[0], 1)], dim=1)


def _normal_system(layer: LMKANLinear, xs: list[torch.Tensor], ys: list[torch.Tensor], relative: bool,
                   max_dense: int) -> _System:
    """Stream the chunks once: D^T y, the dense normal matrix where it fits, the relative scale."""
    table = layer.table
    pairs, n_nodes, _, outputs = table.shape
    unknowns = pairs * n_nodes * n_nodes + 1
    count = sum(len(c) for c in xs)
    rhs = table.new_zeros(unknowns, outputs, dtype=torch.float64)
    scale_sum = 0.0
    gram = rhs.new_zeros(unknowns, unknowns) if unknowns <= max_dense else None
    gram_add = native_gram() if table.device.type == "cpu" else None
    table_gram = rhs.new_zeros(unknowns - 1, unknowns - 1) if gram is not None and gram_add is not None else None
    for index, (x, y) in enumerate(zip(xs, ys)):
        corner, weights = _corners(layer, x)
        dty, ones, squares = _data_terms(layer, corner, weights, y)
        rhs += dty / count
        scale_sum += squares
        if table_gram is not None:  # native: from the 4 non-zeros per pair, mirrored after the last chunk
            gram_add(table_gram, corner.t().contiguous(), weights.transpose(0, 1).contiguous(), n_nodes,
                     index == len(xs) - 1)
            gram[:, -1] += ones / count
        elif gram is not None:
            d = _rows_of(layer, x)
            gram += d.t() @ d / count
    if table_gram is not None:
        gram[:-1, :-1] = table_gram / count
        gram[-1, :-1] = gram[:-1, -1]
    return _System(gram, rhs, scale_sum / (count * (unknowns - 1)) if relative else 1.0, count)


def _solve(layer: LMKANLinear, xs: list[torch.Tensor], ys: list[torch.Tensor], system: _System, hessian: float,
           ridge: float, cg_iters: int, cg_tol: float, consume: bool) -> FitResult:
    """Add the regularisers to the data term (on a copy of the normal matrix unless `consume`: the system serves
    every weight, and a matrix of 6,144 unknowns is 300 MB), solve, install."""
    table = layer.table
    pairs, n_nodes, _, outputs = table.shape
    start = table.detach().to(torch.float64).reshape(-1, outputs)
    form = hessian_form(layer.num_grids).to(start.device)
    lam, rho = hessian * system.scale, ridge * system.scale
    rhs = system.rhs.clone()
    rhs[:-1] += rho * start

    def regularise(v: torch.Tensor) -> torch.Tensor:
        t = v[:-1].view(pairs, n_nodes * n_nodes, -1)
        reg = rho * t + lam * torch.einsum("ab,pbo->pao", form, t)
        return torch.cat([reg.reshape(-1, v.shape[1]), v.new_zeros(1, v.shape[1])])

    if system.gram is not None:
        gram = system.gram if consume else system.gram.clone()
        gram[:-1, :-1] += rho * torch.eye(len(gram) - 1, dtype=gram.dtype, device=gram.device)
        gram[:-1, :-1] += lam * torch.block_diag(*([form] * pairs))
        solution, solver, iterations = _spd_solve(gram, rhs), "normal", 0
    else:
        def apply(v: torch.Tensor) -> torch.Tensor:
            out = regularise(v)
            for x in xs:
                d = _rows_of(layer, x)
                out += d.t() @ (d @ v) / system.count
            return out

        solution, iterations = _conjugate_gradient(apply, rhs, torch.cat([start, start.new_zeros(1, outputs)]),
                                                   cg_iters, cg_tol)
        solver = "cg"
    table.data.copy_(solution[:-1].view(pairs, n_nodes, n_nodes, outputs).to(table.dtype))
    if layer.bias is None:
        layer.bias = nn.Parameter(solution[-1].to(table.dtype))
    else:
        layer.bias.data.copy_(solution[-1].to(table.dtype))
    num = den = 0.0
    for x, y in zip(xs, ys):
        y = y.to(torch.float64)
        num += float(((_rows_of(layer, x) @ solution - y) ** 2).sum())
        den += float((y * y).sum())
    return FitResult(system.count, solver, (num / max(den, 1e-30)) ** 0.5, iterations)


def _spd_solve(gram: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """gram^-1 rhs by Cholesky (the regularised normal matrix is SPD: half an LU's work, which dominates wide block
    fits); LU where rounding makes the factorisation fail."""
    factor, info = torch.linalg.cholesky_ex(gram)
    if int(info) != 0:
        return torch.linalg.solve(gram, rhs)
    return torch.cholesky_solve(rhs, factor)


def _conjugate_gradient(apply, rhs: torch.Tensor, x: torch.Tensor, iters: int, tol: float) -> tuple[torch.Tensor, int]:
    """Column-wise CG for the SPD operator `apply` (every column of rhs solved at once)."""
    r = rhs - apply(x)
    p = r.clone()
    rr = (r * r).sum(0)
    target = tol * tol * (rhs * rhs).sum(0).clamp_min(1e-300)
    for step in range(iters):
        if bool((rr <= target).all()):
            return x, step
        ap = apply(p)
        alpha = rr / (p * ap).sum(0).clamp_min(1e-300)
        x = x + alpha * p
        r = r - alpha * ap
        rr_new = (r * r).sum(0)
        p = r + (rr_new / rr.clamp_min(1e-300)) * p
        rr = rr_new
    return x, iters


def lmkan_refit(linear: nn.Linear, num_grids: int, train_x: list[torch.Tensor], train_y: list[torch.Tensor],
                input_norm: str, mix: float, hessian: float = 1e-4, ridge: float = 1e-3) -> LMKANLinear:
    """An LMKANLinear started from `linear` (exact) and fitted in closed form to (train_x, train_y): the shrink
    pass's lmKAN counterpart of its Linear refit (relative weights, so they mean the same on any data)."""
    rows = torch.cat([x.reshape(-1, linear.in_features) for x in train_x])
    if input_norm == "quantile":
        layer = LMKANLinear.from_linear(linear, num_grids, input_knots=quantile_knots(rows, num_grids, mix))
    else:
        moments = RunningMoments()
        moments.add(rows)
        layer = LMKANLinear.from_linear(linear, num_grids, moments.mean(), moments.std())
    fit_tables(layer, train_x, train_y, hessian=hessian, ridge=ridge, relative=True)
    return layer


def held_out_error(module: nn.Module, xs: list[torch.Tensor], ys: list[torch.Tensor]) -> float | None:
    """Relative L2 error of module(x) against y over the chunks (None without any)."""
    if not xs:
        return None
    num = den = 0.0
    with torch.no_grad():
        for x, y in zip(xs, ys):
            out = module(x.to(next(module.parameters()).dtype))
            num += float(((out.double().reshape(y.shape) - y.double()) ** 2).sum())
            den += float((y.double() ** 2).sum())
    return (num / max(den, 1e-30)) ** 0.5


def shrink_refit(student: nn.Module, name: str, train: list[tuple[torch.Tensor, torch.Tensor]],
                 held: list[tuple[torch.Tensor, torch.Tensor]], num_grids: int, input_norm: str,
                 mix: float) -> tuple[float | None, float | None, Any]:
    """Fit an lmKAN consumer beside the refitted Linear `name` on captured (input, target) rows; returns the
    held-out relative errors (Linear refit, lmKAN fit) and the fitted layer."""
    linear = student.get_submodule(name)
    train_x, train_y = [x for x, _ in train], [y for _, y in train]
    layer = lmkan_refit(linear, num_grids, train_x, train_y, input_norm, mix)
    held_x, held_y = [x for x, _ in held], [y for _, y in held]
    return held_out_error(linear, held_x, held_y), held_out_error(layer, held_x, held_y), layer
