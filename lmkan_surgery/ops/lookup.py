"""The one torch.library op family of lmKAN: ``lmkan::lookup2d`` and its backward ``lmkan::lookup2d_backward``.

Both take ``x[B, 2P]`` and ``table[P, G+1, G+1, N_out]`` (the canonical layout, see ``ops/reference.py``) and
route to the backend chosen by ``ops/dispatch.py`` (native kernel or the pure-PyTorch reference). The ops have
fake implementations, so torch.compile, torch.export, fvcore and the ONNX exporter see one named node per layer.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..errors import DeviceError, DTypeError, ShapeError
from ..grid import check_num_grids
from . import dispatch

_FLOAT_DTYPES = (torch.float32, torch.float64)
_HALF_DTYPES = (torch.float16, torch.bfloat16)
_TABLE_DTYPES = _FLOAT_DTYPES + _HALF_DTYPES


@torch.library.custom_op("lmkan::lookup2d", mutates_args=())
def lookup2d_op(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """y[b, o] = sum_p f_{o,p}(x[b, 2p], x[b, 2p+1]); x [B, 2P] contiguous, table [P, G+1, G+1, N_out]."""
    return dispatch.backend_for(x, table).forward(x, table)


@lookup2d_op.register_fake
def _lookup2d_fake(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    return x.new_empty(x.shape[0], table.shape[3])


@torch.library.custom_op("lmkan::lookup2d_backward", mutates_args=())
def lookup2d_backward_op(
    grad_out: torch.Tensor, x: torch.Tensor, table: torch.Tensor, need_x: bool, need_table: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients for x and for the table; a gradient that is not needed comes back as an empty tensor."""
    grad_x, grad_table = dispatch.backend_for(x, table).backward(grad_out, x, table, need_x, need_table)
    empty = x.new_empty(0)
    return (grad_x if grad_x is not None else empty, grad_table if grad_table is not None else empty.to(table.dtype))


@lookup2d_backward_op.register_fake
def _lookup2d_backward_fake(grad_out, x, table, need_x, need_table):
    grad_x = torch.empty_like(x) if need_x else x.new_empty(0)
    grad_table = torch.empty_like(table) if need_table else table.new_empty(0)
    return grad_x, grad_table


def _setup_context(ctx, inputs, output):
    x, table = inputs
    ctx.save_for_backward(x, table)


def _backward(ctx, grad_out):
    x, table = ctx.saved_tensors
    need_x, need_table = ctx.needs_input_grad
    grad_x, grad_table = lookup2d_backward_op(grad_out.contiguous(), x, table, need_x, need_table)
    return (grad_x if need_x else None, grad_table if need_table else None)


lookup2d_op.register_autograd(_backward, setup_context=_setup_context)


class _EagerLookup(torch.autograd.Function):
    """The op's autograd node for eager training: the backend called directly, without the torch.library layers
    (40-80 us per layer and step saved on CPU); same forward and backward as lookup2d_op. Once differentiable, as the
    op (its backward has no derivative)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        backend = dispatch.backend_for(x, table)
        ctx.backward_fn = backend.backward
        ctx.save_for_backward(x, table)
        return backend.forward(x, table)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        x, table = ctx.saved_tensors
        need_x, need_table = ctx.needs_input_grad
        return ctx.backward_fn(grad_out.contiguous(), x, table, need_x, need_table)


def check_lookup_inputs(x: torch.Tensor, table: torch.Tensor) -> None:
    """Raise a specific LMKANError when x or table cannot go through the lmKAN op."""
    if not isinstance(x, torch.Tensor) or not isinstance(table, torch.Tensor):
        raise DTypeError(f"x and table must be tensors, got {type(x).__name__} and {type(table).__name__}")
    if table.dim() != 4 or table.shape[1] != table.shape[2]:
        raise ShapeError(f"table must have shape [P, G+1, G+1, N_out], got {tuple(table.shape)}")
    check_num_grids(int(table.shape[1]) - 1)  # int(): under jit tracing shapes are tensors (fvcore)
    if x.dim() < 1:
        raise ShapeError("x must have at least one dimension (the features)")
    if x.shape[-1] != 2 * table.shape[0]:
        raise ShapeError(
            f"x has {x.shape[-1]} features in its last dimension but the table holds {table.shape[0]} input pairs "
            f"(expects {2 * table.shape[0]} features)"
        )
    if x.dtype not in _FLOAT_DTYPES + (torch.float16, torch.bfloat16):
        raise DTypeError(f"x must be a floating tensor (float32, float64, float16, bfloat16), got {x.dtype}")
    if table.dtype not in _TABLE_DTYPES:
        raise DTypeError(f"table must be float32, float64, float16 or bfloat16, got {table.dtype}")
    if x.device != table.device:
        raise DeviceError(f"x is on {x.device} but the table is on {table.device}: move both to one device")


def _exporting() -> bool:
    """Inside torch.export (the dynamo ONNX exporter) or the TorchScript ONNX exporter."""
    return torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export()


def lmkan_lookup(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Apply the lmKAN 2-D lookup to x[..., 2P] with table [P, G+1, G+1, N_out]; returns [..., N_out].

    float16/bfloat16 inputs are computed in float32 and the result is cast back to the input dtype; a float16 or
    bfloat16 table with float32 (or half) inputs stays in its storage dtype and is read with float32 accumulation.
    """
    check_lookup_inputs(x, table)
    compute_dtype = x.dtype if x.dtype in _FLOAT_DTYPES else torch.float32
    # half storage, float32 maths; exporters get a float32 table (lmkan.LMKAN2D types X and the table alike)
    keep_half = table.dtype in _HALF_DTYPES and compute_dtype == torch.float32 and not _exporting()
    if table.dtype != compute_dtype and not keep_half:
        table = table.to(compute_dtype)
    flat = x if x.dim() == 2 else x.reshape(-1, x.shape[-1])  # no-op calls skipped: each costs ~0.5 us at batch 1
    if flat.dtype != compute_dtype:
        flat = flat.to(compute_dtype)
    flat, table = flat.contiguous(), table.contiguous()
    if dispatch.direct_call_allowed(flat, table):  # inference: skip the op's Python dispatch layers
        y = dispatch.backend_for(flat, table).forward(flat, table)
    elif dispatch.eager_call_allowed(flat, table) and not torch._C._are_functorch_transforms_active():
        y = _EagerLookup.apply(flat, table)  # eager training: the same, recorded by a plain autograd node
    else:
        y = lookup2d_op(flat, table)
    if x.dim() != 2:
        y = y.reshape(*x.shape[:-1], table.shape[3])
    return y if y.dtype == x.dtype else y.to(x.dtype)


class InputMap(NamedTuple):
    """A layer's input map as the one-call kernel takes it: x * scale + shift per feature (affine), the quantile
    placement's interval tables [3, K-1, F] and first value v0 (nn.placement.placement_intervals), or neither (the
    identity, input_norm "none")."""

    scale: torch.Tensor | None = None
    shift: torch.Tensor | None = None
    intervals: torch.Tensor | None = None
    v0: float = 0.0


def lookup_inference(x: torch.Tensor, table: torch.Tensor, input_map: InputMap, bias: torch.Tensor | None,
                     stride: tuple[int, int] = (1, 1)) -> torch.Tensor | None:
    """Inference in one native CPU call: the lookup of input_map(x) (per feature, x [N, 2P, H, W] with the features
    on dim 1, any strides, every pixel of x[:, :, ::sh, ::sw] a sample) plus the bias, [N, out, OH, OW] in x's
    layout; a Linear's x [N, 2P] (stride (1, 1)) gives [N, out]. The same bits as the steps (the input map,
    lmkan_lookup, the bias add; an affine map where torch's addcmul is one fused multiply-add), without their passes
    over x and y and their Python layers (the per-call cost at batch 1). None where it does not apply (not float32 on
    the CPU, autograd to record, a graph being traced, no such kernel; the kernel checks the tensors itself): the
    caller takes the steps instead."""
    if not dispatch.eager_call_allowed(x, table):
        return None
    kernel = dispatch.one_call_kernel(x)
    if kernel is None:
        return None
    return kernel(x, input_map.scale, input_map.shift, table, bias, stride, input_map.intervals, input_map.v0)
