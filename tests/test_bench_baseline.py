"""tools/bench_layer.py's --baseline refuses an extension file named like the build under test: a second module of
that name in one process runs the first one's code, so such an A/B would time one build twice."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import bench_layer  # noqa: E402


def test_baseline_with_the_build_under_tests_module_name_is_refused(monkeypatch, tmp_path):
    monkeypatch.setattr(bench_layer.build, "load_native", lambda kind: types.SimpleNamespace(__name__="lmkan_cpu_abc"))
    same = tmp_path / "lmkan_cpu_abc.so"
    same.write_bytes(b"")  # never opened: the name alone decides
    with pytest.raises(SystemExit, match="lmkan_cpu_abc is the build under test's"):
        bench_layer.load_baseline(str(same))


def test_baseline_of_other_sources_is_loaded(monkeypatch, tmp_path):
    monkeypatch.setattr(bench_layer.build, "load_native", lambda kind: types.SimpleNamespace(__name__="lmkan_cpu_abc"))
    other = tmp_path / "lmkan_cpu_def.so"
    other.write_bytes(b"not an extension")  # gets past the name check, then fails in the loader
    with pytest.raises(ImportError):
        bench_layer.load_baseline(str(other))
