"""The CPU binding's pool of large outputs (kernels/cpu/torch_output_pool.h): a freed table gradient's block is taken
again by the next backward (no fresh pages), and autograd stays right while blocks are recycled: .grad summed over
several backward calls, retain_graph, hooks that keep gradients alive, the Linear backward as the convolution's."""

from __future__ import annotations

import os
import subprocess
import sys

import torch
from torch import nn

from lmkan_surgery.nn import LMKANConv2d
from lmkan_surgery.ops.lookup import lmkan_lookup
from lmkan_surgery.ops.reference import forward_reference

from conv_oracles import reference_grads

POOLED_BYTES = 4 << 20  # kPooledBytes: the pool's smallest output


def _conv_layer() -> LMKANConv2d:
    """A 3x3 64 -> 64 layer: 288 pairs x 81 rows x 64 outputs, a 5.7 MiB table gradient (pooled)."""
    layer = LMKANConv2d.from_conv(nn.Conv2d(64, 64, 3, 1, 1), 8, input_mean=torch.zeros(64),
                                  input_std=torch.ones(64))
    assert layer.table.numel() * 4 >= POOLED_BYTES
    return layer


def _close(got: torch.Tensor, want: torch.Tensor) -> bool:
    return (got.double() - want).abs().max().item() <= 2e-5 * max(1.0, want.abs().max().item())


def test_freed_table_gradient_block_is_taken_again(native):
    """The bare backward's table gradient, once freed, is kept (output_pool_bytes) and the next call writes into
    the same block, whole: the second call's bits equal the first's although the block held other values; the
    storage stays resizable."""
    layer = _conv_layer()
    x = nn.functional.pad(torch.randn(1, 64, 6, 6), layer._pads())
    table, geometry = layer.table.detach(), ([3, 3], [1, 1], [1, 1])
    dy = torch.randn(1, 64, 6, 6)
    _, first = native.conv2d_backward(dy, x, table, *geometry, True, True)
    pointer, expected = first.data_ptr(), first.clone()
    first.fill_(float("nan"))  # stale values the next call must overwrite everywhere
    del first
    assert native.output_pool_bytes() >= table.numel() * 4
    _, second = native.conv2d_backward(dy, x, table, *geometry, True, True)
    assert second.data_ptr() == pointer
    assert torch.equal(second, expected)
    second.resize_(second.numel() + 1)  # resizable as torch.empty's storage (a copy into a new block)
    assert torch.equal(second[:-1], expected.flatten())
    del second
    native.release_output_pool()
    assert native.output_pool_bytes() == 0


def test_conv_grad_accumulates_over_backward_calls_with_recycled_blocks(native):
    """Three backward calls with different output gradients: .grad is their sum (the second and third gradients
    land in the block the previous one freed after being added), and a hook's kept gradients stay intact."""
    layer = _conv_layer()
    x = torch.randn(2, 64, 5, 5)
    kept = []
    handle = layer.table.register_hook(lambda g: kept.append(g))
    dys = [torch.randn(2, 64, 5, 5) for _ in range(3)]
    try:
        for dy in dys:
            layer(x).backward(dy)
    finally:
        handle.remove()
    refs = [reference_grads(layer, x, dy)[1] for dy in dys]
    assert len({g.data_ptr() for g in kept}) == 3  # alive gradients never share a block
    assert all(_close(g, r) for g, r in zip(kept, refs))
    assert _close(layer.table.grad, sum(refs))


def test_conv_retain_graph_and_set_to_none(native):
    """Backward twice through one retained graph doubles .grad; after .grad = None the next backward's gradient
    (from a recycled block) is the single gradient again."""
    layer = _conv_layer()
    x = torch.randn(1, 64, 4, 4)
    dy = torch.randn(1, 64, 4, 4)
    y = layer(x)
    y.backward(dy, retain_graph=True)
    y.backward(dy)
    ref = reference_grads(layer, x, dy)[1]
    assert _close(layer.table.grad, 2 * ref)
    layer.table.grad = None
    layer(x).backward(dy)
    assert _close(layer.table.grad, ref)


def test_linear_grad_accumulates_over_backward_calls_with_recycled_blocks(native):
    """The Linear backward's table gradient (128 pairs x 81 rows x 160 outputs, 6.3 MiB) takes the pool too."""
    x = torch.randn(32, 256)
    table = (0.1 * torch.randn(128, 9, 9, 160)).requires_grad_(True)
    dys = [torch.randn(32, 160) for _ in range(3)]
    for dy in dys:
        lmkan_lookup(x, table).backward(dy)
    table64 = table.detach().double().requires_grad_(True)
    ref = torch.autograd.grad(forward_reference(x.double(), table64), table64, sum(dy.double() for dy in dys))[0]
    assert _close(table.grad, ref)


def test_pool_cap_zero_keeps_no_block(native):
    """LMKAN_CPU_OUTPUT_POOL_MB=0 (read at the first pooled output of a process): freed outputs are freed at once."""
    script = ("import torch\n"
              "from lmkan_surgery.kernels import build\n"
              "m = build.load_native('cpu')\n"
              "y = m.forward(torch.randn(1024, 16), torch.randn(8, 9, 9, 1024))\n"
              "assert y.nbytes >= 4 << 20\n"
              "del y\n"
              "print(m.output_pool_bytes())\n")
    env = dict(os.environ, LMKAN_CPU_OUTPUT_POOL_MB="0")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split()[-1] == "0"
    y = native.forward(torch.randn(1024, 16), torch.randn(8, 9, 9, 1024))
    del y
    assert native.output_pool_bytes() >= 1024 * 1024 * 4  # this process keeps it (default cap)
    native.release_output_pool()


def test_public_release_frees_the_kept_blocks(native):
    """lmkan_surgery.release_cpu_output_pool() returns the kept bytes to the system and says how many they were;
    the next large output maps a new block and is still right."""
    import lmkan_surgery

    layer = _conv_layer()
    x = torch.randn(1, 64, 6, 6, requires_grad=True)
    layer(x).sum().backward()  # the table gradient becomes .grad: nothing freed yet
    layer(x).sum().backward()  # the second gradient is added to .grad and freed into the pool
    kept = native.output_pool_bytes()
    assert kept >= layer.table.numel() * 4
    assert lmkan_surgery.release_cpu_output_pool() == kept
    assert native.output_pool_bytes() == 0
    before = layer.table.grad.clone()
    layer(x).sum().backward()
    assert torch.allclose(layer.table.grad, 1.5 * before, rtol=1e-6, atol=1e-6)
