"""lmkanify on 30 architectures beyond torchvision (timm, transformers; tiny configs, random init, no downloads):
never an exception, the original untouched, and the student within 1e-4 of the original's output scale on fresh
inputs, or the layers left alone reported with their reasons."""

import pytest
import torch

from lmkan_surgery import LMKANConfig, lmkanify
from lmkan_surgery.rules import rule_for
from model_zoo import ZOO

pytest.importorskip("timm")
pytest.importorskip("transformers")


def _tensors(output) -> list[torch.Tensor]:
    """Floating tensors of a model output (a tensor, a tuple or a transformers ModelOutput)."""
    if isinstance(output, torch.Tensor):
        return [output] if output.is_floating_point() else []
    values = output.values() if isinstance(output, dict) else output if isinstance(output, (tuple, list)) else []
    return [t for v in values for t in _tensors(v)]


def _call(model, inputs):
    with torch.no_grad():
        return model(**inputs) if isinstance(inputs, dict) else model(inputs)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_architecture_converts_exactly_or_says_why(name):
    model, inputs, fresh = ZOO[name]()
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    student, report = lmkanify(model, LMKANConfig(num_grids=3), example_inputs=inputs)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "original model changed"
    assert report.validated == "exact", (report.validated, report.problems)
    converted = report.converted_names()
    assert converted, str(report)
    for layer in converted:
        assert rule_for(student.get_submodule(layer)) is not None and "lmkan" in type(
            student.get_submodule(layer)).__module__
    assert all(reason for reason in report.skipped().values())
    if not name.startswith("timm-"):  # transformers base models have no classifier head: the last FFN layer converts
        assert not any("classifier head" in reason for reason in report.skipped().values()), report.skipped()
    reference, result = _tensors(_call(model, fresh)), _tensors(_call(student, fresh))
    assert len(reference) == len(result) > 0
    for a, b in zip(reference, result):
        scale = max(float(a.double().abs().max()), 1e-30)  # a zero-initialised head (timm) outputs zeros
        assert torch.isfinite(b).all() and float((a.double() - b.double()).abs().max()) / scale < 1e-4
