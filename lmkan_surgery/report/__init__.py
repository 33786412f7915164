"""Savings report: fvcore FLOPs with the lmKAN op handle, parameters, bytes and measured latency, before/after."""

from .flops import (
    CONVENTION,
    FlopCount,
    FlopCrossCheckError,
    count_flops,
    lmkan_layer_macs,
    lookup_flop_handle,
)
from .savings import LatencyRow, LayerRow, ModelStats, SavingsReport, compare

__all__ = [
    "CONVENTION",
    "FlopCount",
    "FlopCrossCheckError",
    "LatencyRow",
    "LayerRow",
    "ModelStats",
    "SavingsReport",
    "compare",
    "count_flops",
    "lmkan_layer_macs",
    "lookup_flop_handle",
]
