"""Probe pass: one forward on example inputs recording the call order and shapes of chosen layers, and naming the
module that failed when the inputs do not fit the model."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import nn

from lmkan_surgery.batches import as_args, batch_size, call, describe  # noqa: F401 - re-exported for the passes
from lmkan_surgery.errors import ShapeError


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Run in eval mode (no BatchNorm statistics updates) and restore each module's training flag."""
    flags = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags.items():
            m.training = flag


@dataclass
class Probe:
    """Call order, first-call shapes and call counts of the watched layers, and the model output."""

    order: list[str] = field(default_factory=list)
    in_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    out_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    batch: int = 1
    output: Any = None
    raw_fed: set[str] = field(default_factory=set)  # watched layers whose input is (a view of) a raw input tensor
    feeds_output: set[str] = field(default_factory=set)  # watched layers whose output is (a view of) a model output


def flat_tensors(output: Any) -> list[torch.Tensor]:
    """The tensors of a (nested) model output, in order (tuples, lists, dicts, transformers ModelOutputs)."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        return [t for v in output.values() for t in flat_tensors(v)]
    if isinstance(output, (tuple, list)):
        return [t for v in output for t in flat_tensors(v)]
    if hasattr(output, "to_tuple"):
        return flat_tensors(output.to_tuple())
    return []


def run_probe(model: nn.Module, example_inputs: Any, watched: list[str]) -> Probe:
    """Forward example_inputs once (eval mode, no grad); ShapeError naming the failing module if it raises."""
    probe = Probe(batch=batch_size(example_inputs))
    modules = dict(model.named_modules())
    stack: list[str] = []

    def pre(name: str):
        def hook(module, args):
            stack.append(name)
        return hook

    def post(name: str, record: bool):
        def hook(module, args, output):
            stack.pop()
            if record and isinstance(output, torch.Tensor) and args and isinstance(args[0], torch.Tensor):
                if name not in probe.calls:
                    if any(args[0].data_ptr() == t.data_ptr() and args[0].numel() == t.numel() for t in raw):
                        probe.raw_fed.add(name)
                    probe.order.append(name)
                    outs[name] = output  # held until the end, so that no later tensor reuses its memory
                    probe.in_shapes[name] = tuple(args[0].shape)
                    probe.out_shapes[name] = tuple(output.shape)
                probe.calls[name] = probe.calls.get(name, 0) + 1
        return hook

    watched_set = set(watched)
    outs: dict[str, torch.Tensor] = {}
    raw_args, raw_kwargs = as_args(example_inputs)
    raw = [t for t in (*raw_args, *raw_kwargs.values()) if isinstance(t, torch.Tensor)]
    handles = []
    for name, module in modules.items():
        handles.append(module.register_forward_pre_hook(pre(name)))
        handles.append(module.register_forward_hook(post(name, name in watched_set)))
    try:
        with eval_mode(model), torch.no_grad():
            probe.output = call(model, example_inputs)
        outputs = {t.data_ptr() for t in flat_tensors(probe.output)}
        probe.feeds_output = {name for name, out in outs.items() if out.data_ptr() in outputs}
    except Exception as err:
        failed = stack[-1:] if stack else []
        where = f"inside module '{failed[0]}' ({type(modules[failed[0]]).__name__})" if failed and failed[0] else \
            "in the top-level forward"
        raise ShapeError(f"the model failed on example_inputs of shape(s) {describe(example_inputs)} {where}: "
                         f"{type(err).__name__}: {err}. Pass example inputs the model accepts (a tensor, a tuple "
                         f"of positional arguments or a dict of keyword arguments).") from err
    finally:
        for handle in handles:
            handle.remove()
    return probe
