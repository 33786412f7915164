"""The op stays one node through opcheck, torch.compile(fullgraph=True) and torch.export."""

import torch
from torch import nn

from lmkan_surgery import LMKANConv2d, LMKANLinear
from lmkan_surgery.ops import lookup2d_op


def test_opcheck():
    x = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    table = torch.randn(3, 5, 5, 4, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(lookup2d_op, (x, table))


def small_model():
    return nn.Sequential(LMKANLinear(6, 8), nn.ReLU(), LMKANLinear(8, 3))


def test_compile_fullgraph():
    model = small_model()
    x = torch.randn(4, 6)
    compiled = torch.compile(model, fullgraph=True)
    assert torch.allclose(compiled(x), model(x), atol=1e-6)


def test_export_keeps_one_node_per_layer():
    model = nn.Sequential(small_model(), nn.Unflatten(1, (3, 1, 1)), LMKANConv2d(3, 2, 1))
    exported = torch.export.export(model, (torch.randn(4, 6),))
    targets = [n.target for n in exported.graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.lmkan.lookup2d.default) == 3
    x = torch.randn(4, 6)
    assert torch.allclose(exported.module()(x), model(x), atol=1e-6)


class _OpRecorder(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the overload of every op dispatched while active."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.seen.append(func)
        return func(*args, **(kwargs or {}))


def test_inference_fast_path_matches_the_op_and_modes_still_see_it():
    """Under no_grad the backend is called directly (no op dispatch layers), with the op's result; a dispatch mode
    (as a FLOP counter uses) and a graph that records gradients still go through lmkan::lookup2d."""
    torch.manual_seed(0)
    layer = LMKANLinear(10, 7)
    x = torch.randn(3, 10)
    with torch.no_grad():
        direct = layer(x)
        with _OpRecorder() as rec:
            via_op = layer(x)
    assert torch.ops.lmkan.lookup2d.default in rec.seen
    assert torch.equal(direct, via_op)
    with_grad = layer(x)
    assert with_grad.grad_fn is not None and torch.equal(with_grad.detach(), direct)
