"""Parameter escapes: a layer whose weight/bias is read outside its own forward cannot be replaced silently.

Three detectors: parameters shared with another module (tied weights), FX get_attr nodes of a layer's parameters
in a traced graph, and, for code FX cannot trace, an access watch during the probing forward (the layer's
`weight`/`bias` read from anywhere but its own forward come back as a watched tensor recording how they are used).
Metadata reads (dtype, device, shape...) are fine: a converted layer serves them (LMKANLayer.weight). A data read
keeps the layer, reported with the reader's name.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Mapping

import torch
from torch import fx, nn

from .trace import TraceResult

from lmkan_surgery.nn.metadata import METADATA_ATTRS, METADATA_METHODS, is_metadata_func

PARAMS = ("weight", "bias")


def tied_parameters(model: nn.Module, names: list[str]) -> dict[str, str]:
    """{layer: reason} for layers whose weight/bias object is also registered on another module."""
    owners: dict[int, list[tuple[nn.Module, str]]] = {}
    for mod_name, module in model.named_modules():
        for attr, param in module._parameters.items():
            if param is not None:
                owners.setdefault(id(param), []).append((module, f"{mod_name}.{attr}" if mod_name else attr))
    blocked = {}
    for name in names:
        module = model.get_submodule(name)
        for attr in PARAMS:
            param = module._parameters.get(attr)
            others = [o for m, o in owners.get(id(param), []) if m is not module] if param is not None else []
            if others:
                blocked[name] = (f"{attr} is tied to {others[0]} (a shared parameter); converting would break the tie, "
                                 f"so the layer is kept")
                break
    return blocked


def _metadata_only(node: fx.Node) -> bool:
    """Whether every use of a get_attr node reads metadata (x.dtype, x.shape, x.size()...)."""
    for user in node.users:
        if user.op == "call_function" and user.target is getattr and user.args[1] in METADATA_ATTRS:
            continue
        if user.op == "call_method" and user.target in METADATA_METHODS:
            continue
        return False
    return True


def graph_reads(trace: TraceResult, names: list[str]) -> dict[str, str]:
    """{layer: reason} for layers whose weight/bias a traced graph uses as data outside the layer's call."""
    wanted = {f"{name}.{attr}": name for name in names for attr in PARAMS}
    blocked = {}
    for part in trace.parts:
        prefix = f"{part.prefix}." if part.prefix else ""
        for node in part.graph.nodes:
            full = f"{prefix}{node.target}" if node.op == "get_attr" else None
            if full in wanted and not _metadata_only(node):
                readers = ", ".join(sorted(u.name for u in node.users))
                blocked.setdefault(wanted[full], f"{full.rpartition('.')[2]} read as data by {readers} in "
                                                 f"{part.prefix or 'the model'} (traced graph); the layer is kept")
    return blocked


class _Watched(torch.Tensor):
    """A view of a parameter that reports every non-metadata use to the watch it belongs to."""

    _lmkan_report = None

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        owner = next((a for a in args if isinstance(a, _Watched)), None)
        if owner is not None and owner._lmkan_report is not None and not is_metadata_func(func):
            owner._lmkan_report()
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def watch_parameter_reads(model: nn.Module, names: list[str]) -> Iterator[dict[str, str]]:
    """While active, reads of the named layers' weight/bias outside their own forward are watched; the yielded
    dict fills with {layer: reason} for data reads, naming the innermost module running at the time."""
    found: dict[str, str] = {}
    stack: list[str] = []
    handles, swapped = [], []

    def leave(module, args, output) -> None:
        if stack:
            stack.pop()

    for mod_name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(lambda m, a, _n=mod_name: stack.append(_n) and None))
        handles.append(module.register_forward_hook(leave))
    for name in names:
        module = model.get_submodule(name)
        if type(module).__dict__.get("_lmkan_watched") or "weight" not in module._parameters:
            continue  # already watched, or a parametrized weight (computed by a property of its own)
        swapped.append((module, type(module)))
        module.__class__ = _watching_class(type(module), name, found, stack)
    try:
        yield found
    finally:
        for handle in handles:
            handle.remove()
        for module, cls in swapped:
            module.__class__ = cls


def _watching_class(cls: type, name: str, found: dict[str, str], stack: list[str]) -> type:
    """A subclass of `cls` whose weight/bias properties hand out watched views outside the layer's own forward."""

    def getter(attr: str):
        def read(self):
            value = self._parameters.get(attr)
            if value is None or (stack and stack[-1] == name):
                return value
            reader = stack[-1] if stack else ""
            watched = value.as_subclass(_Watched)

            def report() -> None:
                found.setdefault(name, f"{attr} read as data by {reader or 'the top-level forward'} (outside its "
                                       f"own forward); the layer is kept")
            watched._lmkan_report = report
            return watched
        return property(read)

    return type(cls.__name__, (cls,), {"weight": getter("weight"), "bias": getter("bias"), "_lmkan_watched": True,
                                       "__module__": cls.__module__})


def escaped(blocked: Mapping[str, str], *more: Mapping[str, str]) -> dict[str, str]:
    """Merge {layer: reason} maps, the first reason found for a layer winning."""
    out = dict(blocked)
    for extra in more:
        for key, value in extra.items():
            out.setdefault(key, value)
    return out
