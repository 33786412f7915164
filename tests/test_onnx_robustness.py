"""ONNX export and sessions on awkward inputs: dict batches (keyword arguments and a dict argument), external
data for models past protobuf's 2 GB limit (same code path, forced or with the threshold lowered), and
session() on missing, empty, truncated or non-ONNX files."""

from __future__ import annotations

import pytest
import torch
from torch import nn

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from lmkan_surgery import LMKANLinear  # noqa: E402
from lmkan_surgery.onnx import OnnxFileError, export_onnx, session  # noqa: E402
from lmkan_surgery.onnx import storage  # noqa: E402


class KeywordNet(nn.Module):
    """forward(input, scale=None): called with a dict of keyword arguments."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = LMKANLinear(8, 12, 4, init_scale=1.0), LMKANLinear(12, 3, 4, init_scale=1.0)

    def forward(self, input: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        y = self.b(torch.tanh(self.a(input)))
        return y if scale is None else y * scale


class DictArgNet(KeywordNet):
    """forward(batch): one positional argument that is a dict of tensors."""

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:  # type: ignore[override]
        return super().forward(batch["x"], batch["w"])


def run(path, feed: dict) -> list:
    sess = session(path, use_library=False)
    return sess, sess.run(None, {k: v.numpy() for k, v in feed.items()})


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_keyword_inputs_export_and_validate(tmp_path, exporter):
    model, x, scale = KeywordNet().eval(), torch.randn(5, 8), torch.rand(5, 1)
    result = export_onnx(model, tmp_path / "m.onnx", example_inputs={"scale": scale, "input": x}, exporter=exporter)
    assert result.validation and result.validation[0].max_rel < 1e-4
    sess = session(tmp_path / "m.onnx", use_library=False)
    feed = dict(zip([i.name for i in sess.get_inputs()], (x.numpy(), scale.numpy())))
    with torch.no_grad():
        expected = model(x, scale).numpy()
    assert abs(sess.run(None, feed)[0] - expected).max() <= 1e-4 * abs(expected).max()


def test_dict_argument_exports(tmp_path):
    model, x, w = DictArgNet().eval(), torch.randn(4, 8), torch.rand(4, 1)
    result = export_onnx(model, tmp_path / "d.onnx", example_inputs=({"x": x, "w": w},))
    assert result.exporter == "dynamo" and {r.runtime_path for r in result.validation} >= {"function-body"}
    assert all(case.batch in (4, 7, 10) for case in result.validation[0].cases)


def test_keyword_only_or_unknown_names_are_clear_errors(tmp_path):
    from lmkan_surgery.errors import BatchError

    with pytest.raises(BatchError, match=r"export_onnx\(\).*nope=\(2, 8\).*do not fit KeywordNet\.forward.*'input'"):
        export_onnx(KeywordNet(), tmp_path / "x.onnx", example_inputs={"nope": torch.randn(2, 8)})
    assert not (tmp_path / "x.onnx").exists()


def test_external_data_is_written_validated_and_loaded(tmp_path):
    model, x = KeywordNet().eval(), torch.randn(3, 8)
    result = export_onnx(model, tmp_path / "big.onnx", example_inputs=(x,), external_data=True)
    data = tmp_path / "big.onnx.data"
    assert result.external_data == data and data.stat().st_size >= (model.a.table.numel() + model.b.table.numel()) * 4
    assert "big.onnx.data" in str(result) and result.validation[0].max_rel < 1e-4
    assert data.stat().st_mode & 0o777 == (tmp_path / "big.onnx").stat().st_mode & 0o777
    graph = onnx.load(str(tmp_path / "big.onnx"), load_external_data=False)
    external = [t.data_location == onnx.TensorProto.EXTERNAL for t in graph.graph.initializer
                if 4 * torch.Size(t.dims).numel() >= storage.EXTERNAL_THRESHOLD]
    assert len(external) >= 2 and all(external)
    _, out = run(tmp_path / "big.onnx", {"input": x})
    with torch.no_grad():
        assert abs(out[0] - model(x).numpy()).max() < 1e-4
    data.write_bytes(data.read_bytes()[:100])  # a truncated data file: the error names the model file
    with pytest.raises(OnnxFileError, match=r"big\.onnx.*external data"):
        session(tmp_path / "big.onnx", use_library=False)


def test_automatic_external_data_past_the_threshold(tmp_path, monkeypatch):
    model, x = KeywordNet().eval(), torch.randn(3, 8)
    small = export_onnx(model, tmp_path / "a.onnx", example_inputs=(x,), validate=False)
    assert small.external_data is None and not (tmp_path / "a.onnx.data").exists()
    monkeypatch.setattr(storage, "EXTERNAL_DATA_BYTES", 1000)
    big = export_onnx(model, tmp_path / "a.onnx", example_inputs=(x,), validate=False)
    assert big.external_data == tmp_path / "a.onnx.data" and big.external_data.exists()
    monkeypatch.setattr(storage, "EXTERNAL_DATA_BYTES", 10**12)  # re-export small: the stale data file goes
    export_onnx(model, tmp_path / "a.onnx", example_inputs=(x,), validate=False)
    assert not (tmp_path / "a.onnx.data").exists()


def test_session_on_bad_files_names_the_path(tmp_path):
    model, x = KeywordNet().eval(), torch.randn(3, 8)
    export_onnx(model, tmp_path / "good.onnx", example_inputs=(x,), validate=False)
    raw = (tmp_path / "good.onnx").read_bytes()
    cases = {"truncated.onnx": raw[: len(raw) // 2], "empty.onnx": b"", "text.onnx": b"hello world\n" * 10,
             "zeros.onnx": bytes(64)}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(OnnxFileError, match=name.replace(".", r"\.")):
            session(tmp_path / name, use_library=False)
    with pytest.raises(OnnxFileError, match=r"missing\.onnx: no such ONNX file"):
        session(tmp_path / "missing.onnx")


@pytest.mark.parametrize("use_library", [False, True])
def test_far_out_inputs_stay_finite_in_onnxruntime(tmp_path, use_library):
    """A data-free exact conversion puts inputs far out on the grid's linear extension; t1 t2 overflows there and
    must not turn the (zero) cross term into NaN in the function body or the native library."""
    linear = nn.Linear(6, 4)
    model = nn.Sequential(LMKANLinear.from_linear(linear, 8)).eval()
    export_onnx(model, tmp_path / "far.onnx", example_inputs=(torch.randn(3, 6),))
    x = torch.randn(5, 6) * torch.tensor([1.0, 1e8, 1e12, 1e18, 1e24]).unsqueeze(1)
    sess = session(tmp_path / "far.onnx", use_library=use_library)
    result = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])
    with torch.no_grad():
        expected = linear.double()(x.double())
    assert torch.isfinite(result).all()
    rel = (result.double() - expected).abs().amax(1) / expected.abs().amax(1)
    assert rel.max() < 1e-5
