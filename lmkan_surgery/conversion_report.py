"""ConversionReport: one row per candidate layer (converted, shrunk or skipped, and why) plus shrink groups.

FLOPs here are formula-level multiply-adds per sample: a Linear/Conv2d costs N_in * N_out per output position
(N_in = in_channels/groups * kh * kw for a conv), an lmKAN layer 2 * N_in * N_out (fvcore numbers live in
lmkan_surgery.report).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

STATUSES = ("converted", "shrunk", "skipped")
PATHS = ("fx", "fx-child", "module-swap")


@dataclass
class LayerRecord:
    """What happened to one candidate layer; `name` is its qualified name in the original model."""

    name: str
    kind: str
    status: str
    reason: str
    path: str
    in_shape: tuple[int, ...] | None = None
    out_shape: tuple[int, ...] | None = None
    features_before: tuple[int, int] | None = None
    features_after: tuple[int, int] | None = None
    params_before: int = 0
    params_after: int = 0
    flops_before: int | None = None
    flops_after: int | None = None
    num_grids: int | None = None
    group: str | None = None


@dataclass
class ShrinkGroupRecord:
    """A set of original modules narrowed together; `boundary` names the student modules whose outputs stand for
    the original modules' outputs at the group boundary (same name, same shape, fitted by local reconstruction)."""

    name: str
    members: list[str]
    hidden: int
    kept: int
    boundary: list[str]
    train_rel_error: float | None = None
    heldout_rel_error: float | None = None


@dataclass
class ConversionReport:
    """The outcome of lmkanify: per-layer rows, shrink groups, warnings and the validation numbers."""

    mode: str = "exact"
    rows: list[LayerRecord] = field(default_factory=list)
    groups: list[ShrinkGroupRecord] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    validation: dict[str, float] = field(default_factory=dict)
    width_factor: float | None = None
    validated: str = "not validated"  # "exact", "validated" (shrink), "not validated (why)" or "FAILED"
    problems: list[str] = field(default_factory=list)  # unmet targets, failed validation: printed first, loudly

    def converted_names(self) -> list[str]:
        """Qualified names of the layers that are lmKAN layers in the student."""
        return [r.name for r in self.rows if r.status in ("converted", "shrunk")]

    def skipped(self) -> dict[str, str]:
        """{qualified name: reason} of every skipped layer."""
        return {r.name: r.reason for r in self.rows if r.status == "skipped"}

    def row(self, name: str) -> LayerRecord:
        """The row of one qualified name (KeyError if it was no candidate)."""
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(f"no candidate layer named {name!r} in this report")

    def total_flops(self, after: bool) -> int:
        """Sum of formula FLOPs over rows with known shapes."""
        return sum((r.flops_after if after else r.flops_before) or 0 for r in self.rows)

    def total_params(self, after: bool) -> int:
        """Sum of parameters over candidate layers."""
        return sum(r.params_after if after else r.params_before for r in self.rows)

    def flop_ratio(self) -> float | None:
        """Formula FLOPs after / before over all candidate layers (None when no shapes were recorded)."""
        before = self.total_flops(False)
        return self.total_flops(True) / before if before else None

    def to_dict(self) -> dict[str, Any]:
        """Plain data, as written by to_json."""
        return {
            "mode": self.mode,
            "rows": [asdict(r) for r in self.rows],
            "groups": [asdict(g) for g in self.groups],
            "warnings": list(self.warnings),
            "validation": dict(self.validation),
            "validated": self.validated,
            "problems": list(self.problems),
            "width_factor": self.width_factor,
            "flop_ratio": self.flop_ratio(),
            "flop_convention": "multiply-adds per sample; lmKAN = 2 * N_in * N_out, Linear/Conv = N_in * N_out",
        }

    def to_json(self, indent: int | None = 2) -> str:
        """The report as JSON."""
        return json.dumps(self.to_dict(), indent=indent)

    def __str__(self) -> str:
        header = ("name", "kind", "status", "path", "features", "G", "params", "MFLOPs", "reason")
        lines = [header]
        for r in self.rows:
            feats = _features(r.features_before, r.features_after)
            params = f"{r.params_before:,}" + (f" -> {r.params_after:,}" if r.params_after != r.params_before else "")
            flops = _mflops(r.flops_before, r.flops_after)
            lines.append((r.name, r.kind, r.status, r.path, feats, str(r.num_grids or "-"), params, flops, r.reason))
        widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
        text = ["  ".join(c.ljust(w) for c, w in zip(line, widths)) + "  " + line[-1] for line in lines]
        converted = len(self.converted_names())
        summary = f"{converted}/{len(self.rows)} layers converted ({self.mode} mode, {self.validated})"
        ratio = self.flop_ratio()
        if ratio is not None:
            summary += f"; formula FLOPs x{ratio:.3f}"
        summary += f"; parameters {self.total_params(False):,} -> {self.total_params(True):,}"
        if self.validation:
            summary += "; validation " + ", ".join(f"{k}={v:.3g}" for k, v in self.validation.items())
        text.append(summary)
        text += [f"group {g.name}: {len(g.members)} modules, hidden {g.hidden} -> {g.kept}, boundary "
                 f"{', '.join(g.boundary)}, rel. error train {_num(g.train_rel_error)} held-out "
                 f"{_num(g.heldout_rel_error)}" for g in self.groups]
        text += [f"warning: {w}" for w in self.warnings]
        return "\n".join([f"PROBLEM: {p}" for p in self.problems] + text)


def _features(before: tuple[int, int] | None, after: tuple[int, int] | None) -> str:
    if before is None:
        return "-"
    text = f"{before[0]}->{before[1]}"
    return text if after is None or after == before else f"{text} now {after[0]}->{after[1]}"


def _mflops(before: int | None, after: int | None) -> str:
    if before is None:
        return "-"
    text = f"{before / 1e6:.2f}"
    return text if after == before else f"{text} -> {(after or 0) / 1e6:.2f}"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"
