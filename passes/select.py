"""Select pass: which convertible layers (those a layer rule matches: Linear, Conv1d/2d, transformers Conv1D)
convert, with which G, and why the others do not.

Patterns (config.include / exclude / num_grids keys) are module classes, type names ("Linear", "Bottleneck",
"torch.nn.Conv2d"), qualified module names (selecting the module and everything under it) or regular expressions
(full match on the qualified name). Default skips (input stem, classifier head, children of MultiheadAttention) are
added to the user's exclusions. The memory guard runs here, on sizes computed from shapes, before any allocation.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from lmkan_surgery.config import LMKANConfig
from lmkan_surgery.errors import ConfigError
from lmkan_surgery.rules import converts_type, is_convertible, rule_for

TRANSFORMER_LAYERS = (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)
CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
SUPPORTED_DTYPES = (torch.float32, torch.float64)
_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


@dataclass
class Candidate:
    """One convertible layer of the model and the decision taken for it."""

    name: str
    module: nn.Module
    convert: bool = True
    reason: str = ""
    num_grids: int = 8
    table_bytes: int = 0
    shrinkable: bool = False  # converted, or skipped only by a default (its width may still be narrowed)


def lookup_features(module: nn.Module) -> tuple[int, int, int]:
    """(lookup inputs per group, outputs per group, groups) of a convertible layer (from its rule)."""
    return rule_for(module).geometry(module)


def table_bytes(module: nn.Module, num_grids: int) -> int:
    """Bytes of the lmKAN table that would replace `module`: (G+1)^2 * ceil(K/2) * out * groups * itemsize."""
    return rule_for(module).table_bytes(module, num_grids)


def _resolve_type(text: str, model_types: Mapping[str, type]) -> type | None:
    """The class a type-like string names, or None."""
    if text in model_types:
        return model_types[text]
    short = text.removeprefix("torch.").removeprefix("nn.")
    if "." not in short and isinstance(getattr(nn, short, None), type):
        return getattr(nn, short)
    module_path, _, attr = text.rpartition(".")
    if module_path:
        try:
            found = getattr(importlib.import_module(module_path), attr, None)
        except ImportError:
            found = None
        if isinstance(found, type):
            return found
    return None


class PatternSet:
    """A list of patterns resolved against one model; remembers which of them matched something."""

    def __init__(self, patterns: Iterable[Any], field: str, model: nn.Module) -> None:
        self.field = field
        self.modules = dict(model.named_modules())
        model_types = {type(m).__name__: type(m) for m in self.modules.values()}
        self.items: list[tuple[Any, str, Any]] = [(p, *self._resolve(p, model_types)) for p in patterns]
        self.matched: set[int] = set()

    def _resolve(self, pattern: Any, model_types: Mapping[str, type]) -> tuple[str, Any]:
        if isinstance(pattern, type):
            return "type", pattern
        if pattern in self.modules:
            return "name", pattern
        last = pattern.rpartition(".")[2]
        if _DOTTED.match(pattern) and last[:1].isupper():
            cls = _resolve_type(pattern, model_types)
            if cls is None:
                known = ", ".join(sorted(model_types)[:12])
                raise ConfigError(
                    f"config.{self.field} names layer type {pattern!r}, which is neither a torch.nn class nor a "
                    f"module type of this model (types here include: {known}); give a class, a qualified module "
                    f"name or a regular expression")
            return "type", cls
        try:
            return "regex", re.compile(pattern)
        except re.error as err:
            raise ConfigError(f"config.{self.field} pattern {pattern!r} is not a valid regular expression: "
                              f"{err}") from err

    def check_convertible_types(self) -> None:
        """Reject an include naming a torch.nn leaf type lmkanify cannot convert (Embedding, Conv3d...)."""
        for pattern, kind, value in self.items:
            if (kind == "type" and value.__module__.startswith("torch.nn") and not converts_type(value)
                    and not issubclass(value, CONTAINERS) and value is not nn.Module):
                raise ConfigError(f"config.{self.field} names {value.__name__} ({pattern!r}), which lmkanify cannot "
                                  f"convert: only nn.Linear, nn.Conv1d, nn.Conv2d, transformers Conv1D (and "
                                  f"layers inside containers) convert")

    def match(self, name: str) -> Any | None:
        """The first pattern selecting `name` (directly or through an ancestor), or None."""
        parts = name.split(".") if name else []
        ancestors = [".".join(parts[:i]) for i in range(len(parts), -1, -1)]
        for index, (pattern, kind, value) in enumerate(self.items):
            if kind == "type":
                hit = any(isinstance(self.modules.get(a), value) for a in ancestors)
            elif kind == "name":
                hit = name == value or name.startswith(value + ".")
            else:
                hit = value.fullmatch(name) is not None
            if hit:
                self.matched.add(index)
                return pattern
        return None

    def unmatched_warnings(self) -> list[str]:
        """One warning per pattern that selected no candidate layer."""
        return [f"config.{self.field} pattern {p!r} matched no convertible layer of the model"
                for i, (p, _, _) in enumerate(self.items) if i not in self.matched]


def _mha_parent(name: str, modules: Mapping[str, nn.Module]) -> str | None:
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        parent = ".".join(parts[:i])
        if isinstance(modules.get(parent), nn.MultiheadAttention):
            return parent
    return None


def _inside_transformer_layer(name: str, modules: Mapping[str, nn.Module]) -> bool:
    parts = name.split(".")
    return any(isinstance(modules.get(".".join(parts[:i])), TRANSFORMER_LAYERS) for i in range(len(parts)))


def _default_skips(order: list[str], modules: Mapping[str, nn.Module], raw_fed: set[str],
                   feeds_output: set[str] | None) -> dict[str, str]:
    """Input stem (the first layer, when it is a conv or a dense layer fed by the raw model inputs) and classifier
    head (the last layer, when it is dense, not inside a Transformer encoder/decoder layer and, when the probe ran,
    produces a model output)."""
    skips: dict[str, str] = {}
    if order:
        first = modules[order[0]]
        rule = rule_for(first)
        if order[0] in raw_fed or (rule is not None and not rule.linear_like):
            skips[order[0]] = ("default skip: input stem (the first layer sees raw inputs); set skip_defaults=False "
                               "to convert it")
        last = modules[order[-1]]
        rule = rule_for(last)
        is_output = feeds_output is None or order[-1] in feeds_output
        if rule is not None and rule.linear_like and is_output and not _inside_transformer_layer(order[-1], modules):
            skips[order[-1]] = "default skip: classifier head (the last layer); set skip_defaults=False to convert it"
    return skips


def select_layers(model: nn.Module, config: LMKANConfig, order: list[str], raw_fed: set[str] | None = None,
                  blocked: Mapping[str, str] | None = None,
                  feeds_output: set[str] | None = None) -> tuple[list[Candidate], list[str]]:
    """Candidates in execution order (unexecuted ones last, in registration order) and the pattern warnings;
    `raw_fed` / `feeds_output` name the layers the probe saw fed by the raw inputs / producing a model output
    (None: no probe), `blocked` maps layers that must be kept (their parameters escape their forward) to why."""
    modules = dict(model.named_modules())
    names = [n for n, m in modules.items() if is_convertible(m)]
    ordered = [n for n in order if n in names] + [n for n in names if n not in order]
    exclude = PatternSet(config.exclude, "exclude", model)
    include = PatternSet(config.include, "include", model) if config.include is not None else None
    if include is not None:
        include.check_convertible_types()
    grids = config.num_grids if isinstance(config.num_grids, Mapping) else {}
    grid_patterns = PatternSet([k for k in grids if k != "default"], "num_grids", model)
    executed = [n for n in ordered if n in order]
    defaults = (_default_skips(executed or ordered, modules, raw_fed or set(), feeds_output if executed else None)
                if config.skip_defaults else {})
    candidates, total = [], 0
    for name in ordered:
        module = modules[name]
        grid_key = grid_patterns.match(name)
        g = int(grids[grid_key]) if grid_key is not None else config.default_num_grids()
        cand = Candidate(name, module, num_grids=g, table_bytes=table_bytes(module, g))
        cand.reason = _skip_reason(cand, config, modules, exclude, include, defaults, total, blocked or {})
        cand.convert = not cand.reason
        cand.shrinkable = cand.convert or cand.reason == defaults.get(name)
        if cand.convert:
            total += cand.table_bytes
            cand.reason = "converted" + ("" if name in order else " (not executed by example_inputs: no shapes)")
        candidates.append(cand)
    warnings = exclude.unmatched_warnings() + grid_patterns.unmatched_warnings()
    if include is not None:
        warnings += include.unmatched_warnings()
    return candidates, warnings


def _skip_reason(cand: Candidate, config: LMKANConfig, modules: Mapping[str, nn.Module], exclude: PatternSet,
                 include: PatternSet | None, defaults: Mapping[str, str], total: int,
                 blocked: Mapping[str, str]) -> str:
    """Why a candidate is skipped ('' when it converts); the first applicable reason wins."""
    name, module = cand.name, cand.module
    mha = _mha_parent(name, modules)
    if mha is not None:
        return (f"child of nn.MultiheadAttention '{mha}', which uses its weights functionally (with a packed "
                "in_proj parameter); converting it would not change the attention")
    if name in blocked:
        return blocked[name]
    rule = rule_for(module)
    if not rule.plain(module):
        stock = rule.stock_name(module)
        return f"{type(module).__name__} overrides {stock}.forward, so it is not a plain {stock}"
    pattern = exclude.match(name)
    if pattern is not None:
        return f"excluded by config.exclude pattern {pattern!r}"
    if include is not None and include.match(name) is None:
        return "not selected by config.include"
    if name in defaults:
        return defaults[name]
    weight = rule.weight(module)
    if weight.dtype not in SUPPORTED_DTYPES or weight.device.type == "meta":
        return f"weight is {weight.dtype} on {weight.device}; lmKAN layers need float32/float64 data"
    k = lookup_features(module)[0]
    if k < config.min_features:
        return f"lookup input has {k} features < config.min_features={config.min_features}"
    mib = cand.table_bytes / 2**20
    if cand.table_bytes > config.max_layer_table_bytes:
        return (f"memory guard: table would take {mib:.1f} MiB (G={cand.num_grids}) > max_layer_table_bytes="
                f"{config.max_layer_table_bytes / 2**20:.1f} MiB; lower num_grids for it or raise the budget")
    if total + cand.table_bytes > config.max_total_table_bytes:
        new_total = (total + cand.table_bytes) / 2**20
        return (f"memory guard: table of {mib:.1f} MiB would bring the total to {new_total:.1f}"
                f" MiB > max_total_table_bytes={config.max_total_table_bytes / 2**20:.1f} MiB")
    return ""
