"""The layer-rule registry: one LayerRule per convertible source layer type (see base.LayerRule)."""

from __future__ import annotations

from torch import nn

from .base import LayerRule, lookup_width
from .conv import Conv1dRule, Conv2dRule
from .linear import LinearRule, TransformersConv1DRule

RULES: list[LayerRule] = [LinearRule(), Conv1dRule(), Conv2dRule(), TransformersConv1DRule()]


def rule_for(module: nn.Module) -> LayerRule | None:
    """The rule describing `module` (a convertible source layer or an lmKAN layer), or None."""
    for rule in RULES:  # lmKAN classes are matched by exact type, so LMKANConv1d is not taken for LMKANConv2d
        if type(module) in rule.lmkan:
            return rule
    for rule in RULES:
        if rule.matches(module):
            return rule
    return None


def is_convertible(module: nn.Module) -> bool:
    """Whether some rule converts this module type (its forward may still be overridden: see LayerRule.plain)."""
    return any(rule.matches(module) for rule in RULES)


def converts_type(cls: type) -> bool:
    """Whether some rule converts instances of the class `cls`."""
    return any(issubclass(cls, rule.source) for rule in RULES if rule.source)


def register_rule(rule: LayerRule, first: bool = True) -> None:
    """Add a rule for a new layer type (checked before the built-in ones unless first=False)."""
    if first:
        RULES.insert(0, rule)
    else:
        RULES.append(rule)


__all__ = ["LayerRule", "RULES", "converts_type", "is_convertible", "lookup_width", "register_rule", "rule_for"]
