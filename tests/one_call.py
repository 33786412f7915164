"""Test helpers shared by the one-call inference tests (ops.lookup.lookup_inference: the input map,
the lookup and the bias in one native call, from LMKANConv2d 1x1 and LMKANLinear)."""

from __future__ import annotations

import dataclasses

import torch

from lmkan_surgery.ops import dispatch


def addcmul_is_fma() -> bool:
    """Whether torch's addcmul rounds once (then the one-call layer must give the steps' bits exactly)."""
    gen = torch.Generator().manual_seed(0)
    x, s, h = (torch.randn(4096, generator=gen) for _ in range(3))
    return torch.equal(torch.addcmul(h, x, s), (x.double() * s.double() + h.double()).float())


def count_calls(monkeypatch) -> list:
    """Counts the native one-call layer's runs: its calls that returned an output, not those where the kernel
    declined the inputs (None: the layer then takes the steps). The backend is otherwise unchanged."""
    backend = dispatch.backend_for(torch.zeros(1), torch.zeros(1))
    calls, native = [], backend.pointwise_forward
    assert native is not None

    def counted(*args):
        y = native(*args)
        if y is not None:
            calls.append(1)
        return y

    monkeypatch.setitem(dispatch._native_cache, "cpu", dataclasses.replace(backend, pointwise_forward=counted))
    return calls


def far_inputs(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Raw inputs of `shape`: 2 N(0, 1), 15% far outside the grid (up to 1e3) and one at 1e20 (element 7)."""
    gen = torch.Generator().manual_seed(seed)
    x = 2 * torch.randn(shape, generator=gen)
    x = torch.where(torch.rand(x.shape, generator=gen) < 0.15, 1e3 * (2 * torch.rand(x.shape, generator=gen) - 1), x)
    if x.numel() > 7:
        x.view(-1)[7] = 1e20
    return x


def perturbed(layer: torch.nn.Module) -> torch.nn.Module:
    """A converted layer made non-exact: noise on its table (in the table's dtype) and a random bias."""
    with torch.no_grad():
        layer.table.add_((0.1 * torch.randn(layer.table.shape)).to(layer.table.dtype))
        layer.bias.normal_()
    return layer


def by_steps(layer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's step-by-step inference (normalisation, lookup, bias as separate ops): the one call switched off."""
    saved = dispatch._native_cache["cpu"]
    dispatch._native_cache["cpu"] = dataclasses.replace(saved, pointwise_forward=None)
    try:
        with torch.no_grad():
            return layer(x)
    finally:
        dispatch._native_cache["cpu"] = saved
