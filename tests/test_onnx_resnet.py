"""resnet18 converted by lmkanify (exact and shrink modes) exports and validates on both onnxruntime paths."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
torchvision = pytest.importorskip("torchvision")

from lmkan_surgery import lmkanify  # noqa: E402
from lmkan_surgery.config import LMKANConfig  # noqa: E402
from lmkan_surgery.onnx import FUNCTION_BODY, NATIVE, export_onnx, session  # noqa: E402


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["exact", "shrink"])
def test_resnet18_exports_and_validates(tmp_path, mode):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    calibration = [torch.randn(4, 3, 32, 32) for _ in range(4)] if mode == "shrink" else None
    config = LMKANConfig(num_grids=3, mode=mode, include=["layer1", "layer2"])
    student, _ = lmkanify(model, config, x, calibration=calibration)
    result = export_onnx(student, tmp_path / f"resnet18_{mode}.onnx", (x,))
    assert result.lmkan_nodes >= 8
    assert [r.runtime_path for r in result.validation] == [FUNCTION_BODY, NATIVE]
    assert all(r.max_rel <= 1e-4 for r in result.validation), [str(r) for r in result.validation]
    sess = session(result.path)
    (got,) = sess.run(None, {sess.get_inputs()[0].name: x[:1].numpy()})
    with torch.no_grad():
        want = student.eval()(x[:1]).numpy()
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
