"""An LMKANConv2d training step takes its groups' tables and patches as views (squeeze / unbind), never by indexing:
the backward of `table[g]` zero-fills a gradient the size of the whole table and copies into it, which was a quarter
of a 1x1 960->160 training step. Gradients against float64 autograd through the naive reference."""

from __future__ import annotations

import pytest
import torch

from lmkan_surgery.nn import LMKANConv2d
from lmkan_surgery.ops.dispatch import BACKEND_ENV

from conv_oracles import reference_grads


def _graph_nodes(root: torch.autograd.graph.Node) -> set[str]:
    seen, names, todo = set(), set(), [root]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        todo += [next_node for next_node, _ in node.next_functions]
    return names


@pytest.mark.parametrize("kernel, groups, backend", [
    (1, 1, None),  # the 1x1 Linear route of the native kernels
    (3, 1, "reference"),  # the patch path (no direct kernel), one group
    (3, 3, "reference"),  # the patch path, a table per group
])
def test_training_graph_selects_no_table_or_patch_and_gradients_match_float64(kernel, groups, backend, monkeypatch):
    if backend is not None:
        monkeypatch.setenv(BACKEND_ENV, backend)
    layer = LMKANConv2d(6, 9, kernel, padding=kernel // 2, groups=groups, num_grids=5, init_scale=2.0)
    gen = torch.Generator().manual_seed(kernel + groups)
    x = (2 * torch.randn(2, 6, 5, 7, generator=gen)).requires_grad_(True)
    y = layer(x)
    assert "SelectBackward0" not in _graph_nodes(y.grad_fn)
    dy = torch.randn(y.shape, generator=gen)
    gx, gt = torch.autograd.grad(y, [x, layer.table], dy)
    rx, rt = reference_grads(layer, x, dy)
    assert (gx.double() - rx).abs().max().item() <= 2e-5 * max(1.0, rx.abs().max().item())
    assert (gt.double() - rt).abs().max().item() <= 2e-5 * max(1.0, rt.abs().max().item())
