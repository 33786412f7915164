"""save/load round trips and specific errors on bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lmkan_surgery
from lmkan_surgery import (ConfigError, ConversionError, GridSizeError, LMKANConfig, LMKANError, ModelError,
                           ShapeError, lmkanify)
from surgery_models import ControlFlowNet, FunctionalNet, mlp3


def roundtrip(student: nn.Module, factory, inputs, tmp_path) -> nn.Module:
    """save + load, asserting bitwise equal outputs and state."""
    path = tmp_path / "model.lmkan"
    lmkan_surgery.save(student, path)
    restored = lmkan_surgery.load(path, factory)
    student.eval(), restored.eval()
    args = inputs if isinstance(inputs, tuple) else (inputs,)
    with torch.no_grad():
        assert torch.equal(student(*args), restored(*args))
    ref, new = student.state_dict(), restored.state_dict()
    assert ref.keys() == new.keys() and all(torch.equal(ref[k], new[k]) for k in ref)
    return restored


def test_save_load_functional_model(tmp_path):
    torch.manual_seed(1)
    inputs = (torch.randn(3, 16), torch.randn(3, 3, 8, 8))
    student, _ = lmkanify(FunctionalNet(), LMKANConfig(num_grids=5), example_inputs=inputs)
    restored = roundtrip(student, FunctionalNet, inputs, tmp_path)
    assert isinstance(restored.w2_linear, lmkan_surgery.LMKANLinear)
    assert restored.lmkan_spec["config"]["num_grids"] == 5


def test_save_load_control_flow_and_file_has_no_pickled_modules(tmp_path):
    x = torch.randn(4, 16)
    student, _ = lmkanify(ControlFlowNet(), LMKANConfig(num_grids=3), example_inputs=x)
    roundtrip(student, ControlFlowNet, x, tmp_path)
    payload = torch.load(tmp_path / "model.lmkan", weights_only=True)
    assert set(payload) == {"lmkan_spec", "state_dict", "checksums"}
    assert all(isinstance(v, torch.Tensor) for v in payload["state_dict"].values())


def test_save_load_shrunk_mlp(tmp_path):
    calibration = [torch.randn(32, 32) for _ in range(4)]
    student, _ = lmkanify(mlp3(), LMKANConfig(num_grids=3, mode="shrink"), example_inputs=calibration[0],
                          calibration=calibration)
    restored = roundtrip(student, mlp3, calibration[0], tmp_path)
    assert restored[2].in_features == student[2].in_features < 256


def test_load_errors(tmp_path):
    student, _ = lmkanify(mlp3(), LMKANConfig(num_grids=3), example_inputs=torch.randn(2, 32))
    path = tmp_path / "m.lmkan"
    lmkan_surgery.save(student, path)
    with pytest.raises(LMKANError, match="do not fit"):
        lmkan_surgery.load(path, lambda: mlp3(hidden=128))
    with pytest.raises(ConversionError, match="nn.Module"):
        lmkan_surgery.load(path, lambda: "nope")
    with pytest.raises(ConversionError, match="returned by lmkanify"):
        lmkan_surgery.save(mlp3(), path)


def test_bad_config_values():
    with pytest.raises(ConfigError, match="mode"):
        LMKANConfig(mode="fast")
    with pytest.raises(GridSizeError):
        LMKANConfig(num_grids=1)
    with pytest.raises(ConfigError, match="list of patterns"):
        LMKANConfig(exclude="fc")
    with pytest.raises(ConfigError, match="LMKANConfig"):
        lmkanify(mlp3(), config={"num_grids": 3})
    with pytest.raises(ConfigError, match="calibration"):
        lmkanify(mlp3(), LMKANConfig(mode="shrink"), example_inputs=torch.randn(2, 32))


def test_unknown_layer_type_in_config():
    with pytest.raises(ConfigError, match="'Conv3x'.*neither a torch.nn class"):
        lmkanify(mlp3(), LMKANConfig(include=["Conv3x"]), example_inputs=torch.randn(2, 32))
    with pytest.raises(ConfigError, match="Conv3d.*cannot convert"):
        lmkanify(mlp3(), LMKANConfig(include=["Conv3d"]), example_inputs=torch.randn(2, 32))
    with pytest.raises(ConfigError, match="regular expression"):
        lmkanify(mlp3(), LMKANConfig(exclude=["layer[0"]), example_inputs=torch.randn(2, 32))


def test_not_a_module():
    with pytest.raises(ModelError, match="nn.Module"):
        lmkanify(lambda x: x)


def test_wrong_example_input_shape_names_the_layer():
    with pytest.raises(ShapeError, match=r"\(2, 31\).*module '0' \(Linear\)"):
        lmkanify(mlp3(), LMKANConfig(num_grids=3), example_inputs=torch.randn(2, 31))


class Untraceable(nn.Module):
    """Control flow on data at every level: nothing traces, leaves are swapped."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = ControlFlowNet()
        self.out = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inner(x)
        return self.out(h) if x.mean() > -10 else h[:, :3]


def test_untraceable_model_is_converted_by_module_swap():
    model = Untraceable()
    x = torch.randn(4, 16)
    student, report = lmkanify(model, LMKANConfig(num_grids=3), example_inputs=x)
    assert report.validation["rel_error"] < 1e-4
    assert report.row("inner.stem").path == "module-swap" and report.row("inner.block.0").path == "fx-child"
    traced = [w for w in report.warnings if "could not fx-trace" in w]
    assert len(traced) == 2 and "TraceError" in traced[0]
    assert "inner.block.0" in report.converted_names() and "input stem" in report.row("inner.stem").reason


def test_without_example_inputs():
    student, report = lmkanify(mlp3(), LMKANConfig(num_grids=3))
    assert report.converted_names() == ["0", "2"] and report.flop_ratio() is None
    assert any("no example_inputs" in w for w in report.warnings)
