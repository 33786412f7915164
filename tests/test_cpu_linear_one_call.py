"""LMKANLinear inference in one native call: with affine input normalisation (as lmkanify's exact layers have it),
no preconditioning branch and an even width, a float32 CPU forward with no gradient to record runs the
normalisation, the lookup and the bias in one call (the per-call cost at batch 1, issue 13). Against the layer's
step-by-step route (bitwise where torch's addcmul is one fused multiply-add) and against the float64 layer."""

from __future__ import annotations

import copy

import pytest
import torch

from lmkan_surgery.nn import LMKANLinear

from isa import isa_path
from one_call import addcmul_is_fma, by_steps, count_calls, far_inputs, perturbed


def _layer(n_in: int, n_out: int, grids: int, dtype=None, seed: int = 0) -> LMKANLinear:
    """A converted layer (affine normalisation from input statistics) with a perturbed, non-exact table and bias."""
    torch.manual_seed(seed)
    linear = torch.nn.Linear(n_in, n_out)
    return perturbed(LMKANLinear.from_linear(linear, grids, input_mean=torch.randn(n_in),
                                             input_std=torch.rand(n_in) + 0.5, table_dtype=dtype))


def _inputs(layer: LMKANLinear, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Raw inputs around the layer's statistics; 15% far outside the grid (up to 1e3 and one at 1e20)."""
    x = far_inputs((*shape, layer.in_features), seed)
    return (x - layer.input_shift) / layer.input_scale


def _check(layer: LMKANLinear, x: torch.Tensor, calls: list) -> None:
    """One native call, the steps' values (bits where addcmul is an FMA), the float64 layer's within 2e-5."""
    calls.clear()
    with torch.no_grad():
        y = layer(x)
    assert calls == [1]
    steps = by_steps(layer, x)
    assert y.shape == steps.shape == (*x.shape[:-1], layer.out_features) and y.is_contiguous()
    if addcmul_is_fma():
        assert torch.equal(y, steps)
    if y.numel():
        wide = copy.deepcopy(layer).double()  # float64: the reference backend, a float64 table
        with torch.no_grad():
            truth = wide(x.double())
        assert (y.double() - truth).abs().max().item() <= 2e-5 * max(1.0, truth.abs().max().item())


@pytest.mark.parametrize("isa", ["avx512", "avx2", "generic"])
def test_one_call_linear_matches_the_steps_and_float64(native, isa, monkeypatch):
    """288 -> 32 at batch 1 (the per-call shape), 18 -> 70 (a tile and a narrow rest), 40 -> 3 (the few-output
    path); batch 0, 1 and 5, a 1-D and a 3-D input and a strided view; float32, float16 and bfloat16 tables."""
    calls = count_calls(monkeypatch)
    with isa_path(native, isa):
        cases = ((288, 32, 8, None, (1,)), (18, 70, 5, torch.bfloat16, (5,)), (40, 3, 8, None, (2, 3)),
                 (14, 11, 6, torch.float16, (0,)), (20, 16, 8, None, ()))
        for seed, (n_in, n_out, grids, dtype, shape) in enumerate(cases):
            layer = _layer(n_in, n_out, grids, dtype, seed)
            x = _inputs(layer, shape, seed)
            _check(layer, x, calls)
            if x.dim() == 2 and x.shape[0] > 1:
                _check(layer, x[::2], calls)  # rows two apart: strided, not contiguous
                _check(layer, x.t().contiguous().t(), calls)  # column-major


@pytest.mark.parametrize("isa", ["avx512", "avx2", "generic"])
def test_one_call_linear_on_the_sorted_and_streamed_paths(native, isa, monkeypatch):
    """Over the (lowered) large-table threshold: the cell-sorted forward (enough samples per cell at G = 3) and the
    streamed one (sorting switched off), 72 outputs."""
    calls = count_calls(monkeypatch)
    monkeypatch.setenv("LMKAN_CPU_LARGE_TABLE_BYTES", "0")
    with isa_path(native, isa):
        layer = _layer(20, 72, 3, seed=5)
        x = _inputs(layer, (390,), 5)
        for sorted_forward in ("1", "0"):
            monkeypatch.setenv("LMKAN_CPU_SORTED_FORWARD", sorted_forward)
            for view in (x, x.t().contiguous().t()):  # rows and column-major (feature planes)
                _check(layer, view, calls)


def test_one_call_linear_one_and_two_threads_bitwise_equal(native, monkeypatch):
    """Above the serial cut (256 samples, 64 pairs, 96 outputs)."""
    calls = count_calls(monkeypatch)
    layer = _layer(128, 96, 8, seed=7)
    x = _inputs(layer, (256,), 7)
    threads = torch.get_num_threads()
    outs = []
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            with torch.no_grad():
                outs.append(layer(x))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(outs[0], outs[1]) and len(calls) == 2


def test_layers_the_one_call_does_not_take(native, monkeypatch):
    """A gradient to record, an odd width (a zero partner feature), a preconditioning branch, batch norm and a
    float64 input take the steps (and give their results)."""
    calls = count_calls(monkeypatch)
    layer = _layer(14, 11, 8)
    x = _inputs(layer, (3,), 0)
    layer(x.clone().requires_grad_(True)).sum().backward()
    layer(x).sum().backward()
    assert calls == [] and layer.table.grad is not None and layer.bias.grad is not None
    odd = _layer(13, 5, 8, seed=1)
    branch = LMKANLinear(14, 11, 8, input_norm="affine", preconditioning="linear")
    norm = LMKANLinear(14, 11, 8, input_norm="batchnorm").eval()
    with torch.no_grad():
        for module, inputs in ((odd, _inputs(odd, (3,), 1)), (branch, x), (norm, x), (layer, x.double())):
            out = module(inputs)
            assert calls == [] and out.shape == (3, module.out_features) and out.dtype == inputs.dtype
        assert torch.allclose(layer(x.double()), layer(x).double(), rtol=1e-4, atol=1e-4)
    assert calls == [1]
