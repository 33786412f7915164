"""LMKANConv2d: an lmKAN replacement for nn.Conv2d (NCHW, stride, padding incl. 'same'/'valid' and padding
modes, dilation, groups), evaluated as the lmKAN op over unfolded patches, chunked over the batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

from ..errors import ConfigError, ShapeError
from ..ops.conv import (add_bias, affine_padded, channels_last_only, direct_conv2d, normalized_pixels,
                        pointwise_inference, takes_linear_route)
from ..ops.lookup import InputMap
from .base import LMKANLayer
from .table_storage import resolve_table_dtype
from .tables import exact_linear_table, random_table, table_shape

PATCH_CHUNK_ELEMENTS = 16 * 2**20  # unfolded elements per chunk of images: bounds the im2col memory
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


class LMKANConv2d(LMKANLayer):
    """Each output pixel is sum_p f_{o,p} over adjacent pairs of the (c, ky, kx)-ordered patch of its group.

    ``preconditioning`` ("relu_first", "relu_last", "linear") adds the paper's branch, an nn.Conv2d of the same
    geometry applied to the same (padded, normalised) input; ``fold()`` merges "linear" and, for even G,
    "relu_first" exactly into the table.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", num_grids: int = 8,
                 input_norm: str = "none", preconditioning: str | None = None, init_scale: float = 0.1,
                 device=None, dtype=None, table_dtype: str | torch.dtype | None = None) -> None:
        factory = {"device": device, "dtype": dtype}
        super().__init__(num_grids, input_norm, in_channels, nn.BatchNorm2d, factory)
        if groups < 1 or in_channels % groups or out_channels % groups:
            raise ShapeError(f"in_channels={in_channels} and out_channels={out_channels} must divide by groups={groups}")
        if padding_mode not in PADDING_MODES:
            raise ConfigError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size, self.stride, self.dilation = _pair(kernel_size), _pair(stride), _pair(dilation)
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ConfigError(f"padding string must be 'same' or 'valid', got {padding!r}")
            if padding == "same" and self.stride != (1, 1):
                raise ConfigError("padding='same' is not supported for strided convolutions (as in nn.Conv2d)")
        self.padding = padding if isinstance(padding, str) else _pair(padding)
        self.padding_mode = padding_mode
        patch = (in_channels // groups) * self.kernel_size[0] * self.kernel_size[1]
        self.patch_features = patch
        shape = (groups, *table_shape(patch, out_channels // groups, self.num_grids))
        self._set_table(random_table(shape, patch, init_scale, device=device,
                                     dtype=resolve_table_dtype(table_dtype, dtype)))
        self.bias = nn.Parameter(torch.zeros(out_channels, **factory)) if bias else None
        branch = nn.Conv2d(in_channels, out_channels, self.kernel_size, self.stride, 0, self.dilation, groups,
                           bias=True, **factory) if preconditioning else None  # runs on the already padded input
        self._init_preconditioning(preconditioning, branch, factory)

    def _pads(self) -> tuple[int, int, int, int]:
        """(left, right, top, bottom) padding, as F.pad wants it, matching nn.Conv2d incl. 'same'."""
        if self.padding == "valid":
            return (0, 0, 0, 0)
        if self.padding == "same":
            pads = []
            for k, d in zip(reversed(self.kernel_size), reversed(self.dilation)):
                total = d * (k - 1)
                pads += [total // 2, total - total // 2]
            return tuple(pads)
        ph, pw = self.padding
        return (pw, pw, ph, ph)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_floating(x, "LMKANConv2d")
        unbatched = x.dim() == 3  # CHW, as nn.Conv2d accepts
        if unbatched:
            x = x.unsqueeze(0)
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ShapeError(f"LMKANConv2d expects NCHW (or unbatched CHW) input with C={self.in_channels}, "
                             f"got {tuple(x.shape)}")
        dtype = x.dtype
        channels_last = channels_last_only(x)
        if self.input_norm == "batchnorm":
            x = self._normalize(x, 1)
        pads, stride = self._pads(), self.stride
        input_map = self._pixel_rows(x, pads)
        if input_map is not None:  # 1x1 inference: one native call
            table, bias = self._table_and_bias()
            y = pointwise_inference(x, table, stride, input_map, bias)
            if y is not None:
                return y.squeeze(0) if unbatched else y
        padded = (affine_padded(x, self.input_shift, self.input_scale, pads)
                  if self.input_norm == "affine" and self.padding_mode == "zeros" and any(pads) else None)
        if padded is not None:  # zero padding and the affine map in one pass each way
            x = padded
        elif input_map is not None and self.input_norm == "affine":  # subsample, transpose, normalise in one copy
            x, stride = normalized_pixels(x, stride, self.input_shift, self.input_scale), (1, 1)
        else:
            if any(pads):
                mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
                x = F.pad(x, pads, mode=mode)
            if self.input_norm in ("affine", "quantile"):  # after padding: the original conv pads in raw input space
                x = self._normalize(x, 1)
        kh, kw = self.kernel_size
        out_h = (x.shape[2] - self.dilation[0] * (kh - 1) - 1) // stride[0] + 1
        out_w = (x.shape[3] - self.dilation[1] * (kw - 1) - 1) // stride[1] + 1
        if out_h < 1 or out_w < 1:
            raise ShapeError(f"input {tuple(x.shape[2:])} (after padding) is smaller than the kernel {self.kernel_size}")
        y = direct_conv2d(x, self.table, self.kernel_size, stride, self.dilation)  # inference, no patches
        if y is None and torch.compiler.is_exporting():
            y = self._forward_chunk(x, out_h, out_w)  # one chunk: a batch loop would specialise a dynamic batch size
        elif y is None:
            per_image = self.in_channels * kh * kw * out_h * out_w
            step = max(1, PATCH_CHUNK_ELEMENTS // max(1, per_image))
            outs = [self._forward_chunk(x[i:i + step], out_h, out_w) for i in range(0, max(1, x.shape[0]), step)]
            y = outs[0] if len(outs) == 1 else torch.cat(outs)
        if self.branch is not None:
            y = self._add_branch(y, x)
        # the direct kernels' output is channels-last memory: add_bias writes nn.Conv2d's layout
        layout = torch.channels_last if channels_last else torch.contiguous_format
        y = add_bias(y, self.bias, layout).to(dtype)  # nn.Conv2d: input dtype
        return y.squeeze(0) if unbatched else y

    def _pixel_rows(self, x: torch.Tensor, pads: tuple[int, ...]) -> InputMap | None:
        """The input map when this call may take the route over pixel rows (the one-call kernel; for the affine map
        the transposing copy normalized_pixels otherwise): 1x1, one group, no batch norm, padding or branch, no
        autograd through x. None otherwise."""
        if (self.input_norm == "batchnorm" or self.branch is not None or any(pads)
                or (torch.is_grad_enabled() and x.requires_grad)
                or not takes_linear_route(x, self.table, self.kernel_size)):
            return None
        return self._input_map()

    def _patches(self, x: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
        """Patches [N, L, groups, K] in (c, ky, kx) order, from a strided view (one copy; F.unfold is slower)."""
        (kh, kw), (dh, dw), (sh, sw) = self.kernel_size, self.dilation, self.stride
        view = x.unfold(2, dh * (kh - 1) + 1, sh).unfold(3, dw * (kw - 1) + 1, sw)  # [N, C, oh, ow, span_h, span_w]
        if dh > 1 or dw > 1:
            view = view[..., ::dh, ::dw]
        view = view.permute(0, 2, 3, 1, 4, 5)  # [N, oh, ow, C, kh, kw]
        return view.reshape(x.shape[0], out_h * out_w, self.groups, self.patch_features)

    def _forward_chunk(self, x: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
        n = x.shape[0]
        patches = self._patches(x, out_h, out_w)
        if self.groups == 1:
            y = self._lookup(patches.squeeze(2), self.table.squeeze(0))
        else:  # unbind, not [g]: each select's backward would zero-fill a gradient the size of all the groups'
            pieces = zip(patches.unbind(2), self.table.unbind(0))
            y = torch.cat([self._lookup(p, table) for p, table in pieces], dim=-1)
        return y.view(n, out_h, out_w, self.out_channels).permute(0, 3, 1, 2).contiguous()  # [N, out, oh, ow]

    def _branch_matrix(self) -> torch.Tensor:
        return self.branch.weight.reshape(self.groups, self.out_channels // self.groups, self.patch_features)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, num_grids: int = 8, input_mean: torch.Tensor | None = None,
                  input_std: torch.Tensor | None = None,
                  table_dtype: str | torch.dtype | None = None) -> "LMKANConv2d":
        """An LMKANConv2d computing exactly conv(x); per-channel statistics normalise inputs onto the grid."""
        if not isinstance(conv, nn.Conv2d):
            raise ConfigError(f"from_conv expects nn.Conv2d, got {type(conv).__name__}")
        weight = conv.weight.detach()
        mean, std = cls._exact_statistics(conv.in_channels, input_mean, input_std, weight.device,
                                          resolve_table_dtype(table_dtype, weight.dtype))
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    conv.groups, True, conv.padding_mode, num_grids, "affine",
                    device="meta", dtype=weight.dtype, table_dtype=table_dtype)
        groups, out_g, in_g = conv.groups, conv.out_channels // conv.groups, conv.in_channels // conv.groups
        w64 = weight.to(torch.float64).reshape(groups, out_g, in_g, -1)  # [g, out_g, in_g, kh*kw]
        bias = (w64.sum(-1) * mean.view(groups, 1, in_g)).sum(-1).reshape(-1)
        if conv.bias is not None:
            bias = bias + conv.bias.detach().to(torch.float64)
        patch_std = std.view(groups, in_g).repeat_interleave(w64.shape[-1], dim=1)
        table = exact_linear_table(w64.reshape(groups, out_g, -1), num_grids, patch_std, layer.table.dtype)
        layer._install_exact(table, bias, mean, std)
        return layer

    def extra_repr(self) -> str:
        parts = [f"{self.in_channels}, {self.out_channels}", f"kernel_size={self.kernel_size}",
                 f"stride={self.stride}", f"padding={self.padding}", f"num_grids={self.num_grids}"]
        if self.dilation != (1, 1):
            parts.append(f"dilation={self.dilation}")
        if self.groups != 1:
            parts.append(f"groups={self.groups}")
        if self.padding_mode != "zeros":
            parts.append(f"padding_mode={self.padding_mode}")
        if self.bias is None:
            parts.append("bias=False")
        if self.preconditioning:
            parts.append(f"preconditioning={self.preconditioning}")
        return ", ".join(parts)
