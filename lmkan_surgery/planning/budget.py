"""Budget: what a compressed model may cost, as fractions of the original (formula MACs, bytes and/or latency)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from lmkan_surgery.errors import ConfigError

KINDS = ("macs", "bytes", "latency")


@dataclass(frozen=True)
class Budget:
    """Upper limits relative to the original model: macs (formula multiply-adds per sample), bytes (parameters and
    buffers) and latency (CPU seconds per forward of latency_batch samples of the layers the planner may change, as
    the cached per-shape table prices them for the original and for the plan alike, plan/latency_cache.py); None
    leaves that cost free. A plan never exceeds a MACs or bytes limit (checked on the built model) nor its latency
    estimate."""

    macs: float | None = 0.5
    bytes: float | None = None
    latency: float | None = None
    latency_batch: int = 256

    def __post_init__(self) -> None:
        values = {k: getattr(self, k) for k in KINDS}
        if all(v is None for v in values.values()):
            raise ConfigError("Budget needs at least one limit (macs and/or bytes, fractions of the original)")
        for kind, value in values.items():
            if value is not None and (not isinstance(value, (int, float)) or not math.isfinite(value)
                                      or not 0.0 < value <= 1.0):
                raise ConfigError(f"Budget.{kind} must be a fraction of the original in (0, 1], got {value!r}")
        if not isinstance(self.latency_batch, int) or self.latency_batch < 1:
            raise ConfigError(f"Budget.latency_batch must be a positive int, got {self.latency_batch!r}")

    def limits(self, original: dict[str, float]) -> dict[str, float]:
        """The absolute limits given the original's costs {kind: value}."""
        return {k: getattr(self, k) * original[k] for k in KINDS if getattr(self, k) is not None}

    def describe(self) -> str:
        """E.g. '0.5x MACs, 0.25x bytes'."""
        names = {"macs": "MACs", "bytes": "bytes", "latency": f"latency (batch {self.latency_batch})"}
        return ", ".join(f"{getattr(self, k):g}x {names[k]}" for k in KINDS if getattr(self, k) is not None)
