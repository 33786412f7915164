"""ONNX export of lmKAN models: one lmkan.LMKAN2D node per op, function body and native library, bad cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from lmkan_surgery import LMKANConv2d, LMKANLinear  # noqa: E402
from lmkan_surgery.onnx import (  # noqa: E402
    DOMAIN,
    FUNCTION_BODY,
    NATIVE,
    OP_TYPE,
    CustomOpLibraryError,
    OnnxRuntimeVersionError,
    OnnxValidationError,
    UnsupportedOpsetError,
    build_library,
    check_onnxruntime,
    export_onnx,
    session,
    validate_onnx,
)

RTOL = 1e-4


def _mlp(exact: bool) -> nn.Module:
    torch.manual_seed(1)
    dense = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 7))
    if exact:
        return nn.Sequential(LMKANLinear.from_linear(dense[0]), nn.ReLU(), LMKANLinear.from_linear(dense[2], 5))
    return nn.Sequential(LMKANLinear(10, 16, 8, init_scale=1.0), nn.Tanh(), LMKANLinear(16, 7, 5, init_scale=1.0))


def _cnn(exact: bool) -> nn.Module:
    torch.manual_seed(2)
    dense = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=2), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval()
    if exact:
        dense[0], dense[3], dense[7] = (LMKANConv2d.from_conv(dense[0]), LMKANConv2d.from_conv(dense[3], 4),
                                        LMKANLinear.from_linear(dense[7]))
    else:
        dense[0] = LMKANConv2d(3, 8, 3, padding=1, num_grids=6, init_scale=1.0)
        dense[3] = LMKANConv2d(8, 8, 3, stride=2, padding=1, groups=2, num_grids=4, init_scale=1.0)
        dense[7] = LMKANLinear(8, 5, 8, init_scale=1.0)
    return dense.eval()


MODELS = {"mlp": (_mlp, (4, 10), 2), "cnn": (_cnn, (3, 3, 10, 10), 4)}


@pytest.fixture(scope="module")
def library():
    """The native library path; the test is skipped when onnxruntime's headers cannot be obtained here."""
    try:
        return build_library(cuda=False)
    except CustomOpLibraryError as err:
        if "headers are not available" in str(err):
            pytest.skip(f"onnxruntime headers unavailable: {err}")
        raise


@pytest.fixture(scope="module", params=[f"{m}-{k}" for m in MODELS for k in ("exact", "random")])
def exported(request, tmp_path_factory, library):
    """(model, example input, export result) for every model kind, exported and validated on both paths."""
    kind, init = request.param.split("-")
    make, shape, _ = MODELS[kind]
    model = make(init == "exact")
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(3))
    result = export_onnx(model, tmp_path_factory.mktemp("onnx") / f"{request.param}.onnx", (x,))
    return kind, model, x, result


def test_export_validates_both_paths(exported):
    kind, _, _, result = exported
    assert result.exporter == "dynamo"
    assert result.lmkan_nodes == MODELS[kind][2]
    assert [r.runtime_path for r in result.validation] == [FUNCTION_BODY, NATIVE]
    for report in result.validation:
        assert report.max_rel <= RTOL, str(report)
        assert {c.batch for c in report.cases} == {MODELS[kind][1][0] + k for k in (0, 3, 6)}


def test_one_custom_node_per_op_with_table_initializers(exported):
    kind, model, _, result = exported
    proto = onnx.load(str(result.path))
    nodes = [n for n in proto.graph.node if n.domain == DOMAIN]
    inits = {i.name: i for i in proto.graph.initializer}
    assert len(nodes) == MODELS[kind][2] and all(n.op_type == OP_TYPE for n in nodes)
    tables = []
    for module in model.modules():
        if isinstance(module, (LMKANLinear, LMKANConv2d)):
            tables += [module.table] if module.table.dim() == 4 else list(module.table.unbind(0))
    for node, table in zip(nodes, tables):
        grids = next(a.i for a in node.attribute if a.name == "num_grids")
        stored = onnx.numpy_helper.to_array(inits[node.input[1]])
        assert grids == table.shape[1] - 1
        np.testing.assert_array_equal(stored, table.detach().numpy())
    assert [(f.domain, f.name) for f in proto.functions] == [(DOMAIN, OP_TYPE)]


@pytest.mark.parametrize("use_library", [True, False])
def test_dynamic_batch_one_file(exported, use_library):
    _, model, x, result = exported
    sess = session(result.path, use_library=use_library)
    assert sess.lmkan_path == (NATIVE if use_library else FUNCTION_BODY)
    for batch in (1, 5):
        xb = torch.randn(batch, *x.shape[1:], generator=torch.Generator().manual_seed(batch))
        (got,) = sess.run(None, {sess.get_inputs()[0].name: xb.numpy()})
        with torch.no_grad():
            want = model(xb).numpy()
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= RTOL * np.abs(want).max()


def test_shape_inference_and_reference_runtime(exported):
    kind, model, x, result = exported
    proto = onnx.load(str(result.path))
    inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    out_dims = inferred.graph.output[0].type.tensor_type.shape.dim
    assert out_dims[0].dim_param == "batch" and out_dims[1].dim_value == model(x).shape[1]
    known = {v.name: v for v in inferred.graph.value_info}
    for node in (n for n in inferred.graph.node if n.domain == DOMAIN):
        dims = known[node.output[0]].type.tensor_type.shape.dim
        assert dims[1].dim_value > 0
    if kind == "mlp":
        from onnx.reference import ReferenceEvaluator

        (got,) = ReferenceEvaluator(proto).run(None, {proto.graph.input[0].name: x[:2].numpy()})
        with torch.no_grad():
            want = model(x[:2]).numpy()
        assert np.abs(got - want).max() <= RTOL * np.abs(want).max()


def test_torchscript_fallback_exporter(tmp_path, library):
    model = _mlp(exact=False)
    x = torch.randn(3, 10)
    result = export_onnx(model, tmp_path / "ts.onnx", (x,), exporter="torchscript")
    assert result.exporter == "torchscript" and result.lmkan_nodes == 2
    assert all(r.max_rel <= RTOL for r in result.validation) and len(result.validation) == 2


def test_without_function_body_needs_library(tmp_path, library):
    model = _mlp(exact=False)
    x = torch.randn(3, 10)
    result = export_onnx(model, tmp_path / "native_only.onnx", (x,), function_body=False)
    assert [r.runtime_path for r in result.validation] == [NATIVE]
    proto = onnx.load(str(result.path))
    assert not proto.functions
    out = onnx.shape_inference.infer_shapes(proto).graph.output[0]
    assert [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim] == ["batch", 7]
    with pytest.raises(CustomOpLibraryError, match="without a function body.*function_body=True"):
        session(result.path, use_library=False)


def test_float64_model_runs_the_function_body(tmp_path):
    model = _mlp(exact=False).double()
    result = export_onnx(model, tmp_path / "f64.onnx", (torch.randn(3, 10, dtype=torch.float64),))
    assert [r.runtime_path for r in result.validation] == [FUNCTION_BODY]
    assert result.validation[0].max_rel <= 1e-12
    assert session(result.path).lmkan_path == FUNCTION_BODY
    with pytest.raises(CustomOpLibraryError, match="float32 models only.*use_library=False"):
        session(result.path, use_library=True)


def test_library_missing(tmp_path):
    model = _mlp(exact=False)
    result = export_onnx(model, tmp_path / "m.onnx", (torch.randn(2, 10),), validate=False)
    with pytest.raises(CustomOpLibraryError, match="does not exist.*use_library=False"):
        session(result.path, library_path=tmp_path / "liblmkan_ort.so")


def test_onnxruntime_too_old(tmp_path, monkeypatch):
    with pytest.raises(OnnxRuntimeVersionError, match=r"1\.20\.1 is too old.*pip install -U 'onnxruntime>=1\.21'"):
        check_onnxruntime("1.20.1")
    assert check_onnxruntime("1.21.0") == "1.21.0"
    model = _mlp(exact=False)
    result = export_onnx(model, tmp_path / "m.onnx", (torch.randn(2, 10),), validate=False)
    monkeypatch.setattr(ort, "__version__", "1.19.2")
    with pytest.raises(OnnxRuntimeVersionError, match="too old"):
        session(result.path)


def test_highest_supported_opset_and_batch_one_example(tmp_path, library):
    result = export_onnx(_mlp(exact=True), tmp_path / "m21.onnx", (torch.randn(1, 10),), opset=21)
    assert result.exporter == "dynamo"
    assert [c.batch for c in result.validation[0].cases] == [1, 4, 7]
    proto = onnx.load(str(result.path))
    assert {i.domain: i.version for i in proto.opset_import}[""] == 21
    assert all(r.max_rel <= RTOL for r in result.validation) and len(result.validation) == 2


@pytest.mark.parametrize("opset", [13, 17, 99])
def test_unsupported_opset(tmp_path, opset):
    with pytest.raises(UnsupportedOpsetError, match="opset between 18 and"):
        export_onnx(_mlp(exact=False), tmp_path / "m.onnx", (torch.randn(2, 10),), opset=opset)


def test_validation_error_names_the_difference(tmp_path):
    model = _mlp(exact=False)
    x = torch.randn(3, 10)
    result = export_onnx(model, tmp_path / "m.onnx", (x,), validate=False)
    with torch.no_grad():
        model[2].bias.add_(1.0)
    with pytest.raises(OnnxValidationError, match="beyond rtol=0.0001"):
        validate_onnx(model, result.path, (x,))


def test_library_exports_only_register_custom_ops(library):
    import shutil
    import subprocess

    if shutil.which("nm") is None:
        pytest.skip("nm not available")
    symbols = subprocess.run(["nm", "-D", "--defined-only", str(library)], capture_output=True, text=True).stdout
    assert [line.split()[-1] for line in symbols.splitlines() if line.strip()] == ["RegisterCustomOps"]


@pytest.mark.slow
def test_cuda_library_compiles_and_serves_cpu_sessions(tmp_path):
    import shutil

    if shutil.which("nvcc") is None:
        pytest.skip("nvcc not available")
    path = build_library(cuda=True)
    assert (path.parent / "lmkan_cuda.o").is_file()
    model = _mlp(exact=False)
    x = torch.randn(3, 10)
    result = export_onnx(model, tmp_path / "m.onnx", (x,), validate=False, function_body=False)
    sess = session(result.path, library_path=path)  # CUDA runtime linked statically: loads without a GPU
    (got,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        assert np.abs(got - model(x).numpy()).max() <= RTOL * np.abs(got).max()
