"""Large CPU tables on 2 MB pages (the binding's huge_page_copy, ops.dispatch.huge_page_table, LMKANLayer._set_table):
the layers' tables from 4 MB on start 2 MB aligned (where MADV_HUGEPAGE can back them with huge pages), keep their
values and dtype, and everything a parameter goes through still works: optimizer steps, state_dict save/load,
deepcopy, pickling, .to(). Tables that torch allocates itself (those paths) are moved onto 2 MB pages too:
tests/test_cpu_table_paths.py."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from lmkan_surgery.nn import LMKANConv2d, LMKANLinear
from lmkan_surgery.ops.dispatch import HUGE_PAGE_TABLE_BYTES, huge_page_table
from huge_pages import on_huge_block

# the placement needs the native binding: a forced reference backend keeps tables where they are
pytestmark = pytest.mark.usefixtures("native_backend")


def _large_linear(**kwargs) -> LMKANLinear:
    """256 -> 256 at G = 8: 128 pairs x 81 rows x 256 outputs, 10.1 MiB in float32 (5.1 MiB in half precision)."""
    return LMKANLinear(256, 256, 8, **kwargs)


def _large_conv() -> tuple[LMKANConv2d, nn.Conv2d]:
    """An exact 3x3 64 -> 64 conversion: 288 pairs x 81 rows x 64 outputs, 5.7 MiB."""
    conv = nn.Conv2d(64, 64, 3, 1, 1)
    return LMKANConv2d.from_conv(conv, 8, input_mean=torch.zeros(64), input_std=torch.ones(64)), conv


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_huge_page_copy_keeps_values_dtype_and_shape(native, dtype):
    """The binding's copy of a non-contiguous tensor: contiguous, same values and dtype, on a 2 MB aligned block."""
    source = torch.randn(400, 9, 9, 70).to(dtype).transpose(0, 3)
    copy_ = native.huge_page_copy(source)
    assert copy_.dtype == dtype and copy_.shape == source.shape and copy_.is_contiguous()
    assert torch.equal(copy_, source)
    assert on_huge_block(copy_)


def test_small_or_non_cpu_tables_stay_where_they_are(native, monkeypatch):
    """Below the threshold, on the meta device or with the reference backend forced, the table itself comes back."""
    small = torch.randn(HUGE_PAGE_TABLE_BYTES // 4 - 1)
    assert huge_page_table(small) is small
    meta = torch.empty(HUGE_PAGE_TABLE_BYTES, device="meta")
    assert huge_page_table(meta) is meta
    monkeypatch.setenv("LMKAN_BACKEND", "reference")
    large = torch.randn(HUGE_PAGE_TABLE_BYTES // 4)
    assert huge_page_table(large) is large


@pytest.mark.parametrize("table_dtype", [None, "float16", "bfloat16"])
def test_linear_table_is_on_a_huge_block(native, table_dtype):
    """A new layer's table (random init) in every table dtype: 2 MB aligned, dtype kept, a parameter."""
    layer = _large_linear(table_dtype=table_dtype)
    expected = {None: torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[table_dtype]
    assert layer.table.dtype == expected and isinstance(layer.table, nn.Parameter) and layer.table.requires_grad
    assert on_huge_block(layer.table)


def test_exact_conversion_on_a_huge_block_is_exact(native):
    """from_conv's table (installed by _install_exact) is on a huge block and the layer still matches nn.Conv2d."""
    layer, conv = _large_conv()
    assert on_huge_block(layer.table)
    x = torch.randn(2, 64, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), conv(x), rtol=1e-4, atol=1e-4)


def test_optimizer_step_updates_the_table_in_place(native):
    layer = _large_linear()
    before = layer.table.detach().clone()
    pointer = layer.table.data_ptr()
    optimizer = torch.optim.Adam(layer.parameters(), lr=1e-2)
    layer(torch.randn(16, 256)).square().sum().backward()
    optimizer.step()
    assert layer.table.data_ptr() == pointer and not torch.equal(layer.table, before)


def test_state_dict_round_trip_keeps_values_and_block(native):
    """torch.save / torch.load of the state dict and load_state_dict into a new layer: values equal; the new layer
    keeps its own huge block (load_state_dict copies in place)."""
    layer, _ = _large_conv()
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    fresh, _ = _large_conv()
    fresh.load_state_dict(torch.load(buffer))
    assert torch.equal(fresh.table, layer.table) and on_huge_block(fresh.table)
