"""Per-shape layer latency, measured once per machine and cached as JSON ($LMKAN_CACHE_DIR or
~/.cache/lmkan_surgery, file plan_latency.json): the planner's latency cost of a plain or lmKAN layer of a given
(inputs, outputs, rows). A conv is priced as its im2col matrix product (rows = output positions x batch)."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from lmkan_surgery.atomic import atomic_write_bytes
from lmkan_surgery.kernels.build import source_hash
from lmkan_surgery.nn import LMKANLinear

CACHE_ENV = "LMKAN_CACHE_DIR"
FILE = "plan_latency.json"


def cache_path() -> Path:
    """$LMKAN_CACHE_DIR/plan_latency.json, or ~/.cache/lmkan_surgery/plan_latency.json."""
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "lmkan_surgery"
    return Path(root) / FILE


def _median_seconds(layer: nn.Module, x: torch.Tensor, repeats: int) -> float:
    with torch.inference_mode():
        layer(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            layer(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


class LatencyTable:
    """Cached medians of one forward of nn.Linear / LMKANLinear shapes on this machine, thread count and kernel
    build."""

    def __init__(self, repeats: int = 5) -> None:
        self.repeats = repeats
        self.path = cache_path()
        # the kernels' source hash too: a changed kernel is measured again, not priced by an older build's times
        self.machine = (f"{platform.machine()}-{platform.processor() or 'cpu'}-t{torch.get_num_threads()}"
                        f"-k{source_hash('cpu')}")
        try:
            self.entries: dict[str, float] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.entries = {}
        self.dirty = False

    def seconds(self, kind: str, n_in: int, n_out: int, rows: int, num_grids: int = 0,
                placement: str = "none") -> float:
        """Seconds of one forward of a `kind` ('plain' or 'lmkan') layer n_in -> n_out on `rows` rows; an lmKAN
        with its input placement ('none', 'affine' or 'quantile': the quantile maps cost more than the lookup)."""
        n_in, n_out, rows = max(1, n_in), max(1, n_out), max(1, rows)
        key = f"{self.machine}:{kind}:{n_in}:{n_out}:{rows}:{num_grids}" + (f":{placement}" if placement != "none"
                                                                          else "")
        if key not in self.entries:
            torch.manual_seed(0)
            layer = nn.Linear(n_in, n_out) if kind == "plain" else LMKANLinear(n_in, n_out, num_grids,
                                                                                 input_norm=placement)
            self.entries[key] = _median_seconds(layer.eval(), torch.randn(rows, n_in), self.repeats)
            self.dirty = True
        return self.entries[key]

    def save(self) -> None:
        """Write new measurements back (atomically; a read-only cache folder is not an error)."""
        if not self.dirty:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.path, json.dumps(self.entries, indent=0).encode())
            self.dirty = False
        except OSError:
            pass
