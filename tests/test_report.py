"""Savings report: the fvcore handle equals the lmKAN formula, totals match fvcore, latency, files, rendering."""

import json

import pytest
import torch
import torchvision
from torch import nn

from lmkan_surgery import LMKANConv2d, LMKANLinear
from lmkan_surgery.report import FlopCrossCheckError, LayerRow, compare, count_flops, flops

pytest.importorskip("fvcore")


def _small_cnn() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, groups=2), nn.ReLU(),
                         nn.Flatten(), nn.Linear(8 * 7 * 7, 11), nn.ReLU(), nn.Linear(11, 10))


def _converted(cnn: nn.Sequential) -> nn.Sequential:
    return nn.Sequential(cnn[0], nn.ReLU(), LMKANConv2d.from_conv(cnn[2]), nn.ReLU(), nn.Flatten(),
                         LMKANLinear.from_linear(cnn[5]), nn.ReLU(), LMKANLinear.from_linear(cnn[7]))


# (layer, input, expected MACs by hand: 2 * N_in(rounded up to even) * N_out * output positions)
CASES = [
    ("linear-even", lambda: LMKANLinear(8, 6), (4, 8), 2 * 8 * 6 * 4),
    ("linear-odd", lambda: LMKANLinear(7, 5), (4, 7), 2 * 8 * 5 * 4),
    ("linear-3d", lambda: LMKANLinear(10, 3, num_grids=5), (2, 3, 10), 2 * 10 * 3 * 6),
    ("conv-odd-patch", lambda: LMKANConv2d(3, 4, 3, padding=1), (2, 3, 6, 6), 2 * 28 * 4 * (2 * 36)),
    ("conv-groups-stride", lambda: LMKANConv2d(4, 6, 3, stride=2, groups=2), (2, 4, 9, 9), 2 * 18 * 6 * (2 * 16)),
    ("conv-1x1-dilation", lambda: LMKANConv2d(6, 2, 1, dilation=2), (1, 6, 5, 4), 2 * 6 * 2 * 20),
]


@pytest.mark.parametrize("name,make,shape,expected", CASES, ids=[c[0] for c in CASES])
def test_handle_equals_layer_formula(name, make, shape, expected):
    layer, x = make(), torch.randn(shape)
    counts = count_flops(layer, (x,))
    assert counts.lookup_by_module[""] == expected
    assert flops.cross_check(layer, (x,), counts) == {"": expected}


def test_cross_check_mismatch_is_an_error(monkeypatch):
    layer, x = LMKANLinear(8, 4), torch.randn(3, 8)
    monkeypatch.setattr(flops, "lookup_flop_handle", lambda inputs, outputs: 1)
    counts = count_flops(layer, (x,))
    with pytest.raises(FlopCrossCheckError, match="formula gives 192"):
        flops.cross_check(layer, (x,), counts)


def test_unconverted_torchvision_totals_equal_fvcore():
    from fvcore.nn import FlopCountAnalysis

    model, x = torchvision.models.resnet18(num_classes=10).eval(), torch.randn(1, 3, 64, 64)
    report = compare(model, model, (x,), batch_sizes=(1,), repeats=3, per_layer=False)
    with flops.quiet():
        own = FlopCountAnalysis(model, (x,))
        own_total, own_modules = own.total(), own.by_module()
    assert report.original.flops == report.converted.flops == own_total
    assert report.flop_ratio == 1.0 and report.param_ratio == 1.0
    for row in report.layers[:-1]:
        assert row.flops_before == own_modules[row.name] and row.verdict == "unchanged"
    assert report.by_module() == {name: (n, n) for name, n in own_modules.items()}
    assert sum(row.flops_before for row in report.layers) == own_total


def test_compare_converted_model_reports_and_saves(tmp_path, capfd):
    cnn = _small_cnn().eval()
    report = compare(cnn, _converted(cnn), torch.randn(4, 3, 16, 16), batch_sizes=(1, 8), repeats=5)
    assert report.converted.flops == report.original.flops + 56448 + 17248 + 520
    assert report.param_ratio > 1
    assert [(r.device, r.batch_size) for r in report.latency] == [("cpu", 1), ("cpu", 8)]
    assert all(0 < r.original_s < 5 and 0 < r.converted_s < 5 and 0.01 < r.ratio < 100 for r in report.latency)
    rows = {row.name: row for row in report.layers}
    assert rows["0"].verdict == "unchanged" and rows["2"].converted and rows["7"].formula_flops == 960
    assert all(rows[n].latency_after_s > 0 for n in ("2", "5", "7"))
    text = str(report)
    assert "multiply-adds" in text and "Conv2d -> LMKANConv2d" in text and "batch 8" in text
    assert "TorchScript" not in capfd.readouterr().err
    paths = report.save(tmp_path / "out")
    data = json.loads(paths["json"].read_text())
    assert data["flop_ratio"] == pytest.approx(report.flop_ratio) and len(data["layers"]) == len(report.layers)
    assert data["latency"][0]["ratio"] == pytest.approx(report.latency[0].ratio)
    assert "| layer | type |" in paths["md"].read_text()
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_same_model_latency_ratio_is_sane():
    model = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256)).eval()
    report = compare(model, model, torch.randn(2, 256), batch_sizes=(1, 64), repeats=20, per_layer=False)
    assert all(0.25 < row.ratio < 4 for row in report.latency)


@pytest.mark.parametrize("before,after,verdict", [(1.0, 2.0, "SLOWER"), (1.0, 0.5, "faster"), (1.0, 1.05, "same")])
def test_layer_verdict_flags_slower_converted_layers(before, after, verdict):
    row = LayerRow("fc", "Linear", "LMKANLinear", 10, 20, 5, 50, before, after)
    assert row.verdict == verdict
    assert LayerRow("fc", "Linear", "Linear", 10, 10, 5, 5, before, after).verdict == "unchanged"
