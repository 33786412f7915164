"""Direct lmKAN convolution for inference: LMKANConv2d's lookup without materialised patches, where a kernel has it.

Only calls that need no op node take it (see ``dispatch.direct_call_allowed``): training, tracing (fvcore),
torch.compile/export and ONNX export keep the patch path through ``lmkan::lookup2d``, so the pair layout, the FLOP
handle and the exported graph are those of the patch form; the results agree to float32 rounding.
"""

from __future__ import annotations

import torch

from . import dispatch


def direct_conv2d(x: torch.Tensor, table: torch.Tensor, kernel_size: tuple[int, int], stride: tuple[int, int],
                  dilation: tuple[int, int]) -> torch.Tensor | None:
    """The lookup over the padded, normalised input x [N, C, H, W] with table [groups, P, G+1, G+1, out / groups],
    as [N, out, OH, OW] (channels-last memory), or None when the direct kernel does not apply here."""
    if x.dtype != torch.float32 or x.dim() != 4 or not dispatch.direct_call_allowed(x, table):
        return None
    kernel = dispatch.backend_for(x, table).conv2d_forward
    if kernel is None:
        return None
    return kernel(x, table, list(kernel_size), list(stride), list(dilation))
