"""lmkanify in shrink mode: dependency-aware narrowing, FLOP target, local reconstruction, save/load."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision
from torch import nn

import lmkan_surgery
from lmkan_surgery import LMKANConfig, lmkanify
from surgery_models import mlp3


@pytest.fixture(scope="module")
def shrunk_resnet18():
    """(original, student, report) of resnet18 shrunk to a 0.5 formula-FLOP ratio with local reconstruction."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    calibration = [torch.randn(6, 3, 64, 64) for _ in range(5)]
    config = LMKANConfig(num_grids=3, mode="shrink", width=0.5)
    student, report = lmkanify(model, config, example_inputs=torch.randn(2, 3, 64, 64), calibration=calibration)
    return model, student, report


def test_resnet18_shrink_flops_and_reconstruction(shrunk_resnet18):
    model, student, report = shrunk_resnet18
    assert report.flop_ratio() <= 0.6
    assert report.validation["heldout_correlation"] > 0.5 and report.validation["heldout_rel_error"] < 1.0
    assert len(report.groups) == 8  # conv1 -> bn1 -> relu -> conv2 in each BasicBlock
    group = report.groups[0]
    assert group.members == ["layer1.0.conv1", "layer1.0.bn1", "layer1.0.relu", "layer1.0.conv2"]
    assert group.boundary == ["layer1.0.conv2"] and group.kept < group.hidden
    assert group.heldout_rel_error is not None
    assert student.layer1[0].conv2.out_channels == 64  # residual-coupled channels are kept
    assert student.layer1[0].bn1.num_features == student.layer1[0].conv1.out_channels == group.kept
    assert report.row("layer2.0.downsample.0").status == "converted"
    assert report.row("layer1.0.conv1").status == "shrunk" and report.row("layer1.0.conv1").group == "g0"
    with torch.no_grad():
        assert student.eval()(torch.randn(2, 3, 64, 64)).shape == (2, 1000)


def test_shrunk_model_save_load_bitwise(shrunk_resnet18, tmp_path):
    _, student, _ = shrunk_resnet18
    path = tmp_path / "r18.lmkan"
    lmkan_surgery.save(student, path)
    restored = lmkan_surgery.load(path, torchvision.models.resnet18).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(student.eval()(x), restored(x))
    assert restored.layer1[0].conv1.out_channels == student.layer1[0].conv1.out_channels


def test_mlp_shrink_reaches_flop_target():
    model = mlp3()
    calibration = [torch.randn(64, 32) for _ in range(8)]
    student, report = lmkanify(model, LMKANConfig(num_grids=3, mode="shrink", width=0.5),
                               example_inputs=torch.randn(4, 32), calibration=calibration)
    assert report.flop_ratio() <= 0.6
    assert report.validation["heldout_correlation"] > 0.5 and report.validation["heldout_rel_error"] < 1.0
    assert type(student[0]) is nn.Linear  # the input stem (fed by the raw inputs) is narrowed, not converted
    assert student[0].out_features == student[2].in_features < 256
    assert isinstance(student[4], nn.Linear) and student[4].in_features == student[2].out_features
    assert report.groups[0].boundary == ["4"]
    data = json.loads(report.to_json())
    assert data["groups"][0]["members"] == ["0", "1", "2", "3", "4"] and data["width_factor"] == report.width_factor
    assert lmkan_surgery.LMKANConfig.from_dict(student.lmkan_spec["config"]).mode == "shrink"


def test_mlp_shrink_by_channels():
    model = mlp3()
    calibration = [torch.randn(64, 32) for _ in range(4)]
    student, report = lmkanify(model, LMKANConfig(num_grids=3, mode="shrink", width=0.5, width_mode="channels"),
                               example_inputs=torch.randn(4, 32), calibration=calibration)
    assert student[0].out_features == 128 and student[2].out_features == 128 and report.width_factor == 0.5


def test_conv_widths_shrink_through_pooling_but_features_do_not():
    """conv -> BN -> ReLU -> MaxPool -> conv is a hidden space (2-D pooling keeps channel c as channel c); a 2-D pool
    over a Linear's features mixes them, so Linear -> pool -> Linear is not one."""
    from lmkan_surgery import ConfigError
    from lmkan_surgery.planning import Budget
    from lmkan_surgery.passes.probe import run_probe
    from lmkan_surgery.passes.shrink import find_hidden_spaces
    from lmkan_surgery.passes.trace import trace_model
    from lmkan_surgery.planning.planner import plan

    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(16, 4)).eval()
    with torch.no_grad():
        cnn[1].running_var.uniform_(0.5, 2.0)
    calibration = [torch.randn(32, 1, 12, 12) for _ in range(4)]
    names = [n for n, m in cnn.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    found = find_hidden_spaces(cnn, trace_model(cnn), set(names), run_probe(cnn, calibration[0][:1], names))
    assert [(s.producer, s.consumer, s.span) for s in found] == [("0", "4", 1), ("4", "8", 1)]
    student = plan(cnn, calibration, Budget(macs=0.6)).model
    assert student[0].out_channels == student[1].num_features == student[4].in_channels
    assert student[4].out_channels == student[8].in_features
    assert student[4].in_channels < 8 or student[4].out_channels < 16
    x = torch.randn(64, 1, 12, 12)
    with torch.no_grad():
        teacher_out, student_out = cnn(x), student(x)
    assert (student_out - teacher_out).norm() < 0.9 * teacher_out.norm()

    mixing = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.MaxPool2d(2), nn.Linear(4, 3)).eval()
    with pytest.raises(ConfigError, match=r"\(0 found\)"):
        plan(mixing, [torch.randn(8, 2, 6, 8) for _ in range(4)], Budget(macs=0.9))
