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
