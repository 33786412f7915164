"""Trace pass: torch.fx symbolic tracing with a recursive per-child fallback, and functional-call rewriting.

The whole model is traced when possible ('fx'); otherwise each child that traces is used ('fx-child') and the
layers left outside every traced graph are handled by plain module swapping ('module-swap'). ``F.linear`` /
``F.conv2d`` calls whose weight is a module parameter are turned into nn.Linear / nn.Conv2d submodules.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn

from lmkan_surgery.nn import LMKANLayer
from lmkan_surgery.rules import rule_for


class _Tracer(fx.Tracer):
    """The default tracer, with lmKAN layers and every convertible layer (subclasses and non-torch types such as
    transformers' Conv1D included) kept as leaves like torch.nn layers."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        leaf = isinstance(m, LMKANLayer) or rule_for(m) is not None
        return leaf or super().is_leaf_module(m, module_qualified_name)


@dataclass
class TracedPart:
    """One traced module: its qualified name prefix ('' for the root) and its graph."""

    prefix: str
    graph: fx.Graph


@dataclass
class FunctionalRewrite:
    """One F.linear / F.conv2d call turned into a submodule (replayed by load())."""

    container: str
    node: str
    module: str
    kind: str
    weight: str
    kwargs: dict = field(default_factory=dict)


@dataclass
class TraceResult:
    """Traced parts, the path of every module and the reasons tracing fell back."""

    parts: list[TracedPart] = field(default_factory=list)
    paths: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def path_of(self, name: str) -> str:
        """'fx', 'fx-child' or 'module-swap' for a qualified module name."""
        return self.paths.get(name, "module-swap")


def _is_torch_leaf(module: nn.Module) -> bool:
    return _Tracer().is_leaf_module(module, "")


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:300]


def trace_model(model: nn.Module) -> TraceResult:
    """Trace the model, falling back to its children recursively; record each module's path."""
    result = TraceResult()
    _trace_into(model, "", result)
    return result


def _trace_into(module: nn.Module, prefix: str, result: TraceResult) -> None:
    try:
        graph = _Tracer().trace(module)
    except Exception as err:  # fx raises many types (TraceError, TypeError, RuntimeError...) on untraceable code
        label = prefix or "the model"
        result.warnings.append(f"could not fx-trace {label} ({type(module).__name__}): {_short(err)}; "
                               "tracing its children instead")
        for child_name, child in module.named_children():
            if not _is_torch_leaf(child):
                _trace_into(child, f"{prefix}.{child_name}" if prefix else child_name, result)
        return
    result.parts.append(TracedPart(prefix, graph))
    path = "fx" if prefix == "" else "fx-child"
    for name, _ in module.named_modules():
        full = f"{prefix}.{name}" if prefix and name else (prefix or name)
        result.paths.setdefault(full, path)


_LINEAR_FNS = (F.linear,)
_CONV_FNS = (F.conv2d, torch.conv2d)


def _arg(node: fx.Node, index: int, name: str, default=None):
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _param_of(container: nn.Module, value) -> nn.Parameter | None:
    """The parameter a get_attr node refers to, or None."""
    if not isinstance(value, fx.Node) or value.op != "get_attr":
        return None
    try:
        attr = container.get_parameter(value.target)
    except AttributeError:
        return None
    return attr


def _conv_kwargs(node: fx.Node) -> dict | None:
    """Constant stride/padding/dilation/groups of an F.conv2d call, or None when any is computed."""
    kwargs = {"stride": _arg(node, 3, "stride", 1), "padding": _arg(node, 4, "padding", 0),
              "dilation": _arg(node, 5, "dilation", 1), "groups": _arg(node, 6, "groups", 1)}
    if any(isinstance(v, fx.Node) for v in kwargs.values()):
        return None
    return {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}


def _module_for(kind: str, weight: nn.Parameter, bias: nn.Parameter | None, kwargs: dict) -> nn.Module:
    """An nn.Linear / nn.Conv2d sharing the given parameters."""
    if kind == "linear":
        module = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    else:
        out_c, in_g, kh, kw = weight.shape
        module = nn.Conv2d(in_g * kwargs["groups"], out_c, (kh, kw), bias=bias is not None, device="meta",
                           **{k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()})
    module.weight = weight
    if bias is not None:
        module.bias = bias
    return module


def _free_name(container: nn.Module, base: str) -> str:
    name, k = base, 1
    while hasattr(container, name):
        name, k = f"{base}_{k}", k + 1
    return name


def find_functional(container: nn.Module, graph: fx.Graph, prefix: str) -> tuple[list[FunctionalRewrite], list[str]]:
    """The F.linear / F.conv2d calls of a traced graph that can become modules, and why others cannot."""
    rewrites, warnings = [], []
    for node in graph.nodes:
        if node.op != "call_function" or node.target not in _LINEAR_FNS + _CONV_FNS:
            continue
        kind = "linear" if node.target in _LINEAR_FNS else "conv2d"
        weight_node, bias_node = _arg(node, 1, "weight"), _arg(node, 2, "bias")
        where = f"{kind} call '{node.name}' in {prefix or 'the model'}"
        weight = _param_of(container, weight_node)
        if weight is None:
            warnings.append(f"{where}: weight is not a module parameter; left functional")
            continue
        if bias_node is not None and _param_of(container, bias_node) is None:
            warnings.append(f"{where}: bias is computed, not a parameter; left functional")
            continue
        if len(weight_node.users) > 1:
            warnings.append(f"{where}: weight '{weight_node.target}' is also used elsewhere (tied); left functional")
            continue
        kwargs = _conv_kwargs(node) if kind == "conv2d" else {}
        if kwargs is None:
            warnings.append(f"{where}: stride/padding/dilation/groups are computed; left functional")
            continue
        name = _free_name(container, f"{weight_node.target.replace('.', '_')}_{kind}")  # unique: weights are untied
        rewrites.append(FunctionalRewrite(prefix, node.name, name, kind, weight_node.target, kwargs))
    return rewrites, warnings


def apply_functional(model: nn.Module, rewrites: list[FunctionalRewrite]) -> nn.Module:
    """Replace the recorded functional calls by submodules; returns the (possibly new) root module."""
    by_container: dict[str, list[FunctionalRewrite]] = {}
    for rw in rewrites:
        by_container.setdefault(rw.container, []).append(rw)
    for prefix, items in by_container.items():
        container = model.get_submodule(prefix)
        graph = _Tracer().trace(container)
        nodes = {n.name: n for n in graph.nodes}
        for rw in items:
            node = nodes[rw.node]
            weight = container.get_parameter(rw.weight)
            bias_node = _arg(node, 2, "bias")
            bias = container.get_parameter(bias_node.target) if bias_node is not None else None
            container.add_module(rw.module, _module_for(rw.kind, weight, bias, rw.kwargs))
            with graph.inserting_before(node):
                new = graph.call_module(rw.module, (node.args[0] if node.args else node.kwargs["input"],))
            node.replace_all_uses_with(new)
            graph.erase_node(node)
        for node in list(graph.nodes):
            if node.op == "get_attr" and not node.users:
                graph.erase_node(node)
        rebuilt = fx.GraphModule(container, graph, class_name=type(container).__name__)
        if prefix == "":
            model = rebuilt
        else:
            parent_name, _, child = prefix.rpartition(".")
            setattr(model.get_submodule(parent_name), child, rebuilt)
    return model
