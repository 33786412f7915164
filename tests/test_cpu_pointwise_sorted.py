"""The one-call 1x1 layer on the cell-sorted forward with a planar input (NCHW or a strided view of it): the input is
located feature-major straight from its channel planes (locate_planes) instead of gathered into pixel rows and
transposed back. Against the layer's step-by-step route (the Linear's cell-sorted forward over gathered
rows: the same bits) and float64, on every instruction-set path, and 1 vs 2 threads bitwise."""

from __future__ import annotations

import pytest
import torch

from isa import isa_path
from one_call import count_calls
from test_cpu_pointwise import _check, _inputs, _layer


@pytest.fixture
def sorted_path(monkeypatch):
    """Every table over the large-table threshold (lowered to 0) and the cell-sorted forward on."""
    monkeypatch.setenv("LMKAN_CPU_LARGE_TABLE_BYTES", "0")
    monkeypatch.setenv("LMKAN_CPU_SORTED_FORWARD", "1")


@pytest.mark.parametrize("isa", ["avx512", "avx2", "generic"])
def test_planar_input_matches_the_rows_route_and_float64(native, isa, monkeypatch, sorted_path):
    """Odd shapes at G = 3 (enough pixels per cell to sort): 5 pairs -> 72 outputs (64 + 8), 7 -> 150 (a narrow
    rest), 3 -> 96; strides 1, 2 and (1, 2); NCHW and a cropped view (planar), channels_last (the rows route);
    batch 0, 1 and 3; float32, float16 and bfloat16 tables, bias and none."""
    calls = count_calls(monkeypatch)
    with isa_path(native, isa):
        cases = ((10, 72, 1, None, True, 3), (14, 150, 2, torch.float16, False, 1),
                 (6, 96, (1, 2), torch.bfloat16, True, 3), (10, 72, 1, None, True, 0))
        for seed, (c_in, c_out, stride, dtype, bias, batch) in enumerate(cases):
            layer = _layer(c_in, c_out, stride, 3, dtype, bias, seed)
            x = _inputs(layer, batch, 15, 13, seed)
            for view in (x, x[:, :, 1:, :-1], x.contiguous(memory_format=torch.channels_last)):
                _check(layer, view, calls)


def test_planar_input_one_and_two_threads_bitwise_equal(native, monkeypatch, sorted_path):
    """2 threads give the bits of 1 thread (160 outputs: tiles 64, 64, 32; 150: a narrow rest), on NCHW input at
    stride 1 and 2, at G = 3 and G = 8 (8 x 14 x 14 pixels, 48 pairs)."""
    calls = count_calls(monkeypatch)
    threads = torch.get_num_threads()
    try:
        for seed, (c_out, grids) in enumerate(((160, 3), (150, 8))):
            layer = _layer(96, c_out, 1, grids, seed=seed)
            x = _inputs(layer, 8, 14, 14, seed)
            for stride in (1, 2):
                layer.stride = (stride, stride)
                outs = []
                for count in (1, 2):
                    torch.set_num_threads(count)
                    with torch.no_grad():
                        outs.append(layer(x))
                assert torch.equal(outs[0], outs[1])
                _check(layer, x, calls)
    finally:
        torch.set_num_threads(threads)
