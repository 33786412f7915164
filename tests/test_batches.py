"""One home for batches (lmkan_surgery.batches) as lmkanify, compare() and export see it: (x, y) pairs are a clear
error or unwrapped by input_fn, dicts are keyword arguments; scripted modules and legacy weight_norm layers."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lmkan_surgery import LMKANConfig, LMKANLinear, ModelError, lmkanify
from lmkan_surgery import batches
from lmkan_surgery.errors import BatchError


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))


def pairs_loader() -> DataLoader:
    data = TensorDataset(torch.randn(24, 8), torch.randint(0, 4, (24,)))
    return DataLoader(data, batch_size=8)


def test_pairs_from_a_dataloader_are_refused_with_the_fix():
    with pytest.raises(BatchError, match=r"2 items \(\(8, 8\), \(8,\)\).*1 positional.*Unwrap \(x, y\) pairs"
                                         r".*input_fn=lambda batch: batch\[0\]"):
        lmkanify(mlp(), LMKANConfig(num_grids=3), calibration=pairs_loader())


def test_input_fn_unwraps_pairs_and_matches_unwrapped_batches():
    model = mlp()
    loader = pairs_loader()
    with_fn, report = lmkanify(model, LMKANConfig(num_grids=3), calibration=loader, input_fn=lambda b: b[0])
    plain, _ = lmkanify(model, LMKANConfig(num_grids=3), calibration=[x for x, _ in loader])
    assert report.validation["rel_error"] < 1e-5
    assert all(torch.equal(a, b) for a, b in zip(with_fn.state_dict().values(), plain.state_dict().values()))


def test_two_argument_models_still_take_tuples():
    class TwoInputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 4)

        def forward(self, x, y):
            return self.b(torch.relu(self.a(x) + self.a(y)))

    inputs = (torch.randn(4, 8), torch.randn(4, 8))
    student, report = lmkanify(TwoInputs(), LMKANConfig(num_grids=3, skip_defaults=False), example_inputs=inputs)
    assert report.converted_names() == ["a", "b"] and report.validation["rel_error"] < 1e-5


def test_scripted_modules_are_refused_with_what_to_pass():
    from lmkan_surgery.distill import distill
    from lmkan_surgery.report import compare

    data = (torch.randn(8, 8), torch.randint(0, 4, (8,)))
    for scripted in (torch.jit.script(mlp()), torch.jit.trace(mlp(), torch.randn(2, 8))):
        with pytest.raises(ModelError, match="lmkanify does not support torch.jit scripted/traced.*pass the original"):
            lmkanify(scripted, LMKANConfig(num_grids=3))
        with pytest.raises(ModelError, match=r"compare\(\) \(original\) does not support torch.jit"):
            compare(scripted, mlp(), torch.randn(2, 8))
        with pytest.raises(ModelError, match=r"distill \(teacher\) does not support torch.jit"):
            distill(mlp(), scripted, data)


def test_legacy_weight_norm_is_converted_and_the_original_untouched():
    torch.manual_seed(3)
    model = mlp()
    model[2] = torch.nn.utils.weight_norm(model[2])
    model[4] = torch.nn.utils.weight_norm(model[4], dim=None)
    x = torch.randn(6, 8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    student, report = lmkanify(model, LMKANConfig(num_grids=3), example_inputs=x)
    assert isinstance(student[2], LMKANLinear)  # converted
    assert hasattr(student[4], "parametrizations") and not hasattr(student[4], "weight_g")  # the head: skipped
    assert [w for w in report.warnings if "legacy torch.nn.utils.weight_norm" in w][0].startswith("module '2'")
    with torch.no_grad():
        ref = model(x)
        assert (student(x) - ref).abs().max() <= 1e-5 * ref.abs().max()
    assert hasattr(model[2], "weight_g") and all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_batch_helpers_on_nested_batches():
    x, m = torch.randn(3, 4), torch.ones(3, 2)
    batch = ({"x": x, "m": m}, 5)
    assert batches.batch_size({"m": m[:2], "x": x}) == 2 and batches.batch_size(7) == 1
    assert [t.shape for t in batches.tensors(batch)] == [x.shape, m.shape]
    doubled = batches.map_tensors(batch, lambda t: t * 2)
    assert torch.equal(doubled[0]["x"], 2 * x) and doubled[1] == 5

    def forward(input, mask=None, *, scale=1.0):
        return input

    holder = nn.Module()
    holder.forward = forward
    assert batches.positional(holder, {"mask": m, "input": x}, "t") == (x, m)
    with pytest.raises(BatchError, match="scale.*keyword-only"):
        batches.positional(holder, {"input": x, "scale": 2.0}, "t")


def test_compare_takes_keyword_batches():
    pytest.importorskip("fvcore")
    from lmkan_surgery.report import compare

    class Keyword(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = mlp()

        def forward(self, pixels):
            return self.body(pixels)

    model, x = Keyword().eval(), torch.randn(4, 8)
    student, _ = lmkanify(model, LMKANConfig(num_grids=3), example_inputs={"pixels": x})
    by_dict = compare(model, student, {"pixels": x}, batch_sizes=(2,), repeats=3, budget_s=0.1, per_layer=False)
    by_tuple = compare(model, student, (x,), batch_sizes=(2,), repeats=3, budget_s=0.1, per_layer=False)
    assert by_dict.flop_ratio == by_tuple.flop_ratio and by_dict.by_module() == by_tuple.by_module()
    assert by_dict.converted.flops > 0
