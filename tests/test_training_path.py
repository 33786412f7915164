"""The training fast paths (issue 16 step time) against independent references: the lookup's eager autograd node
against autograd through the naive loop (float64) and the torch.library op, the batched Hessian term against
autograd through the stencil definition, and the engine's clipping against clip_grad_norm_."""

import copy

import pytest
import torch

from lmkan_surgery import LMKANLinear
from lmkan_surgery.distill import TrainConfig, train_lmkan
from lmkan_surgery.nn.hessian import hessian_term, stencil_penalty
from lmkan_surgery.ops import lmkan_lookup, lookup2d_op
from oracles import naive_lookup


def _inputs(dtype, pairs=3, g=6, outputs=4, batch=9, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(batch, 2 * pairs, generator=gen, dtype=torch.float64) * 1.5).to(dtype).requires_grad_(True)
    table = torch.randn(pairs, g + 1, g + 1, outputs, generator=gen, dtype=torch.float64).to(dtype)
    return x, table.requires_grad_(True), torch.randn(batch, outputs, generator=gen, dtype=torch.float64).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_eager_lookup_node_matches_autograd_of_the_naive_loop(dtype):
    """Eager training records the lookup with the plain autograd node; its gradients equal autograd through the
    naive float64 loop, and (float32: the native kernel) the torch.library op's bit for bit."""
    x, table, gy = _inputs(dtype)
    y = lmkan_lookup(x, table)
    assert type(y.grad_fn).__name__ == "_EagerLookupBackward"
    gx, gt = torch.autograd.grad(y, (x, table), gy)
    x64, t64 = x.detach().double(), table.detach().double().requires_grad_(True)
    (et,) = torch.autograd.grad(naive_lookup(x64, t64), (t64,), gy.double())
    ex = torch.zeros_like(x64)  # the naive loop is piecewise bilinear in x: central differences per column
    for k in range(x64.shape[1]):
        step = torch.zeros_like(x64)
        step[:, k] = 1e-6
        slope = (naive_lookup(x64 + step, t64.detach()) - naive_lookup(x64 - step, t64.detach())) / 2e-6
        ex[:, k] = (slope * gy.double()).sum(1)
    tol = {"rtol": 1e-7, "atol": 1e-7} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-4}
    torch.testing.assert_close(gx.double(), ex, **tol)
    torch.testing.assert_close(gt.double(), et, **tol)
    ox, ot = torch.autograd.grad(lookup2d_op(x, table), (x, table), gy)
    assert torch.equal(gx, ox) and torch.equal(gt, ot)


def test_eager_lookup_node_skips_unneeded_gradients_and_refuses_double_backward():
    x, table, gy = _inputs(torch.float32)
    (gt,) = torch.autograd.grad(lmkan_lookup(x.detach(), table), (table,), gy)
    (expected,) = torch.autograd.grad(lookup2d_op(x.detach(), table), (table,), gy)
    assert torch.equal(gt, expected)
    (gx,) = torch.autograd.grad(lmkan_lookup(x, table), (x,), gy, create_graph=True)
    with pytest.raises(RuntimeError):
        gx.sum().backward()


def test_hessian_term_equals_autograd_over_mixed_grids():
    """hessian_term over tables of G 4, 8 (one 2Q matmul; one output: one mm) and 16 (per-axis form): value and
    factor-weighted gradients equal autograd of the sum, and (relative) of the mean of penalty / (F var(T))."""
    gen = torch.Generator().manual_seed(3)
    shapes = [(3, 5, 5, 4), (4, 9, 9, 1), (2, 3, 9, 9, 2), (2, 17, 17, 3)]
    tables = [torch.randn(s, generator=gen, dtype=torch.float64).requires_grad_(True) for s in shapes]
    for relative in (False, True):
        terms = [stencil_penalty(t) for t in tables]
        if relative:
            terms = [p / (len(tables) * (t.numel() / t.shape[-2] ** 2) * t.detach().var())
                     for p, t in zip(terms, tables)]
        reference = torch.stack(terms).sum()
        expected = torch.autograd.grad(reference, tables)
        value, grads, factors = hessian_term(tables, relative)
        assert value.item() == pytest.approx(reference.item(), rel=1e-10)
        assert len(factors) == len(tables) and all(isinstance(f, float) for f in factors)
        for grad, factor, exp in zip(grads, factors, expected):
            torch.testing.assert_close(grad * factor, exp, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("clip", [1e-3, 1e6, None])
def test_engine_first_step_clips_as_clip_grad_norm(clip):
    """The engine's gradients after its first step (clipped, with the Hessian term) equal autograd's of
    mse + lambda * penalty passed through clip_grad_norm_: clipped (1e-3), not reached (1e6), off (None)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(LMKANLinear(4, 6, 4), LMKANLinear(6, 2, 4)).double()
    x, y = torch.randn(32, 4, dtype=torch.float64), torch.randn(32, 2, dtype=torch.float64)
    lam = 0.3
    reference = copy.deepcopy(model)
    loss = torch.nn.functional.mse_loss(reference(x).float(), y.float())
    loss = loss + lam * sum(m.hessian_penalty() for m in reference)
    loss.backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(reference.parameters(), clip)
    grads = {}
    cfg = TrainConfig(epochs=1, batch_size=32, lr=1e-3, task="regression", hessian_start=lam, gamma_target=None,
                      grad_clip=clip, progress=False)
    train_lmkan(model, (x, y), None, cfg,
                on_step_end=lambda step: grads.update({n: p.grad.clone() for n, p in model.named_parameters()}))
    for name, p in reference.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-9, atol=1e-15)
    if clip == 1e-3:
        assert torch.cat([g.flatten() for g in grads.values()]).norm().item() == pytest.approx(1e-3, rel=1e-4)
