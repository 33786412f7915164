"""The one-call inference layer with the other input maps: quantile placement (the planner's students) and none.
LMKANLinear and the 1x1 LMKANConv2d run the placement, the lookup and the bias in one native call; against the
layer's step-by-step route bit for bit (the same placement pass, the lookup of u with scale 1 and shift 0: fma(u, 1,
0) is u) and against the float64 layer; the kernel's cached interval tables follow the knots when they change."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.utils.parametrize

from lmkan_surgery.errors import LMKANError
from lmkan_surgery.nn import LMKANConv2d, LMKANLinear
from lmkan_surgery.nn.placement import placement_intervals
from lmkan_surgery.ops import dispatch

from isa import isa_path
from one_call import by_steps, count_calls, far_inputs, perturbed
from oracles import naive_lookup


def _skewed(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Heavy-tailed, skewed samples (exp of a normal, shifted), as real activations are."""
    gen = torch.Generator().manual_seed(seed)
    return torch.exp(1.5 * torch.randn(shape, generator=gen)) - 1.0


def _calibrated(layer: torch.nn.Module, samples: torch.Tensor, channel_dim: int) -> torch.nn.Module:
    layer.calibrate_placement(samples, channel_dim=channel_dim)
    return perturbed(layer)


def _check(layer: torch.nn.Module, x: torch.Tensor, calls: list) -> None:
    """One native call, the steps' bits, the float64 layer's values within 2e-5 (relative to its largest)."""
    calls.clear()
    with torch.no_grad():
        y = layer(x)
    assert calls == [1]
    steps = by_steps(layer, x)
    assert torch.equal(y, steps) and y.stride() == steps.stride()
    if y.numel():
        with torch.no_grad():
            truth = copy.deepcopy(layer).double()(x.double())
        assert (y.double() - truth).abs().max().item() <= 2e-5 * max(1.0, truth.abs().max().item())


@pytest.mark.parametrize("isa", ["avx512", "avx2", "generic"])
def test_linear_quantile_and_none_in_one_call(native, isa, monkeypatch):
    """288 -> 32 at batch 1, 18 -> 70 (a tile and a narrow rest), 40 -> 3 (few outputs), batch 0 and 5, strided and
    column-major rows, a float16 table; skewed inputs with far ones (1e3, 1e20) beyond the placement's saturation."""
    calls = count_calls(monkeypatch)
    with isa_path(native, isa):
        for seed, (n_in, n_out, dtype, batch) in enumerate(((288, 32, None, 1), (18, 70, None, 5),
                                                            (40, 3, torch.float16, 5), (14, 11, None, 0))):
            torch.manual_seed(seed)
            quantile = _calibrated(LMKANLinear(n_in, n_out, 8, input_norm="quantile", table_dtype=dtype),
                                   _skewed((512, n_in), seed), -1)
            plain = perturbed(LMKANLinear(n_in, n_out, 6, table_dtype=dtype))
            x = torch.cat([_skewed((batch, n_in), seed + 10), far_inputs((batch, n_in), seed)])
            for layer in (quantile, plain):
                _check(layer, x, calls)
                if x.shape[0] > 1:
                    _check(layer, x[::2], calls)
                    _check(layer, x.t().contiguous().t(), calls)


@pytest.mark.parametrize("isa", ["avx512", "avx2", "generic"])
def test_pointwise_quantile_and_none_in_one_call(native, isa, monkeypatch):
    """1x1 at stride 1 and 2, NCHW and channels_last, batch 1 and 2, an unbatched CHW input: the output in
    nn.Conv2d's layout for the input's."""
    calls = count_calls(monkeypatch)
    with isa_path(native, isa):
        for seed, (c_in, c_out, stride) in enumerate(((16, 24, 1), (10, 7, 2))):
            torch.manual_seed(seed)
            quantile = _calibrated(LMKANConv2d(c_in, c_out, 1, stride, num_grids=8, input_norm="quantile"),
                                   _skewed((4, c_in, 6, 6), seed), 1)
            plain = perturbed(LMKANConv2d(c_in, c_out, 1, stride, num_grids=5))
            for batch in (1, 2):
                x = torch.cat([_skewed((batch, c_in, 7, 5), seed + 3), far_inputs((batch, c_in, 7, 5), seed)], dim=3)
                for layer in (quantile, plain):
                    _check(layer, x, calls)
                    _check(layer, x.contiguous(memory_format=torch.channels_last), calls)
            _check(quantile, x[0], calls)


def test_cached_intervals_follow_the_knots(native, monkeypatch):
    """placement_intervals keeps one set per knots tensor until the knots change in place (recalibration, a loaded
    state dict): the one-call output then follows the new knots, as the steps do."""
    calls = count_calls(monkeypatch)
    layer = _calibrated(LMKANLinear(12, 9, 8, input_norm="quantile"), _skewed((256, 12), 0), -1)
    first = placement_intervals(layer.input_knots, 8)[0]
    assert placement_intervals(layer.input_knots, 8)[0] is first
    x = _skewed((4, 12), 1)
    with torch.no_grad():
        before = layer(x)
    layer.calibrate_placement(3.0 * _skewed((256, 12), 2))
    assert placement_intervals(layer.input_knots, 8)[0] is not first
    _check(layer, x, calls)
    with torch.no_grad():
        assert not torch.equal(layer(x), before)
        state = copy.deepcopy(layer.state_dict())
        layer.input_knots.zero_()  # a broken map, then the saved one loaded back over it in place
        layer.load_state_dict(state)
    _check(layer, x, calls)


def test_batchnorm_and_gradients_keep_the_steps(native, monkeypatch):
    """Batch norm has no one-call form; a gradient to record through x takes the steps (placement's du/dx)."""
    calls = count_calls(monkeypatch)
    norm = LMKANLinear(12, 9, 8, input_norm="batchnorm").eval()
    quantile = _calibrated(LMKANLinear(12, 9, 8, input_norm="quantile"), _skewed((256, 12), 0), -1)
    x = _skewed((4, 12), 1)
    with torch.no_grad():
        norm(x)
    leaf = x.clone().requires_grad_(True)
    quantile(leaf).sum().backward()
    assert calls == [] and leaf.grad is not None and torch.isfinite(leaf.grad).all()


class _Doubled(torch.nn.Module):
    def forward(self, value: torch.Tensor) -> torch.Tensor:
        return 2.0 * value


def test_parametrized_map_takes_the_steps(native, monkeypatch):
    """A parametrized input_scale is no plain buffer: the layer takes the steps, which apply the parametrization."""
    calls = count_calls(monkeypatch)
    torch.manual_seed(3)
    layer = perturbed(LMKANLinear.from_linear(torch.nn.Linear(12, 9), 8, torch.randn(12), torch.rand(12) + 0.5))
    doubled = copy.deepcopy(layer)
    with torch.no_grad():
        doubled.input_scale.mul_(2.0)
    torch.nn.utils.parametrize.register_parametrization(layer, "input_scale", _Doubled())
    x = _skewed((4, 12), 1)
    with torch.no_grad():
        y = layer(x)
        assert calls == []
        expected = doubled(x)
    assert calls == [1] and torch.allclose(y, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["table", "bias"])
def test_parametrized_table_or_bias_is_applied(native, monkeypatch, name):
    """A parametrized table or bias is no entry of the parameter dict: the layer reads it as an attribute (the
    parametrization's value), in one call or by the steps alike."""
    calls = count_calls(monkeypatch)
    torch.manual_seed(4)
    layer = perturbed(LMKANLinear.from_linear(torch.nn.Linear(12, 9), 8, torch.randn(12), torch.rand(12) + 0.5))
    doubled = copy.deepcopy(layer)
    with torch.no_grad():
        getattr(doubled, name).mul_(2.0)
    torch.nn.utils.parametrize.register_parametrization(layer, name, _Doubled())
    x = _skewed((4, 12), 1)
    with torch.no_grad():
        y, expected = layer(x), doubled(x)
    assert calls == [1, 1] and torch.equal(y, expected)


def _one_call_arguments() -> dict:
    """Valid arguments of the binding's one-call kernel: x [3, 12], an affine map, a [6, 9, 9, 5] table, a bias."""
    gen = torch.Generator().manual_seed(5)
    return {"x": torch.randn(3, 12, generator=gen), "scale": torch.rand(12, generator=gen) + 0.5,
            "shift": torch.randn(12, generator=gen), "table": torch.randn(6, 9, 9, 5, generator=gen),
            "bias": torch.randn(5, generator=gen), "step": (1, 1)}


@pytest.mark.parametrize("defect", ["x float64", "x 3-d", "table float64", "table 5 pairs", "scale float64",
                                    "bias float64", "x requires grad", "table requires grad", "bias requires grad"])
def test_kernel_declines_inputs_it_does_not_take(native, defect):
    """The kernel checks its own inputs (no per-call Python checks): None for a dtype, a shape or, under grad mode, a
    gradient to record; the same arguments without the defect give the float64 layer's values."""
    args = _one_call_arguments()
    x, scale, shift, table, bias = (args[k] for k in ("x", "scale", "shift", "table", "bias"))
    expected = naive_lookup(x.double() * scale.double() + shift.double(), table.double()) + bias.double()
    assert torch.allclose(native.pointwise_forward(**args).double(), expected, rtol=1e-5, atol=1e-5)
    key, change = defect.split(" ", 1)
    if change == "float64":
        args[key] = args[key].double()
    elif change == "3-d":
        args[key] = args[key].unsqueeze(-1)
    elif change == "requires grad":
        args[key] = args[key].clone().requires_grad_(True)
        with torch.no_grad():
            assert native.pointwise_forward(**args) is not None  # nothing to record: it runs
    else:  # 5 pairs against x's 6
        args[key] = args[key][:5]
    assert native.pointwise_forward(**args) is None


def test_backend_setting_follows_the_environment(native, monkeypatch):
    """LMKAN_BACKEND read without os.environ.get still follows every change of the environment."""
    x = torch.zeros(1, 2)
    monkeypatch.setenv("LMKAN_BACKEND", " Reference ")
    assert dispatch.forced_backend() == "reference" and dispatch.one_call_kernel(x) is None
    monkeypatch.setenv("LMKAN_BACKEND", "cpu")
    assert dispatch.forced_backend() == "cpu" and dispatch.one_call_kernel(x) is not None
    monkeypatch.delenv("LMKAN_BACKEND")
    assert dispatch.forced_backend() is None and dispatch.one_call_kernel(x) is not None
    monkeypatch.setenv("LMKAN_BACKEND", "gpu")
    with pytest.raises(LMKANError, match="LMKAN_BACKEND='gpu'"):
        dispatch.forced_backend()
