"""Tables that torch allocates itself land on 2 MB pages too (LMKANLayer's register_parameter, _apply,
_load_from_state_dict and __setstate__ hooks; ops.dispatch.table_movable_to_huge_pages): unpickling, deepcopy,
torch.load of a whole model, lmkan_surgery.load, load_state_dict (assign=True, or in place after to_empty),
.to() / .half() / .double(), the half-table widening of distillation. Each keeps the values bitwise, the dtype,
requires_grad, the Parameter where torch keeps it (optimizers hold it) and sharing: tied tables, shared memory, a
file mapping and tensors held outside the layer stay where they are."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from torch import nn

from lmkan_surgery.distill.master_tables import float32_master_tables
from lmkan_surgery.nn import LMKANConv2d, LMKANLinear
from huge_pages import on_huge_block

# the placement needs the native binding: a forced reference backend keeps tables where they are
pytestmark = pytest.mark.usefixtures("native_backend")


def _large_linear(**kwargs) -> LMKANLinear:
    """256 -> 256 at G = 8: 10.1 MiB in float32 (5.1 MiB in half precision), a random (non-zero) table."""
    torch.manual_seed(0)
    return LMKANLinear(256, 256, 8, **kwargs)


def _outputs_and_grads(layer: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's output and its table's gradient for a fixed output gradient (the table's .grad is cleared)."""
    layer.table.grad = None
    y = layer(x)
    y.backward(torch.linspace(-1, 1, y.numel()).view_as(y))
    return y.detach(), layer.table.grad


def _assert_same_layer(moved: nn.Module, original: nn.Module) -> None:
    """On a 2 MB block, same table bits, dtype and requires_grad, bitwise equal outputs and table gradients."""
    assert on_huge_block(moved.table) and isinstance(moved.table, nn.Parameter)
    assert moved.table.dtype == original.table.dtype and moved.table.requires_grad == original.table.requires_grad
    assert torch.equal(moved.table, original.table)
    x = torch.randn(8, moved.in_features, generator=torch.Generator().manual_seed(1))
    for got, want in zip(_outputs_and_grads(moved, x), _outputs_and_grads(original, x)):
        assert torch.equal(got, want)


@pytest.mark.parametrize("how", ["deepcopy", "pickle", "torch.load"])
def test_unpickled_and_copied_tables_move(native, how):
    layer = _large_linear()
    if how == "deepcopy":
        other = copy.deepcopy(layer)
    elif how == "pickle":
        other = pickle.loads(pickle.dumps(layer))
    else:
        buffer = io.BytesIO()
        torch.save(nn.Sequential(layer), buffer)
        buffer.seek(0)
        other = torch.load(buffer, weights_only=False)[0]
    _assert_same_layer(other, layer)


def test_deepcopy_keeps_a_tied_table_tied(native):
    """Two layers sharing one table Parameter share it after deepcopy (moved once, seen by both)."""
    first, second = _large_linear(), _large_linear()
    second.table = first.table
    model = copy.deepcopy(nn.Sequential(first, second))
    assert model[0].table is model[1].table and on_huge_block(model[0].table)


def test_load_state_dict_assign_moves_the_assigned_table(native):
    layer = _large_linear()
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    with torch.device("meta"):
        fresh = LMKANLinear(256, 256, 8)
    fresh.load_state_dict(torch.load(buffer), assign=True)
    _assert_same_layer(fresh, layer)


def test_load_state_dict_into_an_emptied_layer_keeps_the_parameter(native):
    """to_empty() then an in-place load_state_dict (lmkan_surgery.load's way, the distillation's resume): the same
    Parameter, so an optimizer made before the load still steps the moved table."""
    layer = _large_linear()
    with torch.device("meta"):
        fresh = LMKANLinear(256, 256, 8)
    fresh.to_empty(device="cpu")
    parameter = fresh.table
    optimizer = torch.optim.SGD(fresh.parameters(), lr=0.1)
    fresh.load_state_dict(layer.state_dict())
    assert fresh.table is parameter and optimizer.param_groups[0]["params"][0] is parameter
    _assert_same_layer(fresh, layer)
    before = fresh.table.detach().clone()
    optimizer.step()
    assert on_huge_block(fresh.table) and not torch.equal(fresh.table, before)


def test_project_save_and_load_put_tables_on_huge_pages(native, tmp_path):
    """lmkan_surgery.save / load of an lmkanify student: the rebuilt layers (meta, to_empty, state dict) moved."""
    from lmkan_surgery import LMKANConfig, load, lmkanify, save

    def base() -> nn.Module:
        torch.manual_seed(2)
        return nn.Sequential(nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 8, 1))

    x = torch.randn(1, 64, 5, 5)
    student, _ = lmkanify(base(), LMKANConfig(mode="exact", num_grids=8, skip_defaults=False),
                          example_inputs=x)
    assert isinstance(student[0], LMKANConv2d) and on_huge_block(student[0].table)
    save(student, tmp_path / "student.pt")
    loaded = load(tmp_path / "student.pt", base)
    assert on_huge_block(loaded[0].table) and torch.equal(loaded[0].table, student[0].table)
    with torch.no_grad():
        assert torch.equal(loaded(x), student(x))


@pytest.mark.parametrize("convert", ["double", "half", "bfloat16-float"])
def test_dtype_conversions_keep_the_parameter(native, convert):
    """Module._apply: the same Parameter (its .grad converted alongside), now on a 2 MB block."""
    layer = _large_linear()
    parameter = layer.table
    layer.table.grad = torch.ones_like(layer.table)
    want = layer.table.detach().clone()
    if convert == "double":
        layer.double()
    elif convert == "half":
        layer.half()
    else:
        layer.to(torch.bfloat16).float()
        want = want.bfloat16().float()
    assert layer.table is parameter and on_huge_block(layer.table) and layer.table.requires_grad
    assert torch.equal(layer.table, want.to(layer.table.dtype)) and layer.table.grad.dtype == layer.table.dtype


def test_half_table_widening_of_distillation_moves_both_ways(native):
    """distill.master_tables: the float32 master table and the half table it is rounded back to."""
    layer = _large_linear(table_dtype="float16")
    half = layer.table.detach().clone()
    with float32_master_tables(layer):
        assert layer.table.dtype == torch.float32 and on_huge_block(layer.table)
        assert torch.equal(layer.table, half.float())
    assert layer.table.dtype == torch.float16 and on_huge_block(layer.table) and torch.equal(layer.table, half)


def test_shared_held_and_file_mapped_tables_stay(native, tmp_path):
    """Sharing wins: share_memory(), a tensor assigned while its owner keeps it, an mmap-loaded state dict."""
    layer = _large_linear().share_memory()
    assert layer.table.is_shared()
    kept = torch.randn(128, 9, 9, 256)
    layer.table = nn.Parameter(kept)
    assert layer.table.data_ptr() == kept.data_ptr() and not on_huge_block(layer.table)
    torch.save(_large_linear().state_dict(), tmp_path / "state.pt")
    with torch.device("meta"):
        fresh = LMKANLinear(256, 256, 8)
    state = torch.load(tmp_path / "state.pt", mmap=True)
    fresh.load_state_dict(state, assign=True)
    assert fresh.table.data_ptr() == state["table"].data_ptr()


def test_small_tables_are_not_moved(native):
    """Below 4 MiB nothing is copied: a deepcopy's table stays torch's."""
    layer = LMKANLinear(16, 16, 8)
    other = copy.deepcopy(layer)
    assert torch.equal(other.table, layer.table) and not on_huge_block(other.table)


def test_fake_tensor_layers_are_left_alone(native):
    """A layer built under FakeTensorMode (tracing, export) keeps its fake table: no copy into real memory (the
    binding's copy_ of a FakeTensor raised in Round 13's _set_table)."""
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    with FakeTensorMode():
        layer = _large_linear()
    assert isinstance(layer.table, FakeTensor) and layer.table.shape == (128, 9, 9, 256)
