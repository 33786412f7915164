"""One home for batches: how a calibration / example batch (a tensor, a tuple of positional arguments, a dict of
keyword arguments, or an (x, y) pair from a DataLoader with an `input_fn`) is turned into model arguments, moved,
measured and fed to a model. Conversion, the savings report, ONNX export and distillation all use it."""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch
import torch.utils._pytree as pytree
from torch import nn

from .errors import BatchError

InputFn = Callable[[Any], Any]
"""Maps one item of a data source to model inputs, e.g. ``lambda batch: batch[0]`` for (x, y) pairs."""


def as_args(inputs: Any) -> tuple[tuple, dict]:
    """A batch as (args, kwargs): a tensor is one argument, a tuple/list positional arguments, a dict keywords."""
    if isinstance(inputs, dict):
        return (), dict(inputs)
    if isinstance(inputs, (tuple, list)):
        return tuple(inputs), {}
    return (inputs,), {}


def call(model: nn.Module, inputs: Any) -> Any:
    """model(*args, **kwargs) for one batch."""
    args, kwargs = as_args(inputs)
    return model(*args, **kwargs)


def describe(inputs: Any) -> str:
    """The shapes of a batch's tensors (type names for anything else), for error messages."""
    args, kwargs = as_args(inputs)
    items = [str(tuple(a.shape)) if isinstance(a, torch.Tensor) else type(a).__name__ for a in args]
    items += [f"{k}={tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__}" for k, v in kwargs.items()]
    return ", ".join(items)


def tensors(inputs: Any) -> list[torch.Tensor]:
    """Every tensor of a batch, nested containers included, in the order exporters flatten them."""
    return [leaf for leaf in pytree.tree_leaves(inputs) if isinstance(leaf, torch.Tensor)]


def batch_size(inputs: Any) -> int:
    """Leading dimension of the first tensor in a batch (1 when there is none)."""
    return next((int(t.shape[0]) for t in tensors(as_args(inputs)) if t.dim() > 0), 1)


def map_tensors(inputs: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """The batch with fn applied to each of its tensors, nesting and containers kept."""
    return pytree.tree_map(lambda leaf: fn(leaf) if isinstance(leaf, torch.Tensor) else leaf, inputs)


def to_device(inputs: Any, device: torch.device | str) -> Any:
    """The batch with its tensors on `device`."""
    return map_tensors(inputs, lambda t: t.to(device))


def positional(model: nn.Module, inputs: Any, who: str) -> tuple:
    """The batch as positional arguments of model.forward (tracers such as fvcore and the ONNX exporters take a
    tuple): a dict of keyword arguments is bound to the forward's parameters by name."""
    args, kwargs = as_args(inputs)
    if not kwargs:
        return args
    try:
        bound = inspect.signature(model.forward).bind(*args, **kwargs)
    except TypeError as err:
        raise BatchError(f"{who}: the inputs ({describe(inputs)}) do not fit {type(model).__name__}.forward: {err}. "
                         f"Pass a tensor, a tuple of positional arguments or a dict keyed by forward's parameter "
                         f"names") from None
    if bound.kwargs:
        bound.apply_defaults()  # a skipped optional parameter in the middle: pass its default positionally
    if bound.kwargs:
        raise BatchError(f"{who} needs inputs it can pass positionally; {', '.join(bound.kwargs)} of "
                         f"{type(model).__name__}.forward are keyword-only")
    return tuple(bound.args)


def positional_capacity(model: nn.Module) -> int | None:
    """How many positional arguments model.forward takes (None: any number, or unknown)."""
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return None
    return sum(p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD) for p in params)


def model_inputs(model: nn.Module, batch: Any, input_fn: InputFn | None = None, what: str = "batch") -> Any:
    """The model inputs of one item of a data source: input_fn(batch) when given, else the batch itself after
    checking that it is not an (x, y) pair fed to a one-argument model (BatchError saying how to unwrap it)."""
    if input_fn is not None:
        return input_fn(batch)
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        capacity = positional_capacity(model)
        if capacity is not None and len(batch) > capacity:
            raise BatchError(
                f"a {what} has {len(batch)} items ({describe(batch)}) but {type(model).__name__}.forward takes "
                f"{capacity} positional argument(s): it looks like (x, y) pairs from a DataLoader. Unwrap (x, y) "
                f"pairs ((x for x, _ in loader)) or pass input_fn=lambda batch: batch[0]")
    return batch
