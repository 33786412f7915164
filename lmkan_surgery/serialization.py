"""save / load of converted models: a JSON spec (config, functional rewrites, every changed module's constructor
arguments) plus the state_dict as plain tensors and a SHA-256 per tensor. No module is pickled; load() rebuilds
from the user's factory. Saves are atomic (temp file, fsync, rename): a killed save leaves the old file intact."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from typing import Any, Callable

import torch
from torch import nn

from lmkan_surgery.passes.replace import set_module
from lmkan_surgery.passes.trace import FunctionalRewrite, apply_functional

from .atomic import atomic_write
from .errors import ConversionError, LMKANError, ModelError, SaveFileError
from .nn import LMKANConv1d, LMKANConv2d, LMKANLinear

FORMAT = "lmkan-surgery/1"
SPEC_ATTR = "lmkan_spec"

_CONV_ARGS = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "padding_mode")
_BUILDERS: dict[str, tuple[type[nn.Module], tuple[str, ...]]] = {
    "LMKANLinear": (LMKANLinear, ("in_features", "out_features", "num_grids", "input_norm", "table_dtype")),
    "LMKANConv2d": (LMKANConv2d, _CONV_ARGS + ("num_grids", "input_norm", "table_dtype")),
    "LMKANConv1d": (LMKANConv1d, _CONV_ARGS + ("num_grids", "input_norm", "table_dtype")),
    "Linear": (nn.Linear, ("in_features", "out_features")),
    "Conv2d": (nn.Conv2d, _CONV_ARGS),
    "BatchNorm1d": (nn.BatchNorm1d, ("num_features", "eps", "momentum", "affine", "track_running_stats")),
    "BatchNorm2d": (nn.BatchNorm2d, ("num_features", "eps", "momentum", "affine", "track_running_stats")),
    "PReLU": (nn.PReLU, ("num_parameters",)),
    "Identity": (nn.Identity, ()),  # the planner's lmKAN blocks replace per-unit ops (and folded consumers) by it
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


def tensor_digest(tensor: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and raw bytes (detects any changed byte of the saved data)."""
    digest = hashlib.sha256(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    if flat.numel():
        digest.update(flat.view(torch.uint8).numpy())
    return digest.hexdigest()


def save(student: nn.Module, path: str | os.PathLike) -> None:
    """Write the conversion spec, the state_dict (tensors only) and a checksum per tensor of a model returned by
    lmkanify, atomically: `path` holds either the previous file or the complete new one, whatever happens."""
    spec = getattr(student, SPEC_ATTR, None)
    if spec is None:
        raise ConversionError("save() needs a model returned by lmkanify (it carries the conversion spec)")
    state = {k: v.detach().cpu() for k, v in student.state_dict().items()}
    checksums = {k: tensor_digest(v) for k, v in state.items()}
    payload = {"lmkan_spec": json.dumps(spec), "state_dict": state, "checksums": checksums}
    atomic_write(path, lambda handle: torch.save(payload, handle))


def _read_payload(path: str | os.PathLike) -> dict[str, Any]:
    """The verified payload of a save file, or SaveFileError saying what is wrong with the file."""
    file = os.fspath(path)
    if not os.path.isfile(file):
        raise SaveFileError(f"{file}: no such save file")
    if os.path.getsize(file) == 0:
        raise SaveFileError(f"{file} is empty (an interrupted copy?): re-save the model with lmkan_surgery.save()")
    try:
        payload = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # garbage bytes fail anywhere in the unpickler (IndexError, struct.error, ...)
        raise SaveFileError(f"{file} is not a readable lmkan_surgery.save() file (truncated, damaged or another "
                            f"format): {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from err
    if not isinstance(payload, dict) or "lmkan_spec" not in payload or "state_dict" not in payload:
        raise SaveFileError(f"{file} is a torch file but not an lmkan_surgery.save() file (no conversion spec)")
    try:
        spec = json.loads(payload["lmkan_spec"])
    except (TypeError, ValueError) as err:
        raise SaveFileError(f"{file}: the conversion spec is not valid JSON ({err})") from err
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        found = spec.get("format") if isinstance(spec, dict) else None
        raise SaveFileError(f"{file} has format {found!r}, this version reads {FORMAT!r}")
    for name, expected in (payload.get("checksums") or {}).items():  # files written before checksums: none
        tensor = payload["state_dict"].get(name)
        if tensor is None or tensor_digest(tensor) != expected:
            raise SaveFileError(f"{file}: tensor '{name}' does not match the checksum written at save time (the "
                                f"file was changed or damaged after saving); restore it from a good copy")
    payload["lmkan_spec"] = spec
    return payload


def load(path: str | os.PathLike, base_model_fn: Callable[[], nn.Module]) -> nn.Module:
    """Rebuild a saved conversion: base_model_fn() gives the original architecture, the spec reshapes it and the
    saved tensors (checked against their checksums) fill it. torch.load(weights_only=True): nothing executable
    is unpickled."""
    if isinstance(base_model_fn, nn.Module) or not callable(base_model_fn):
        raise ModelError(f"load({os.fspath(path)!r}, base_model_fn): base_model_fn must be a function returning a "
                         f"fresh model of the original architecture (e.g. torchvision.models.resnet18 or "
                         f"lambda: MyNet()), got {type(base_model_fn).__name__}"
                         + (" instance" if isinstance(base_model_fn, nn.Module) else ""))
    payload = _read_payload(path)
    spec = payload["lmkan_spec"]
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
