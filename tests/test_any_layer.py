"""Layer rules (Conv1d, transformers Conv1D), exactness at every input scale, degenerate features, validation that
raises, parameter escapes (tied, graph and probe-detected reads), unit-wise ops in shrink, stem/head defaults."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lmkan_surgery import LMKANConfig, LMKANLinear, lmkanify, load, save
from lmkan_surgery.errors import ConfigError, ValidationError
from lmkan_surgery.nn import LMKANConv1d
from lmkan_surgery.rules import rule_for

MAGNITUDES = [10.0**e for e in range(-12, 13, 3)]


def _rel(reference: torch.Tensor, result: torch.Tensor) -> float:
    """max |difference| relative to max |reference| (the layer's own output scale), in float64."""
    return float((reference.double() - result.double()).abs().max() / reference.double().abs().max())


CONV1D_VARIANTS = [dict(kernel_size=3), dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=2, dilation=2),
                   dict(kernel_size=3, padding="same", padding_mode="reflect"), dict(kernel_size=3, groups=2)]


@pytest.mark.parametrize("kwargs", CONV1D_VARIANTS)
def test_conv1d_rule_is_exact_and_keeps_conv1d_attributes(kwargs):
    conv = nn.Conv1d(4, 6, **kwargs)
    layer = LMKANConv1d.from_conv1d(conv, 5, torch.randn(4), torch.rand(4) + 0.5)
    x = torch.randn(3, 4, 11) * 10
    with torch.no_grad():
        assert _rel(conv(x), layer(x)) < 1e-5
        assert _rel(conv(x[0]), layer(x[0])) < 1e-5  # unbatched (C, L)
    assert (layer.kernel_size, layer.stride, layer.padding) == (conv.kernel_size, conv.stride, conv.padding)
    assert layer.weight.shape == conv.weight.shape and layer.weight.device == conv.weight.device


def test_transformers_conv1d_rule_converts_the_transposed_weight():
    pytorch_utils = pytest.importorskip("transformers.pytorch_utils")
    proj = pytorch_utils.Conv1D(12, 6)  # nf=12 outputs, nx=6 inputs, weight [6, 12]
    nn.init.normal_(proj.bias)
    model = nn.Sequential(nn.Linear(6, 6), proj, nn.ReLU(), nn.Linear(12, 3))
    student, report = lmkanify(model, LMKANConfig(num_grids=4), example_inputs=torch.randn(5, 7, 6))
    assert report.row("1").kind == "Conv1D" and report.row("1").status == "converted"
    assert report.row("1").features_before == (6, 12) and report.row("1").flops_before == 7 * 6 * 12
    x = torch.randn(4, 7, 6)
    with torch.no_grad():
        assert _rel(model(x), student(x)) < 1e-5


def test_rules_give_one_mac_formula():
    """Even-width rounding for lmKAN, groups and kernel for convs: one formula per rule."""
    cases = [(nn.Linear(7, 5), 7 * 5, 2 * 8 * 5), (nn.Conv2d(6, 4, 3, groups=2), 6 // 2 * 9 * 4, 2 * 2 * 28 * 2),
             (nn.Conv1d(3, 5, 3), 9 * 5, 2 * 10 * 5)]
    for module, dense, lmkan in cases:
        rule = rule_for(module)
        assert (rule.macs_per_position(module), rule.macs_per_position(module, lmkan=True)) == (dense, lmkan)


@pytest.mark.parametrize("kind", ["linear", "conv2d", "conv1d"])
@pytest.mark.parametrize("with_data", [True, False])
def test_exact_at_every_input_magnitude(kind, with_data):
    layer = {"linear": nn.Linear(16, 8, bias=False), "conv2d": nn.Conv2d(4, 6, 3, padding=1, bias=False),
             "conv1d": nn.Conv1d(4, 6, 3, padding=1, bias=False)}[kind]  # no bias hiding the lookup error
    shape = {"linear": (6, 16), "conv2d": (2, 4, 5, 5), "conv1d": (3, 4, 9)}[kind]
    model = nn.Sequential(nn.Identity(), layer)
    config = LMKANConfig(num_grids=4, skip_defaults=False)
    for magnitude in MAGNITUDES:
        x = torch.randn(shape) * magnitude
        student, report = lmkanify(model, config, example_inputs=x if with_data else None)
        assert report.validated == ("exact" if with_data else "not validated (no example_inputs)")
        with torch.no_grad():
            assert _rel(layer.double()(x.double()), student(x)) < 1e-5, magnitude
            layer.float()


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_huge_and_infinite_inputs_give_what_linear_gives(backend, monkeypatch):
    monkeypatch.setenv("LMKAN_BACKEND", backend)
    linear = nn.Linear(6, 4)
    layer = LMKANLinear.from_linear(linear, 8)
    x = torch.randn(4, 6) * 1e19
    x[1] *= 1e3
    x[2, 0], x[3, 1] = math.inf, -math.inf
    with torch.no_grad():
        expected, result = linear(x), layer(x)
    assert not result.isnan().any()
    assert torch.equal(torch.isinf(result[2:]), torch.isinf(expected[2:]))
    assert torch.equal(torch.sign(result[2:]), torch.sign(expected[2:]))
    assert _rel(expected[:2], result[:2]) < 1e-5


def test_degenerate_features_give_a_finite_exact_student():
    x = torch.randn(64, 8)
    x[:, 1] = 3.0  # constant
    x[:, 2] = 0.0  # all zero
    x[:, 3] = 0.0
    x[::32, 3] = 1e-45  # denormal spread (std ~ 1e-46, as in a real descriptor model)
    x[:, 4] = 1e6 + 1e-3 * torch.randn(64)  # large offset, tiny spread
    model = nn.Sequential(nn.Identity(), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    for mode_config, tolerance in ((LMKANConfig(num_grids=4, skip_defaults=False), 1e-4),
                                   (LMKANConfig(num_grids=4, skip_defaults=False, mode="shrink", width=1.9), 1e-2)):
        student, report = lmkanify(model, mode_config, example_inputs=x, calibration=[x, x[:32], x[32:]])
        with torch.no_grad():
            out = student(x)
        assert torch.isfinite(out).all() and report.validation["rel_error"] < tolerance
    fresh = torch.randn(16, 8) * 5  # the features that were constant, zero or denormal now vary
    fresh[:, 4] += 1e6
    student, _ = lmkanify(model, LMKANConfig(num_grids=4, skip_defaults=False), example_inputs=x)
    with torch.no_grad():
        assert _rel(model(fresh), student(fresh)) < 1e-4


def test_failed_validation_raises_or_is_reported_loudly():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.randn(4, 8)
    strict = LMKANConfig(num_grids=4, validation_tolerance=1e-30)  # no float32 conversion is that exact
    with pytest.raises(ValidationError, match=r"worst layers.*2 "):
        lmkanify(model, strict, example_inputs=x)
    lenient = LMKANConfig(num_grids=4, validation_tolerance=1e-30, allow_failed_validation=True)
    student, report = lmkanify(model, lenient, example_inputs=x)
    assert report.validated == "FAILED" and "2 " in report.problems[0] and str(report).startswith("PROBLEM:")


class TiedHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.body = nn.Linear(8, 8)
        self.head = nn.Linear(8, 20, bias=False)
        self.head.weight = self.emb.weight  # tied LM head

    def forward(self, ids):
        return self.head(torch.relu(self.body(self.emb(ids))))


class ReadsWeight(nn.Module):
    """A parent using its child's weight as data (traceable: a get_attr node) and one reading only its dtype."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c, self.d = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x):
        h = self.b(self.a(x)).to(self.c.weight.dtype)
        return self.d(self.c(h) + h @ self.b.weight.t())


class UntraceableReader(ReadsWeight):
    def forward(self, x):
        if x.sum() > -1e9:  # data-dependent control flow: FX cannot trace this
            h = self.b(self.a(x))
            return self.d(self.c(h) * self.c.weight.sum())
        return x


class FunctionalTie(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x):
        h = self.a(x)
        return self.b(h) + F.linear(h, self.b.weight)  # the call becomes a module sharing b's weight


def test_tied_weights_are_never_broken():
    model = TiedHead()
    student, report = lmkanify(model, LMKANConfig(num_grids=4, skip_defaults=False),
                               example_inputs=torch.randint(0, 20, (3, 5)))
    assert report.row("head").status == "skipped" and "tied to emb.weight" in report.row("head").reason
    assert student.head.weight is student.emb.weight and report.row("body").status == "converted"
    x = torch.randn(3, 8)
    student, report = lmkanify(FunctionalTie(), LMKANConfig(num_grids=4, skip_defaults=False), example_inputs=x)
    assert "tied to b_weight_linear.weight" in report.row("b").reason and report.row("b").status == "skipped"
    assert student.b.weight is student.b_weight_linear.weight


@pytest.mark.parametrize("cls,reader,kept", [(ReadsWeight, "weight read as data by t in the model (traced graph)", "b"),
                                             (UntraceableReader, "read as data by the top-level forward", "c")])
def test_weight_read_as_data_keeps_the_layer_and_names_the_reader(cls, reader, kept):
    model = cls()
    x = torch.randn(4, 8)
    student, report = lmkanify(model, LMKANConfig(num_grids=4, skip_defaults=False), example_inputs=x)
    assert report.row(kept).status == "skipped" and reader in report.row(kept).reason, report.row(kept).reason
    converted = set(report.converted_names())
    assert {"a", "d"} <= converted and kept not in converted
    with torch.no_grad():
        assert _rel(model(x), student(x)) < 1e-5


def test_metadata_reads_are_served_after_conversion():
    model = ReadsWeight()
    student, report = lmkanify(model, LMKANConfig(num_grids=4, skip_defaults=False), example_inputs=torch.randn(2, 8))
    assert report.row("c").status == "converted"  # only its dtype is read outside its forward
    assert student.c.weight.dtype == torch.float32 and student.c.weight.shape == (8, 8)
    with pytest.raises(Exception, match="only serves metadata"):
        student.c.weight + 1


def test_transformer_encoder_fast_path_and_head_default():
    layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
    model = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
    x = torch.randn(2, 5, 16)
    student, report = lmkanify(model, LMKANConfig(num_grids=4), example_inputs=x)
    assert {"layers.1.linear2", "layers.0.linear1"} <= set(report.converted_names())  # no "head" inside a layer
    with torch.no_grad():  # eval + no_grad: the fast path reads linear1.weight; it must fall back, not crash
        assert _rel(model(x), student(x)) < 1e-5


def test_torchvision_swin_runs_and_reports_the_attention_reads():
    from torchvision.models.swin_transformer import SwinTransformer
    model = SwinTransformer([4, 4], 16, [1, 1], [1, 2], [2, 2], num_classes=5).eval()
    x = torch.randn(1, 3, 16, 16)
    student, report = lmkanify(model, LMKANConfig(num_grids=3), example_inputs=x)
    qkv = [r for r in report.rows if r.name.endswith("attn.qkv")]
    assert qkv and all(r.status == "skipped" and "read as data" in r.reason for r in qkv)
    assert report.validated == "exact" and len(report.converted_names()) >= 4


def test_first_linear_fed_raw_inputs_is_the_stem():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    _, report = lmkanify(model, LMKANConfig(num_grids=4), example_inputs=torch.randn(2, 8))
    assert "input stem" in report.row("0").reason and "classifier head" in report.row("4").reason


@pytest.mark.parametrize("act", [nn.CELU(), nn.PReLU(32), nn.Softplus(), nn.Hardtanh()])
def test_shrink_recognises_every_unitwise_activation(act):
    model = nn.Sequential(nn.Linear(16, 32), act, nn.Linear(32, 32), nn.SELU(), nn.Linear(32, 4))
    batches = [torch.randn(32, 16) for _ in range(4)]
    student, report = lmkanify(model, LMKANConfig(num_grids=3, mode="shrink", width=0.5, width_mode="channels"),
                               example_inputs=batches[0], calibration=batches)
    assert student[2].in_features == 16 and report.groups and not report.problems
    if isinstance(act, nn.PReLU):
        assert student[1].weight.shape == (16,)


def test_unreachable_width_is_loud_and_strict_raises():
    model = nn.Sequential(nn.Linear(16, 32), nn.Softmax(-1), nn.Linear(32, 4))  # softmax mixes units
    batches = [torch.randn(32, 16) for _ in range(4)]
    config = dict(num_grids=3, mode="shrink", width=0.25, skip_defaults=False)
    _, report = lmkanify(model, LMKANConfig(**config), example_inputs=batches[0], calibration=batches)
    assert report.problems and "not met" in report.problems[0] and str(report).startswith("PROBLEM:")
    with pytest.raises(ConfigError, match="strict"):
        lmkanify(model, LMKANConfig(**config, strict=True), example_inputs=batches[0], calibration=batches)


def test_conv1d_model_saves_and_loads(tmp_path):
    def build():
        torch.manual_seed(3)
        return nn.Sequential(nn.Conv1d(2, 8, 3), nn.ReLU(), nn.Conv1d(8, 8, 3, padding=1), nn.ReLU(),
                             nn.Conv1d(8, 4, 1))
    x = torch.randn(2, 2, 12)
    student, report = lmkanify(build(), LMKANConfig(num_grids=4), example_inputs=x)
    assert isinstance(student[2], LMKANConv1d) and report.validated == "exact"
    save(student, tmp_path / "m.pt")
    restored = load(tmp_path / "m.pt", build)
    with torch.no_grad():
        assert torch.equal(restored(x), student(x))


def test_conv1d_student_exports_to_onnx(tmp_path):
    pytest.importorskip("onnxruntime")
    from lmkan_surgery.onnx import export_onnx
    model = nn.Sequential(nn.Conv1d(2, 8, 3), nn.ReLU(), nn.Conv1d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.Conv1d(8, 4, 1)).eval()
    x = torch.randn(2, 2, 12)
    student, _ = lmkanify(model, LMKANConfig(num_grids=4), example_inputs=x)
    result = export_onnx(student, tmp_path / "conv1d.onnx", x)
    assert result.lmkan_nodes == 2  # the stem conv stays a Conv1d
    assert result.validation and all(case.max_rel < 1e-5 for report in result.validation for case in report.cases)
