"""lmkanify in exact mode: converted models reproduce the original, the report explains every skip, the user's
model is untouched, patterns and budgets select layers."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision
from torch import nn

from lmkan_surgery import LMKANConfig, LMKANConv2d, LMKANLinear, lmkanify
from surgery_models import AttentionNet, ControlFlowNet, FunctionalNet, check_exact

def test_resnet18_exact_and_report():
    model = torchvision.models.resnet18()
    x = torch.randn(1, 3, 32, 32)
    student, report = check_exact(model, x)
    assert report.skipped().keys() == {"conv1", "fc"}
    assert len(report.converted_names()) == 19
    assert {r.path for r in report.rows} == {"fx"}
    row = report.row("layer1.0.conv1")
    assert row.flops_before == 8 * 8 * 64 * 9 * 64 and row.flops_after == 2 * row.flops_before
    assert row.params_after == 16 * (64 * 9 // 2) * 64 + 64
    assert 1.0 < report.flop_ratio() < 2.0
    text = str(report)
    assert "layer4.1.conv2" in text and "classifier head" in text and "converted" in text
    data = json.loads(report.to_json())
    assert len(data["rows"]) == 21 and data["flop_ratio"] == pytest.approx(report.flop_ratio())
    assert isinstance(student, torchvision.models.ResNet)  # the user's class is kept when no rewrite is needed


def test_inplace_converts_the_given_model():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    student, report = lmkanify(model, LMKANConfig(num_grids=3), example_inputs=torch.randn(2, 8), inplace=True)
    assert student is model and isinstance(model[2], LMKANLinear)
    assert report.converted_names() == ["2"]  # "0" is the input stem (fed by the raw inputs), "4" the head


def test_control_flow_model_falls_back_per_child():
    model = ControlFlowNet()
    student, report = check_exact(model, torch.randn(4, 16))
    assert report.row("block.0").path == "fx-child" and report.row("block.2").path == "fx-child"
    assert report.row("stem").path == "module-swap"
    assert any("could not fx-trace the model" in w for w in report.warnings)
    assert "classifier head" in report.row("pos").reason
    assert report.row("neg").status == "converted" and "not executed" in report.row("neg").reason


def test_functional_calls_become_modules():
    model = FunctionalNet()
    inputs = (torch.randn(4, 16), torch.randn(4, 3, 8, 8))
    student, report = check_exact(model, inputs)
    kinds = {r.name: r.kind for r in report.rows}
    assert kinds == {"w1_linear": "F.linear", "w2_linear": "F.linear", "cw_conv2d": "F.conv2d", "head": "Linear"}
    assert isinstance(student.w2_linear, LMKANLinear) and isinstance(student.cw_conv2d, LMKANConv2d)
    assert "input stem" in report.row("w1_linear").reason  # the first layer, fed by the raw inputs
    assert "parameter 'w1'" in report.row("w1_linear").reason
    assert all(r.path == "fx" for r in report.rows)


def test_multihead_attention_is_skipped_with_reason():
    model = AttentionNet()
    student, report = check_exact(model, torch.randn(2, 6, 16))
    assert "uses its weights functionally" in report.row("attn.out_proj").reason
    assert report.row("attn.in_proj").status == "skipped" and "in_proj" in report.row("attn.in_proj").reason
    assert set(report.converted_names()) == {"mlp.0", "mlp.2"}  # "embed" is the input stem (fed raw inputs)
    assert isinstance(student.attn, nn.MultiheadAttention) and type(student.attn.out_proj) is not LMKANLinear


def test_calibration_statistics_are_stored():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    calib = [torch.randn(32, 8) * 3 + 1 for _ in range(3)]
    student, report = lmkanify(model, LMKANConfig(num_grids=4, skip_defaults=False), example_inputs=calib[0],
                               calibration=calib)
    data = torch.cat(calib)
    layer = student[0]
    assert layer.input_norm == "affine"
    assert torch.allclose(layer.input_shift / layer.input_scale, -data.mean(0), atol=1e-5)
    assert report.validation["rel_error"] < 1e-5


def test_include_exclude_and_num_grids_patterns():
    model = torchvision.models.resnet18()
    config = dict(exclude=["layer4", r"layer3\.\d\.conv2", "no_such_block"], num_grids={"layer1": 4, "default": 3})
    student, report = lmkanify(model, LMKANConfig(**config), example_inputs=torch.randn(1, 3, 32, 32))
    skipped = report.skipped()
    assert "conv1" in skipped and "fc" in skipped  # defaults are kept next to the user's exclusions
    assert "excluded by config.exclude pattern 'layer4'" in skipped["layer4.0.conv1"]
    assert "layer3.0.conv2" in skipped and "layer3.0.conv1" not in skipped
    assert any("'no_such_block' matched no" in w for w in report.warnings)
    assert student.layer1[0].conv1.num_grids == 4 and student.layer2[0].conv1.num_grids == 3
    only = LMKANConfig(num_grids=3, include=["Conv2d"], exclude=[r"layer\d\.\d\.conv\d"])
    _, report = lmkanify(model, only, example_inputs=torch.randn(1, 3, 32, 32))
    assert report.converted_names() == ["layer2.0.downsample.0", "layer3.0.downsample.0", "layer4.0.downsample.0"]


def test_memory_guard_skips_before_allocating():
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 1024), nn.ReLU(), nn.Linear(1024, 16),
                          nn.ReLU(), nn.Linear(16, 8))
    config = LMKANConfig(num_grids=8, max_layer_table_bytes=4 * 2**20, max_total_table_bytes=3 * 2**20,
                         skip_defaults=False)
    student, report = lmkanify(model, config, example_inputs=torch.randn(2, 64))
    assert report.row("0").status == "converted"  # 81 * 32 * 128 * 4 B = 1.27 MiB
    per_layer, total = report.row("2").reason, report.row("4").reason  # 20.25 MiB; 1.27 + 2.53 MiB > 3 MiB
    assert "memory guard" in per_layer and "20.2 MiB" in per_layer and "max_layer_table_bytes" in per_layer
    assert "memory guard" in total and "max_total_table_bytes" in total
    assert isinstance(student[2], nn.Linear) and isinstance(student[4], nn.Linear)


class ScaledLinear(nn.Linear):
    """A Linear subclass with its own forward: not a plain Linear."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * super().forward(x)


def test_subclass_with_own_forward_is_skipped():
    model = nn.Sequential(nn.Linear(8, 16), ScaledLinear(16, 16), nn.Linear(16, 4))
    student, report = lmkanify(model, LMKANConfig(num_grids=3), example_inputs=torch.randn(2, 8))
    assert "overrides Linear.forward" in report.row("1").reason and type(student[1]) is ScaledLinear
    assert report.validation["rel_error"] < 1e-4
