"""Pure-PyTorch reference of the lmKAN 2-D lookup: the oracle every kernel is tested against.

Canonical table layout: ``table[P, G+1, G+1, N_out]`` (pair, node of x[2p], node of x[2p+1], output), outputs
contiguous. Each evaluation uses the cancellation-free form
``f = T00 + t1 (T10 - T00) + t2 (T01 - T00) + t1 t2 (T11 - T10 - T01 + T00)``, which stays accurate when the
local coordinates are far outside [0, 1] (linear extrapolation), unlike the four-weight form.
Where t1 t2 overflows to inf (|x| >= 1e19, or an infinite input) and the cross difference is exactly zero (every
exact table), the cross term is 0, so the result is what the linear map gives instead of inf * 0 = NaN.
The batch is processed in chunks so no intermediate exceeds ``CHUNK_BYTES``.
"""

from __future__ import annotations

import torch

from ..grid import locate

CHUNK_BYTES = 64 * 2**20


def _batch_chunk(batch: int, pairs: int, outputs: int, itemsize: int) -> int:
    """Rows per chunk so that one gathered [rows, P, N_out] tensor stays within CHUNK_BYTES / 6."""
    per_row = max(1, pairs * outputs * itemsize * 6)
    return max(1, min(batch, CHUNK_BYTES // per_row))


def _corner_rows(x: torch.Tensor, num_grids: int):
    """Flat row indices of the 4 corners (into table.view(P*(G+1)^2, N_out)) and the local coordinates."""
    pairs = x.shape[1] // 2
    cell, t, slope = locate(x, num_grids)
    n = num_grids + 1
    base = torch.arange(pairs, device=x.device) * (n * n)
    r00 = base + cell[:, 0::2] * n + cell[:, 1::2]
    return (r00, r00 + 1, r00 + n, r00 + n + 1), t[:, 0::2], t[:, 1::2], slope[:, 0::2], slope[:, 1::2]


def _gathered(rows: torch.Tensor, flat_table: torch.Tensor) -> torch.Tensor:
    return flat_table[rows]  # [rows, P, N_out]


def _cross_weight(t1: torch.Tensor, t2: torch.Tensor, cross: torch.Tensor) -> torch.Tensor:
    """t1 t2 per (row, pair, output), with an infinite product replaced by 0 where the cross difference is exactly 0.

    The product stays in the graph for every finite value, so autograd through the forward gives the table the
    bilinear weight t1 t2 even on cells whose cross difference happens to be zero (a mask on the term would not).
    """
    prod = (t1 * t2).unsqueeze(-1)
    return torch.where((cross != 0) | torch.isfinite(prod), prod, 0.0)


def forward_reference(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """y[b, o] = sum_p f_{o,p}(x[b, 2p], x[b, 2p+1]) for x [B, 2P] and table [P, G+1, G+1, N_out]."""
    table = table.to(x.dtype)
    pairs, n, _, outputs = table.shape
    flat = table.reshape(pairs * n * n, outputs)
    out = x.new_empty(x.shape[0], outputs)
    step = _batch_chunk(x.shape[0], pairs, outputs, x.element_size())
    for start in range(0, x.shape[0], step):
        xs = x[start:start + step]
        (r00, r01, r10, r11), t1, t2, _, _ = _corner_rows(xs, n - 1)
        t00 = _gathered(r00, flat)
        d1 = _gathered(r10, flat) - t00
        d2 = _gathered(r01, flat) - t00
        cross = _gathered(r11, flat) - t00 - d1 - d2
        cross_term = (_cross_weight(t1, t2, cross) * cross).sum(1)
        out[start:start + step] = (
            t00.sum(1)
            + torch.einsum("bp,bpo->bo", t1, d1)
            + torch.einsum("bp,bpo->bo", t2, d2)
            + cross_term
        )
    return out


def backward_reference(
    grad_out: torch.Tensor, x: torch.Tensor, table: torch.Tensor, need_x: bool = True, need_table: bool = True
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradients of forward_reference with respect to x [B, 2P] and table [P, G+1, G+1, N_out]."""
    table = table.to(x.dtype)
    grad_out = grad_out.to(x.dtype)
    pairs, n, _, outputs = table.shape
    flat = table.reshape(pairs * n * n, outputs)
    grad_x = torch.zeros_like(x) if need_x else None
    grad_flat = torch.zeros_like(flat) if need_table else None
    step = _batch_chunk(x.shape[0], pairs, outputs, x.element_size())
    for start in range(0, x.shape[0], step):
        xs = x[start:start + step]
        gy = grad_out[start:start + step]
        rows, t1, t2, s1, s2 = _corner_rows(xs, n - 1)
        if grad_flat is not None:
            weights = ((1 - t1) * (1 - t2), (1 - t1) * t2, t1 * (1 - t2), t1 * t2)
            for r, w in zip(rows, weights):
                contrib = w.unsqueeze(-1) * gy.unsqueeze(1)  # [b, P, N_out]
                grad_flat.index_add_(0, r.reshape(-1), contrib.reshape(-1, outputs))
        if grad_x is not None:
            r00, r01, r10, r11 = rows
            t00 = _gathered(r00, flat)
            d1 = _gathered(r10, flat) - t00
            d2 = _gathered(r01, flat) - t00
            cross = _gathered(r11, flat) - t00 - d1 - d2
            g_d1 = torch.einsum("bo,bpo->bp", gy, d1)
            g_d2 = torch.einsum("bo,bpo->bp", gy, d2)
            g_cross = torch.einsum("bo,bpo->bp", gy, cross)
            grad_x[start:start + step, 0::2] = s1 * (g_d1 + t2 * g_cross)
            grad_x[start:start + step, 1::2] = s2 * (g_d2 + t1 * g_cross)
    grad_table = grad_flat.view(pairs, n, n, outputs) if grad_flat is not None else None
    return grad_x, grad_table
