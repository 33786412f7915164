"""The one-call 1x1 inference layer (lmkan_cpu_pointwise_forward): LMKANConv2d with affine input normalisation in
inference, 1x1 and one group, runs the normalisation, the Linear lookup over the pixels and the bias in one native
call reading and writing nn.Conv2d's layouts. Against the layer's step-by-step route (the same kernel with the call
switched off: bitwise where torch's addcmul is one fused multiply-add, as on the x86 paths) and against float64."""

from __future__ import annotations

import pytest
import torch

from lmkan_surgery.nn import LMKANConv2d

from conv_oracles import reference_conv
from isa import isa_path
from one_call import addcmul_is_fma, by_steps, count_calls, far_inputs, perturbed


def _layer(c_in: int, c_out: int, stride, grids: int, dtype=None, bias: bool = True, seed: int = 0) -> LMKANConv2d:
    """A converted 1x1 layer (affine normalisation from input statistics) with a perturbed, non-exact table."""
    torch.manual_seed(seed)
    conv = torch.nn.Conv2d(c_in, c_out, 1, stride, bias=bias)
    layer = perturbed(LMKANConv2d.from_conv(conv, grids, input_mean=torch.randn(c_in),
                                            input_std=torch.rand(c_in) + 0.5, table_dtype=dtype))
    if not bias:
        layer.bias = None
    return layer


def _inputs(layer: LMKANConv2d, batch: int, h: int, w: int, seed: int) -> torch.Tensor:
    """Raw inputs around the layer's statistics; 15% far outside the grid (up to 1e3 and one at 1e20)."""
    x = far_inputs((batch, layer.in_channels, h, w), seed)
    return (x - layer.input_shift.view(1, -1, 1, 1)) / layer.input_scale.view(1, -1, 1, 1)


def _check(layer: LMKANConv2d, x: torch.Tensor, calls: list) -> None:
    """One call, nn.Conv2d's output layout, the steps' values (bits where addcmul is an FMA), float64."""
    calls.clear()
    with torch.no_grad():
        y = layer(x)
    assert calls == [1]
    steps = by_steps(layer, x)
    layout = torch.channels_last if not x.is_contiguous() and x.is_contiguous(
        memory_format=torch.channels_last) else torch.contiguous_format
    assert y.shape == steps.shape and y.is_contiguous(memory_format=layout)
    if addcmul_is_fma():
        assert torch.equal(y, steps)
    if not y.numel():
        return
    plain = LMKANConv2d(layer.in_channels, layer.out_channels, 1, layer.stride, num_grids=layer.table.shape[2] - 1)
    with torch.no_grad():  # the oracle's layer: no normalisation, a float32 table, a zero bias for none
        plain.table.copy_(layer.table.float())
        plain.bias.copy_(layer.bias if layer.bias is not None else torch.zeros(layer.out_channels))
    normalised = torch.addcmul(layer.input_shift.view(1, -1, 1, 1), x.double(), layer.input_scale.view(1, -1, 1, 1))
    truth = reference_conv(plain, normalised.float())
    assert (y.double() - truth).abs().max().item() <= 2e-5 * max(1.0, truth.abs().max().item())


@pytest.mark.parametrize("isa", ["avx512", "avx2", "generic"])
def test_one_call_layer_matches_the_steps_and_float64(native, isa, monkeypatch):
    """The fused path's shapes: 7 pairs -> 11 outputs (a narrow tile), 9 -> 70 (a tile and a narrow rest), 20 -> 3
    (the few-output path); strides 1, 2 and (2, 1); NCHW, channels_last and a cropped (strided) view; batch 0, 1
    and 3 (and one unbatched CHW image); bias and none; float32, float16 and bfloat16 tables."""
    calls = count_calls(monkeypatch)
    with isa_path(native, isa):
        cases = ((14, 11, 1, 8, None, True, 3), (18, 70, 2, 5, torch.bfloat16, False, 1),
                 (40, 3, (2, 1), 8, None, True, 2), (14, 11, (1, 2), 6, torch.float16, True, 0))
        for seed, (c_in, c_out, stride, grids, dtype, bias, batch) in enumerate(cases):
            layer = _layer(c_in, c_out, stride, grids, dtype, bias, seed)
            x = _inputs(layer, batch, 9, 8, seed)
            for view in (x, x.contiguous(memory_format=torch.channels_last), x[:, :, 1:, :-1]):
                _check(layer, view, calls)
            if batch:
                with torch.no_grad():  # unbatched CHW, as nn.Conv2d takes it
                    assert torch.equal(layer(x[0]), layer(x[:1])[0])


@pytest.mark.parametrize("isa", ["avx512", "avx2", "generic"])
def test_one_call_layer_on_the_sorted_and_streamed_paths(native, isa, monkeypatch):
    """Tables over the (lowered) large-table threshold: the whole batch's rows are gathered around the cell-sorted
    forward (enough pixels per cell at G = 3) and the streamed one (sorting switched off); 72 outputs, both layouts."""
    calls = count_calls(monkeypatch)
    monkeypatch.setenv("LMKAN_CPU_LARGE_TABLE_BYTES", "0")
    with isa_path(native, isa):
        layer = _layer(10, 72, 1, 3, None, True, 5)
        x = _inputs(layer, 2, 15, 13, 5)
        for sorted_forward in ("1", "0"):
            monkeypatch.setenv("LMKAN_CPU_SORTED_FORWARD", sorted_forward)
            for view in (x, x.contiguous(memory_format=torch.channels_last)):
                _check(layer, view, calls)


@pytest.mark.parametrize("isa", ["avx512", "generic"])
def test_one_call_layer_writes_output_planes_by_pixel_runs(native, isa, monkeypatch):
    """The NCHW output is written channel by channel over runs of consecutive pixels (8 or more), the rest pixel by
    pixel: one output channel (its planes back to back: runs across images), images of 7 pixels (pixel by pixel),
    of exactly 8, of 8 x 3 in a batch of 312 pixels (more than one block); with and without bias."""
    calls = count_calls(monkeypatch)
    with isa_path(native, isa):
        cases = ((6, 1, 5, 3, 4, True), (6, 1, 5, 3, 4, False), (10, 19, 1, 7, 3, True), (10, 19, 2, 4, 5, False),
                 (8, 33, 8, 3, 13, True))
        for seed, (c_in, c_out, h, w, batch, bias) in enumerate(cases):
            layer = _layer(c_in, c_out, 1, 4, None, bias, seed)
            _check(layer, _inputs(layer, batch, h, w, seed), calls)


def test_one_call_layer_one_and_two_threads_bitwise_equal(native, monkeypatch):
    """Above the serial cut (8 x 28 x 28 pixels, 64 pairs, 96 outputs), NCHW and channels_last at stride 1 and 2."""
    calls = count_calls(monkeypatch)
    layer = _layer(128, 96, 1, 8, seed=7)
    x = _inputs(layer, 8, 28, 28, 7)
    threads = torch.get_num_threads()
    try:
        for stride in (1, 2):
            layer.stride = (stride, stride)
            for view in (x, x.contiguous(memory_format=torch.channels_last)):
                outs = []
                for count in (1, 2):
                    torch.set_num_threads(count)
                    with torch.no_grad():
                        outs.append(layer(view))
                assert torch.equal(outs[0], outs[1])
    finally:
        torch.set_num_threads(threads)
    assert len(calls) == 8


def test_autograd_keeps_the_steps(native, monkeypatch):
    """With a gradient to record (through x, the table or the bias) the layer does not take the one call."""
    calls = count_calls(monkeypatch)
    layer = _layer(14, 11, 1, 8)
    x = _inputs(layer, 2, 5, 5, 0)
    layer(x.clone().requires_grad_(True)).sum().backward()
    layer(x).sum().backward()
    assert calls == [] and layer.table.grad is not None and layer.bias.grad is not None
    with torch.no_grad():
        layer(x)
    assert calls == [1]
