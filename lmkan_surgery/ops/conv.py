"""Direct lmKAN convolution: LMKANConv2d's lookup without materialised patches, where a kernel has it (CPU).

Only eager calls take it (see ``dispatch.eager_call_allowed``): tracing (fvcore), torch.compile/export and ONNX
export keep the patch path through ``lmkan::lookup2d``, so the pair layout, the FLOP handle and the exported graph
are those of the patch form; the results agree to float32 rounding. In eager training an autograd Function
calls the kernel's backward (both gradients, groups inside the kernel). A 1x1 convolution with one group is a
Linear over pixels and goes to the lookup's (Linear) kernels instead (``pointwise_conv2d``).
"""

from __future__ import annotations

from typing import Callable

import torch

from . import dispatch
from .lookup import InputMap, lmkan_lookup, lookup_inference


class _DirectConv2d(torch.autograd.Function):
    """y = conv(x, table) by the native kernel, with its native backward."""

    @staticmethod
    def forward(ctx, x, table, geometry, forward_kernel: Callable, backward_kernel: Callable):
        ctx.save_for_backward(x, table)
        ctx.geometry, ctx.backward_kernel = geometry, backward_kernel
        return forward_kernel(x, table, *geometry)

    @staticmethod
    def backward(ctx, grad_y):
        x, table = ctx.saved_tensors
        need_x, need_table = ctx.needs_input_grad[:2]
        grad_x, grad_table = ctx.backward_kernel(grad_y, x, table, *ctx.geometry, need_x, need_table)
        return (grad_x if need_x else None, grad_table if need_table else None, None, None, None)


def direct_conv2d(x: torch.Tensor, table: torch.Tensor, kernel_size: tuple[int, int], stride: tuple[int, int],
                  dilation: tuple[int, int]) -> torch.Tensor | None:
    """The lookup over the padded, normalised input x [N, C, H, W] with table [groups, P, G+1, G+1, out / groups],
    as [N, out, OH, OW] (channels-last memory), or None when no direct kernel applies here."""
    if x.dtype != torch.float32 or x.dim() != 4 or not dispatch.eager_call_allowed(x, table):
        return None
    if takes_linear_route(x, table, kernel_size):
        return pointwise_conv2d(x, table, stride)
    return conv_kernel2d(x, table, kernel_size, stride, dilation)


def takes_linear_route(x: torch.Tensor, table: torch.Tensor, kernel_size: tuple[int, int]) -> bool:
    """Whether direct_conv2d runs this (padded, normalised) input as the Linear lookup over pixels."""
    return (x.dtype == torch.float32 and x.dim() == 4 and tuple(kernel_size) == (1, 1) and table.shape[0] == 1
            and table.shape[1] * 2 == x.shape[1] and dispatch.eager_call_allowed(x, table))


def normalized_pixels(x: torch.Tensor, stride: tuple[int, int], shift: torch.Tensor,
                      scale: torch.Tensor) -> torch.Tensor:
    """x[:, :, ::sh, ::sw] * scale + shift per channel in channels_last memory, whose pixel rows the Linear route
    then views for free: one transposing copy, then the affine map in place on the copy (still in cache; 0.7-0.8x
    the time of one addcmul from the strided view into channels_last memory); a channels_last input in one pass.
    Inference only (in place, no autograd). Subsampling first normalises only the pixels a strided 1x1 convolution
    reads (a quarter at stride 2)."""
    if tuple(stride) != (1, 1):
        x = x[:, :, ::stride[0], ::stride[1]]
    shift, scale = shift.view(1, -1, 1, 1), scale.view(1, -1, 1, 1)
    if x.is_contiguous(memory_format=torch.channels_last):  # already rows: one pass, in the same layout
        return torch.addcmul(shift, x, scale)
    out = x.contiguous(memory_format=torch.channels_last)
    return torch.addcmul(shift, out, scale, out=out)


class _AffinePadded(torch.autograd.Function):
    """x * scale + shift per channel of x zero-padded by `pads` in x's own space (so the border holds shift), written
    in one pass; backward one pass over the inner window. F.pad then the affine map took a fill, a copy and a pass
    forward and a copy and a pass backward."""

    @staticmethod
    def forward(ctx, x, shift, scale, pads):
        left, right, top, bottom = pads
        n, c, h, w = x.shape
        layout = torch.channels_last if channels_last_only(x) else torch.contiguous_format
        out = torch.empty((n, c, h + top + bottom, w + left + right), dtype=x.dtype, device=x.device,
                          memory_format=layout)
        shift4, scale4 = shift.view(1, -1, 1, 1), scale.view(1, -1, 1, 1)
        for border in (out[:, :, :top], out[:, :, top + h:], out[:, :, top:top + h, :left],
                       out[:, :, top:top + h, left + w:]):
            border.copy_(shift4.expand(border.shape))
        torch.addcmul(shift4, x, scale4, out=out[:, :, top:top + h, left:left + w])
        ctx.save_for_backward(x if ctx.needs_input_grad[2] else None, scale)
        ctx.pads = pads
        return out

    @staticmethod
    def backward(ctx, grad):
        x, scale = ctx.saved_tensors
        left, right, top, bottom = ctx.pads
        inner = grad[:, :, top:grad.shape[2] - bottom, left:grad.shape[3] - right]
        need_x, need_shift, need_scale = ctx.needs_input_grad[:3]
        grad_x = inner * scale.view(1, -1, 1, 1) if need_x else None
        grad_shift = grad.sum((0, 2, 3)) if need_shift else None
        grad_scale = (inner * x).sum((0, 2, 3)) if need_scale else None
        return grad_x, grad_shift, grad_scale, None


def channels_last_only(x: torch.Tensor) -> bool:
    """Whether x [N, C, H, W] is in channels-last memory (and not also plain contiguous, as 1x1 images are)."""
    return not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def affine_padded(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor,
                  pads: tuple[int, int, int, int]) -> torch.Tensor | None:
    """F.pad(x, pads) * scale + shift per channel (zero padding, in x's layout) as one pass each way, or None where
    the plain ops must run instead (a tracer or exporter, mixed dtypes: the caller takes F.pad and the map)."""
    if (x.dim() != 4 or x.dtype != shift.dtype or x.dtype != scale.dtype or not x.dtype.is_floating_point
            or not dispatch.eager_call_allowed(x, scale) or type(shift) is not torch.Tensor):
        return None
    return _AffinePadded.apply(x, shift, scale, pads)


class _BiasInLayout(torch.autograd.Function):
    """y + bias per channel written in one pass into `memory_format` (the sum, then the layout, took two)."""

    @staticmethod
    def forward(ctx, y, bias, memory_format):
        return _sum_in_layout(y, bias, memory_format)

    @staticmethod
    def backward(ctx, grad):
        need_y, need_bias = ctx.needs_input_grad[:2]
        grad_bias = grad.sum_to_size(1, grad.shape[1], 1, 1).view(-1) if need_bias else None
        return grad if need_y else None, grad_bias, None


def _sum_in_layout(y: torch.Tensor, bias: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
    out = torch.empty(y.shape, dtype=torch.result_type(y, bias), device=y.device, memory_format=memory_format)
    return torch.add(y, bias.view(1, -1, 1, 1), out=out)


def add_bias(y: torch.Tensor, bias: torch.Tensor | None, memory_format: torch.memory_format) -> torch.Tensor:
    """y + bias per channel, in `memory_format`: one pass into a fresh tensor (the direct kernels' channels-last
    output is transposed on the way), under autograd too; when traced, compiled or exported (their graphs keep
    plain ops) or with mixed dtypes under autograd, the sum and then the layout."""
    if bias is None:
        return y.contiguous(memory_format=memory_format)
    graph = torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export()
    recorded = torch.is_grad_enabled() and (y.requires_grad or bias.requires_grad)
    if not graph and not recorded:
        return _sum_in_layout(y, bias, memory_format)
    if recorded and y.dtype == bias.dtype and dispatch.eager_call_allowed(y, bias):
        return _BiasInLayout.apply(y, bias, memory_format)
    return (y + bias.view(1, -1, 1, 1)).contiguous(memory_format=memory_format)


def pointwise_inference(x: torch.Tensor, table: torch.Tensor, stride: tuple[int, int], input_map: InputMap,
                        bias: torch.Tensor | None) -> torch.Tensor | None:
    """A whole 1x1 one-group inference layer in one native call (lookup_inference): read from and written to
    nn.Conv2d's layouts (NCHW or channels_last) with no transposed copies (normalized_pixels, pointwise_conv2d and
    add_bias in one pass). None where it does not apply: the caller takes those steps instead."""
    if not takes_linear_route(x, table, (1, 1)):
        return None
    return lookup_inference(x, table[0], input_map, bias, stride)


def pointwise_conv2d(x: torch.Tensor, table: torch.Tensor, stride: tuple[int, int]) -> torch.Tensor:
    """A 1x1, one-group convolution as the Linear lookup over the pixels' [N*OH*OW, C] rows (a free view of a
    channels_last input, one transposing copy of an NCHW one); [N, out, OH, OW] in channels-last memory."""
    if tuple(stride) != (1, 1):
        x = x[:, :, ::stride[0], ::stride[1]]
    n, c, h, w = x.shape
    # the table as a view: table[0]'s backward would zero-fill a table-sized gradient and copy into it (a quarter of
    # a 960->160 training step)
    y = lmkan_lookup(x.permute(0, 2, 3, 1).reshape(n * h * w, c), table.squeeze(0))
    return y.view(n, h, w, table.shape[-1]).permute(0, 3, 1, 2)


def conv_kernel2d(x: torch.Tensor, table: torch.Tensor, kernel_size: tuple[int, int], stride: tuple[int, int],
                  dilation: tuple[int, int]) -> torch.Tensor | None:
    """The direct convolution kernel (any geometry and groups), or None when the backend has none."""
    backend = dispatch.backend_for(x, table)
    if backend.conv2d_forward is None:
        return None
    geometry = (list(kernel_size), list(stride), list(dilation))
    if not (torch.is_grad_enabled() and (x.requires_grad or table.requires_grad)):
        return backend.conv2d_forward(x, table, *geometry)
    if backend.conv2d_backward is None:
        return None
    return _DirectConv2d.apply(x, table, geometry, backend.conv2d_forward, backend.conv2d_backward)
