"""export_onnx: one lmkan.LMKAN2D node per lmKAN op, a standard-op function body attached, checked in onnxruntime."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.utils._pytree as pytree
from onnx import helper

from .. import batches
from .errors import OnnxExportError, OnnxValidationError, UnsupportedOpsetError
from .runtime import FUNCTION_BODY, NATIVE, session
from .schema import ATTR_NUM_GRIDS, DOMAIN, DOMAIN_VERSION, OP_TYPE, dynamo_translation_table
from .schema import function_body as body_function
from .storage import write_model

logger = logging.getLogger(__name__)

SUPPORTED_OPSETS = range(18, 22)  # the torch.export-based exporter starts at 18; onnxruntime 1.21 runs up to 21
DEFAULT_RTOL = 1e-4
EXPORTERS = ("auto", "dynamo", "torchscript")


@dataclass(frozen=True)
class ValidationCase:
    """One comparison of onnxruntime against PyTorch: which inputs, batch size and the max differences."""

    name: str
    batch: int
    max_abs: float
    max_rel: float  # max |onnx - torch| / max |torch|


@dataclass(frozen=True)
class ValidationReport:
    """Validation of one runtime path ('native' or 'function-body') on example and fresh random inputs."""

    runtime_path: str
    rtol: float
    cases: tuple[ValidationCase, ...]

    @property
    def max_abs(self) -> float:
        """Largest absolute difference over all cases."""
        return max(c.max_abs for c in self.cases)

    @property
    def max_rel(self) -> float:
        """Largest relative difference over all cases."""
        return max(c.max_rel for c in self.cases)

    def __str__(self) -> str:
        rows = ", ".join(f"{c.name} (batch {c.batch}): abs {c.max_abs:.3g} rel {c.max_rel:.3g}" for c in self.cases)
        return f"{self.runtime_path}: {rows}"


@dataclass
class ExportResult:
    """What export_onnx produced: file, exporter used, lmKAN node count and the validation reports."""

    path: Path
    exporter: str
    opset: int
    lmkan_nodes: int
    function_body: bool
    validation: list[ValidationReport] = field(default_factory=list)
    external_data: Path | None = None  # the tables' file beside a model past protobuf's 2 GB limit

    def __str__(self) -> str:
        lines = [f"{self.path}: {self.lmkan_nodes} lmkan.LMKAN2D node(s), opset {self.opset}, exporter {self.exporter}"]
        if self.external_data is not None:
            lines[0] += f", tables in {self.external_data.name} (ONNX external data: keep the two files together)"
        lines += [f"  validated {report}" for report in self.validation]
        return "\n".join(lines)


def check_opset(opset: int) -> int:
    """Raise UnsupportedOpsetError unless opset is one the export supports."""
    if isinstance(opset, bool) or not isinstance(opset, int) or opset not in SUPPORTED_OPSETS:
        raise UnsupportedOpsetError(
            f"opset {opset!r} is not supported: pass opset between {SUPPORTED_OPSETS[0]} and {SUPPORTED_OPSETS[-1]} "
            f"(e.g. opset={SUPPORTED_OPSETS[0]}); the torch.export-based exporter starts at opset 18 and "
            "onnxruntime 1.21 runs up to 21"
        )
    return opset


def _flat_outputs(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    return [t for item in out for t in _flat_outputs(item)]


def _exporter_args(inputs: tuple) -> tuple:
    """Positional arguments as both exporters want them: they read a trailing dict as keyword arguments, so a
    dict that is the model's last positional argument is followed by an empty dict of keywords."""
    return inputs + ({},) if inputs and isinstance(inputs[-1], dict) else inputs


def _export_dynamo(model: torch.nn.Module, inputs: tuple, opset: int, dynamic_batch: bool) -> onnx.ModelProto:
    dynamic = None
    if dynamic_batch:  # torch.export specialises a batch of 1: trace with the example repeated twice
        batched = lambda x: isinstance(x, torch.Tensor) and x.dim() > 0  # noqa: E731
        dynamic = pytree.tree_map(lambda x: {0: torch.export.Dim.DYNAMIC} if batched(x) else None, inputs)
        inputs = batches.map_tensors(inputs, lambda x: x.repeat(2, *[1] * (x.dim() - 1))
                                     if batched(x) and x.shape[0] == 1 else x)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, _exporter_args(inputs), dynamo=True, opset_version=opset,
                                    dynamic_shapes=dynamic,
                                    custom_translation_table=dynamo_translation_table(), verbose=False)
    return program.model_proto


def _torchscript_symbolic(g, x, table):
    from torch.onnx import symbolic_helper

    x_sizes = symbolic_helper._get_tensor_sizes(x)
    t_sizes = symbolic_helper._get_tensor_sizes(table)
    out = g.op(f"{DOMAIN}::{OP_TYPE}", x, table, **{f"{ATTR_NUM_GRIDS}_i": t_sizes[1] - 1})
    out.setType(x.type().with_sizes([x_sizes[0] if x_sizes else None, t_sizes[3]]))
    return out


def _export_torchscript(model: torch.nn.Module, inputs: tuple, opset: int, dynamic_batch: bool) -> onnx.ModelProto:
    names = [f"input_{i}" for i in range(len(batches.tensors(inputs)))]
    with torch.no_grad():
        n_out = len(_flat_outputs(model(*inputs)))
    out_names = [f"output_{i}" for i in range(n_out)]
    axes = {name: {0: "batch"} for name in names + out_names} if dynamic_batch else None
    torch.onnx.register_custom_op_symbolic("lmkan::lookup2d", _torchscript_symbolic, opset)
    with warnings.catch_warnings(), tempfile.TemporaryDirectory(prefix="lmkan_onnx_") as folder:
        warnings.simplefilter("ignore")
        file = os.path.join(folder, "model.onnx")  # a file, not a buffer: past 2 GB torch adds external data
        torch.onnx.export(model, _exporter_args(inputs), file, dynamo=False, opset_version=opset,
                          input_names=names,
                          output_names=out_names, dynamic_axes=axes, custom_opsets={DOMAIN: DOMAIN_VERSION})
        return onnx.load(file)


def _lmkan_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [node for node in model.graph.node if node.domain == DOMAIN and node.op_type == OP_TYPE]


def _shapes(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    graph = model.graph
    return {vi.name: vi for vi in list(graph.input) + list(graph.value_info) + list(graph.output)}


def _declare_outputs(model: onnx.ModelProto, nodes: list[onnx.NodeProto]) -> None:
    """Add value_info [B, N_out] (B copied from X) for every lmkan node output that has no declared shape."""
    inits = {init.name: init for init in model.graph.initializer}
    for node in nodes:
        known = _shapes(model)
        x_info, table = known.get(node.input[0]), inits[node.input[1]]
        out = node.output[0]
        if out in known and known[out].type.tensor_type.HasField("shape"):
            continue
        out_type = helper.make_tensor_type_proto(table.data_type, None)
        dim = out_type.tensor_type.shape.dim.add()
        if x_info is not None and x_info.type.tensor_type.shape.dim:
            dim.CopyFrom(x_info.type.tensor_type.shape.dim[0])
        else:
            dim.dim_param = "batch"
        out_type.tensor_type.shape.dim.add().dim_value = table.dims[3]
        model.graph.value_info.append(helper.make_value_info(out, out_type))


def _constant_chain(model: onnx.ModelProto, name: str, inits: set[str]) -> list[onnx.NodeProto] | None:
    """The nodes (in graph order) computing `name` from initializers only, or None if it depends on an input."""
    producers = {out: node for node in model.graph.node for out in node.output}
    needed, stack = set(), [name]
    while stack:
        value = stack.pop()
        if value in inits or value == "":
            continue
        node = producers.get(value)
        if node is None or any(a.type == onnx.AttributeProto.GRAPH for a in node.attribute):
            return None
        if id(node) not in needed:
            needed.add(id(node))
            stack.extend(node.input)
    return [node for node in model.graph.node if id(node) in needed]


def _fold_tables(model: onnx.ModelProto) -> None:
    """Make every lmkan node's table an initializer: evaluate constant chains (e.g. a conv group's table[g])."""
    from onnx import numpy_helper
    from onnx.reference import ReferenceEvaluator

    graph = model.graph
    for node in _lmkan_nodes(model):
        inits = {init.name: init for init in graph.initializer}
        if node.input[1] in inits:
            continue
        chain = _constant_chain(model, node.input[1], set(inits))
        if chain is None:
            raise OnnxExportError(
                f"node {node.name}: the lmKAN table {node.input[1]!r} depends on the model inputs; only tables that "
                "are parameters (or constant functions of them) can be exported"
            )
        used = {i for n in chain for i in n.input} & set(inits)
        sub = helper.make_graph(chain, "table", [], [helper.make_tensor_value_info(node.input[1], 0, None)],
                                [inits[name] for name in used])
        value = ReferenceEvaluator(helper.make_model(sub, opset_imports=list(model.opset_import))).run(None, {})[0]
        name = f"{node.name or node.output[0]}.table"
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        node.input[1] = name
    _prune(model)


def _prune(model: onnx.ModelProto) -> None:
    """Drop nodes and initializers that no graph output depends on anymore (graphs without subgraphs only)."""
    graph = model.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute):
        return
    live = {out.name for out in graph.output}
    keep = []
    for node in reversed(graph.node):
        if any(out in live for out in node.output):
            keep.append(node)
            live.update(node.input)
    if len(keep) != len(graph.node):
        del graph.node[:]
        graph.node.extend(reversed(keep))
    unused = [init for init in graph.initializer if init.name not in live]
    for init in unused:
        graph.initializer.remove(init)


def _name_batch_dims(model: onnx.ModelProto) -> None:
    """Rename the exporter's symbolic batch dimensions (s0, s31, ...) of the graph inputs to 'batch' everywhere."""
    graph = model.graph
    renames = {}
    for k, value in enumerate(graph.input):
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].dim_param:
            renames.setdefault(dims[0].dim_param, "batch" if len(graph.input) == 1 else f"batch_{k}")
    for value in list(graph.input) + list(graph.value_info) + list(graph.output):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in renames:
                dim.dim_param = renames[dim.dim_param]


def _finalize(model: onnx.ModelProto, opset: int, with_body: bool) -> int:
    """Check the lmkan nodes, declare their output shapes, attach the function body; returns the node count."""
    _fold_tables(model)
    nodes = _lmkan_nodes(model)
    inits = {init.name: init for init in model.graph.initializer}
    for node in nodes:
        table = inits[node.input[1]]
        grids = next(a.i for a in node.attribute if a.name == ATTR_NUM_GRIDS)
        if len(table.dims) != 4 or table.dims[1] != grids + 1:
            raise OnnxExportError(f"node {node.name}: table {list(table.dims)} does not match num_grids={grids}")
    imports = {imp.domain: imp for imp in model.opset_import}
    if nodes and DOMAIN not in imports:
        model.opset_import.append(helper.make_opsetid(DOMAIN, DOMAIN_VERSION))
    _declare_outputs(model, nodes)
    _name_batch_dims(model)
    if with_body and nodes:
        model.functions.append(body_function(opset))
    return len(nodes)


def export_onnx(model: torch.nn.Module, path: str | os.PathLike, example_inputs, opset: int = 18,
                dynamic_batch: bool = True, validate: bool = True, *, exporter: str = "auto",
                function_body: bool = True, rtol: float = DEFAULT_RTOL,
                external_data: bool | None = None) -> ExportResult:
    """Export `model` to ONNX with one lmkan.LMKAN2D node per lmKAN op call, then (optionally) validate it.

    The torch.export-based exporter is used, the TorchScript exporter only as a fallback (exporter='auto') or on
    request. With function_body=True the file carries a standard-op body of the op so stock onnxruntime runs it.
    validate=True compares onnxruntime with PyTorch on the example inputs and on fresh random ones (another batch
    size when dynamic_batch) for the function-body path and, when the library builds, the native path.
    example_inputs are a tensor, a tuple of positional arguments or a dict of keyword arguments (as for
    lmkanify). external_data=None writes the tables to `<path>.data` only past protobuf's 2 GB limit.
    """
    check_opset(opset)
    if exporter not in EXPORTERS:
        raise OnnxExportError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    inputs = batches.positional(model, example_inputs, "export_onnx()")
    path = Path(path)
    was_training = model.training
    model.eval()
    try:
        proto = None
        if exporter in ("auto", "dynamo"):
            try:
                proto, used = _export_dynamo(model, inputs, opset, dynamic_batch), "dynamo"
            except Exception as err:  # the exporter raises many types; keep the cause
                if exporter == "dynamo":
                    raise OnnxExportError(f"torch.export-based ONNX export failed: {err}") from err
                logger.warning("lmkan: torch.export-based ONNX export failed (%s); using the TorchScript exporter",
                               str(err).splitlines()[0] if str(err) else type(err).__name__)
        if proto is None:
            try:
                proto, used = _export_torchscript(model, inputs, opset, dynamic_batch), "torchscript"
            except Exception as err:
                raise OnnxExportError(f"ONNX export failed with the TorchScript exporter too: {err}") from err
        count = _finalize(proto, opset, function_body)
        external = write_model(proto, path, external_data)
        result = ExportResult(path, used, opset, count, function_body and count > 0, external_data=external)
        if validate:
            paths = ([FUNCTION_BODY] if function_body or count == 0 else []) + ([NATIVE] if count else [])
            for runtime_path in paths:
                report = validate_onnx(model, path, inputs, runtime_path=runtime_path, rtol=rtol,
                                       dynamic_batch=dynamic_batch, required=runtime_path == FUNCTION_BODY)
                if report is not None:
                    result.validation.append(report)
    finally:
        model.train(was_training)
    return result


def _fresh_inputs(inputs: tuple, batch: int, generator: torch.Generator) -> tuple:
    """Random inputs like the example ones (same mean/std per floating tensor) with `batch` rows; other tensors
    (integer ids, masks) are cycled along the batch."""
    def fresh(x: torch.Tensor) -> torch.Tensor:
        if not x.is_floating_point():
            return x.repeat(-(-batch // x.shape[0]), *[1] * (x.dim() - 1))[:batch] if x.dim() else x
        noise = torch.randn((batch, *x.shape[1:]), generator=generator, dtype=x.dtype)
        std = x.std() if x.numel() > 1 else x.new_tensor(1.0)
        return noise * std + x.mean()

    return batches.map_tensors(inputs, fresh)


def validate_onnx(model: torch.nn.Module, path: str | os.PathLike, example_inputs, *, runtime_path: str = FUNCTION_BODY,
                  rtol: float = DEFAULT_RTOL, dynamic_batch: bool = True, trials: int = 2, seed: int = 0,
                  required: bool = True) -> ValidationReport | None:
    """Compare onnxruntime ('native' or 'function-body' path) with PyTorch; OnnxValidationError over rtol.

    With required=False a native library that cannot be built gives None instead of an error.
    """
    inputs = batches.positional(model, example_inputs, "validate_onnx()")
    try:
        sess = session(path, use_library=runtime_path == NATIVE)
    except Exception as err:
        if required:
            raise
        logger.warning("lmkan: %s path not validated: %s", runtime_path, err)
        return None
    names = [i.name for i in sess.get_inputs()]
    generator = torch.Generator().manual_seed(seed)
    batch = batches.batch_size(inputs)
    cases_in = [("example", inputs)] + [
        (f"random{k}", _fresh_inputs(inputs, batch + 3 * (k + 1) if dynamic_batch else batch, generator))
        for k in range(trials)
    ]
    cases = []
    for name, args in cases_in:
        with torch.no_grad():
            expected = [t.detach().cpu().numpy() for t in _flat_outputs(model(*args))]
        feed = {n: a.detach().cpu().numpy() for n, a in zip(names, batches.tensors(args))}
        got = sess.run(None, feed)
        max_abs = max(float(np.max(np.abs(g - e))) if e.size else 0.0 for g, e in zip(got, expected))
        scale = max(float(np.max(np.abs(e))) if e.size else 0.0 for e in expected)
        cases.append(ValidationCase(name, batches.batch_size(args), max_abs, max_abs / max(scale, 1e-30)))
    report = ValidationReport(sess.lmkan_path, rtol, tuple(cases))
    if report.max_rel > rtol:
        raise OnnxValidationError(
            f"{path}: onnxruntime differs from PyTorch beyond rtol={rtol:g}: {report}. Fix: check that the model "
            "is deterministic in eval mode, export in float32, or pass a larger rtol if the difference is expected"
        )
    return report
