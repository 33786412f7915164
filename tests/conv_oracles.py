"""Shared oracles of the direct convolution tests: the float64 naive-patch reference of LMKANConv2d (forward and, by
autograd through it, both gradients) and runners that repeat a call at several thread counts and layouts."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmkan_surgery.nn import LMKANConv2d
from lmkan_surgery.ops.reference import forward_reference


def reference_conv(layer: LMKANConv2d, x: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
    """float64: pad, cut every window with explicit loops over the kernel offsets, look each group's (c, ky, kx)
    patch up with the float64 reference (odd patches get a zero partner), add the bias."""
    x = x.double()
    pads = layer._pads()
    if any(pads):
        x = F.pad(x, pads, mode="constant" if layer.padding_mode == "zeros" else layer.padding_mode)
    (kh, kw), (sh, sw), (dh, dw) = layer.kernel_size, layer.stride, layer.dilation
    n, c, h, w = x.shape
    oh, ow = (h - dh * (kh - 1) - 1) // sh + 1, (w - dw * (kw - 1) - 1) // sw + 1
    cols = torch.stack([x[:, :, ky * dh: ky * dh + sh * (oh - 1) + 1: sh, kx * dw: kx * dw + sw * (ow - 1) + 1: sw]
                        for ky in range(kh) for kx in range(kw)], dim=2)  # [n, c, kh*kw, oh, ow]
    g = layer.groups
    cols = cols.reshape(n, g, c // g * kh * kw, oh * ow).permute(0, 3, 1, 2)  # [n, L, g, K]
    if cols.shape[-1] % 2:
        cols = F.pad(cols, (0, 1))
    table = layer.table.detach().double() if table is None else table
    outs = [forward_reference(cols[:, :, i].reshape(-1, cols.shape[-1]), table[i]) for i in range(g)]
    y = torch.cat(outs, dim=-1).reshape(n, oh, ow, layer.out_channels).permute(0, 3, 1, 2)
    return y + layer.bias.detach().double().view(1, -1, 1, 1)


def reference_grads(layer: LMKANConv2d, x: torch.Tensor, dy: torch.Tensor):
    """float64 gradients of sum(dy * conv) for x and the table, by autograd through reference_conv."""
    x64 = x.detach().double().requires_grad_(True)
    table64 = layer.table.detach().double().requires_grad_(True)
    return torch.autograd.grad(reference_conv(layer, x64, table64), [x64, table64], dy.double())


def grads_at_threads(layer: LMKANConv2d, x: torch.Tensor, dy: torch.Tensor, counts=(1, 2)) -> list[tuple]:
    """(grad_x, grad_table) of sum(dy * layer(x)) with each thread count."""
    threads = torch.get_num_threads()
    out = []
    try:
        for count in counts:
            torch.set_num_threads(count)
            out.append(torch.autograd.grad(layer(x), [x, layer.table], dy))
    finally:
        torch.set_num_threads(threads)
    return out

def forward_at_threads_and_layouts(layer: LMKANConv2d, x: torch.Tensor) -> list[torch.Tensor]:
    """layer(x) without autograd on 1 thread, on 2 threads, and on 2 threads with a channels_last input."""
    threads = torch.get_num_threads()
    outs = []
    try:
        with torch.no_grad():
            for count, memory_format in ((1, torch.contiguous_format), (2, torch.contiguous_format),
                                         (2, torch.channels_last)):
                torch.set_num_threads(count)
                outs.append(layer(x.contiguous(memory_format=memory_format)))
    finally:
        torch.set_num_threads(threads)
    return outs


def check_gradients(layer: LMKANConv2d, x: torch.Tensor, dy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_x, grad_table) of sum(dy * layer(x)), asserted bitwise equal on 1 and 2 threads and within 2e-5 of the
    float64 reference (the table gradient within its dtype's rounding on top)."""
    runs = grads_at_threads(layer, x, dy)
    assert all(torch.equal(a, b) for a, b in zip(*runs)), layer
    rx, rt = reference_grads(layer, x, dy)
    gx, gt = runs[0]
    assert (gx.double() - rx).abs().max().item() <= 2e-5 * max(1.0, rx.abs().max().item()), layer
    dtype = layer.table.dtype
    rounding = torch.finfo(dtype).eps * rt.abs() if dtype != torch.float32 else 0.0  # the gradient comes in its dtype
    assert ((gt.double() - rt).abs() - rounding).max().item() <= 2e-5 * max(1.0, rt.abs().max().item()), layer
    return gx, gt
