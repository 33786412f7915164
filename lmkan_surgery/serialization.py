"""save / load of converted models: a JSON spec (config, functional rewrites, every changed module's constructor
arguments) plus the state_dict as plain tensors. No module is pickled; load() rebuilds from the user's factory."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from typing import Any, Callable

import torch
from torch import nn

from lmkan_surgery.passes.replace import set_module
from lmkan_surgery.passes.trace import FunctionalRewrite, apply_functional

from .errors import ConversionError, LMKANError
from .nn import LMKANConv2d, LMKANLinear

FORMAT = "lmkan-surgery/1"
SPEC_ATTR = "lmkan_spec"

_CONV_ARGS = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "padding_mode")
_BUILDERS: dict[str, tuple[type[nn.Module], tuple[str, ...]]] = {
    "LMKANLinear": (LMKANLinear, ("in_features", "out_features", "num_grids", "input_norm", "table_dtype")),
    "LMKANConv2d": (LMKANConv2d, _CONV_ARGS + ("num_grids", "input_norm", "table_dtype")),
    "Linear": (nn.Linear, ("in_features", "out_features")),
    "Conv2d": (nn.Conv2d, _CONV_ARGS),
    "BatchNorm1d": (nn.BatchNorm1d, ("num_features", "eps", "momentum", "affine", "track_running_stats")),
    "BatchNorm2d": (nn.BatchNorm2d, ("num_features", "eps", "momentum", "affine", "track_running_stats")),
}


def module_spec(module: nn.Module) -> dict[str, Any]:
    """The constructor arguments that rebuild `module` (shapes after shrink, G, normalisation)."""
    kind = next((k for k, (cls, _) in _BUILDERS.items() if type(module) is cls), None)
    if kind is None:
        kind = next((k for k, (cls, _) in _BUILDERS.items() if isinstance(module, cls)), None)
    if kind is None:
        raise ConversionError(f"cannot describe a {type(module).__name__} for saving")
    _, args = _BUILDERS[kind]
    kwargs = {a: list(v) if isinstance(v := getattr(module, a), tuple) else v for a in args}
    if hasattr(module, "bias") and kind not in ("BatchNorm1d", "BatchNorm2d"):
        kwargs["bias"] = module.bias is not None
    return {"type": kind, "kwargs": kwargs}


def build_spec(config_dict: dict, rewrites: list[FunctionalRewrite], model: nn.Module,
               changed: list[str]) -> dict[str, Any]:
    """The JSON-able description of a conversion, attached to the student as `lmkan_spec`."""
    return {"format": FORMAT, "config": config_dict, "functional": [asdict(r) for r in rewrites],
            "modules": {name: module_spec(model.get_submodule(name)) for name in changed}}


def _build_module(name: str, spec: dict[str, Any], dtype: torch.dtype) -> nn.Module:
    """An uninitialised module (meta, then empty on CPU) of the described type; the state_dict fills it."""
    if spec.get("type") not in _BUILDERS:
        raise ConversionError(f"saved module '{name}' has unknown type {spec.get('type')!r}")
    cls, _ = _BUILDERS[spec["type"]]
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in spec["kwargs"].items()}
    with torch.device("meta"):
        module = cls(**kwargs, dtype=dtype)
    return module.to_empty(device="cpu")


def save(student: nn.Module, path: str | os.PathLike) -> None:
    """Write the conversion spec and the state_dict (tensors only) of a model returned by lmkanify."""
    spec = getattr(student, SPEC_ATTR, None)
    if spec is None:
        raise ConversionError("save() needs a model returned by lmkanify (it carries the conversion spec)")
    state = {k: v.detach().cpu() for k, v in student.state_dict().items()}
    torch.save({"lmkan_spec": json.dumps(spec), "state_dict": state}, os.fspath(path))


def load(path: str | os.PathLike, base_model_fn: Callable[[], nn.Module]) -> nn.Module:
    """Rebuild a saved conversion: base_model_fn() gives the original architecture, the spec reshapes it and the
    saved tensors fill it (torch.load(weights_only=True): nothing executable is unpickled)."""
    payload = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or "lmkan_spec" not in payload:
        raise ConversionError(f"{path} is not an lmkan_surgery.save() file")
    spec = json.loads(payload["lmkan_spec"])
    if spec.get("format") != FORMAT:
        raise ConversionError(f"{path} has format {spec.get('format')!r}, this version reads {FORMAT!r}")
    model = base_model_fn()
    if not isinstance(model, nn.Module):
        raise ConversionError(f"base_model_fn must return an nn.Module, got {type(model).__name__}")
    state = payload["state_dict"]
    model = apply_functional(model, [FunctionalRewrite(**r) for r in spec["functional"]])
    for name, module_spec_ in spec["modules"].items():
        tensor = state.get(f"{name}.table", state.get(f"{name}.weight"))
        dtype = tensor.dtype if tensor is not None else torch.get_default_dtype()
        if module_spec_.get("kwargs", {}).get("table_dtype"):  # a half-precision table: the layer's dtype is the bias's
            dtype = state[f"{name}.bias"].dtype if f"{name}.bias" in state else torch.get_default_dtype()
        try:
            old = model.get_submodule(name)
        except AttributeError as err:
            raise ConversionError(f"saved module '{name}' does not exist in base_model_fn()'s model: {err}") from err
        new = _build_module(name, module_spec_, dtype)
        new.train(old.training)
        set_module(model, name, new)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise LMKANError(f"the saved tensors do not fit the rebuilt model (wrong base_model_fn?): {err}") from err
    setattr(model, SPEC_ATTR, spec)
    return model
