"""Each paper reproduction under experiments/ runs end to end in its seconds-long smoke config."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def _load(name: str):
    """Import experiments/<name>/run.py under a unique module name."""
    spec = importlib.util.spec_from_file_location(f"experiment_{name}", EXPERIMENTS / name / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """A private cache folder and an unpolluted sys.path for one experiment run."""
    monkeypatch.setenv("LMKAN_DATA_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    return tmp_path / "out"


@pytest.mark.parametrize("name, metric", [("function_approx", "mse"), ("lmkan_cnn", "test_error")])
def test_student_sweeps(name, metric, isolated):
    results = _load(name).main(["--smoke", "--out", str(isolated)])
    assert results["mlp"] and results["lmkan"]
    assert all(math.isfinite(r[metric]) and r["flops"] > 0 and r["seconds_per_sample"] > 0
               for r in results["mlp"] + results["lmkan"])
    assert {m["label"] for m in results["matched"]} == {r["label"] for r in results["lmkan"]}
    assert json.loads((isolated / "results.json").read_text())["mode"] == "smoke"
    assert (isolated / "pareto.png").stat().st_size > 0


def test_methane(isolated):
    pytest.importorskip("tblite")
    pytest.importorskip("pyscf")
    methane = _load("methane")
    assert methane.dft_check_set(methane.CONFIGS["smoke"], 0) is None  # not labelled yet: the run goes on without
    sys.path.insert(0, str(EXPERIMENTS / "methane"))
    from dft_data import label_check_set

    check = label_check_set(methane.CONFIGS["smoke"]["dft_check"], 0, progress=False)
    assert len(check["energies_dft"]) == 3 and all(abs(check["energies_dft"] - check["energies_xtb"]) > 1.0)
    results = methane.main(["--smoke", "--out", str(isolated)])
    assert results["preconditioning"] == "relu_last" and results["dft_check"]["count"] == 3
    for representation in ("cartesian", "distances"):
        block = results["representations"][representation]
        assert all(math.isfinite(r["relative_rmse"]) and math.isfinite(r["check_vs_dft"]["pearson"])
                   for r in block["mlp"] + block["lmkan"])
        assert (isolated / f"pareto_{representation}.png").exists()
    manifests = [json.loads(p.read_text()) for p in (isolated.parent / "cache" / "methane").glob("*.json")]
    assert sorted(m["method"] for m in manifests) == ["B3LYP/def2-SVP (pyscf RKS) and GFN2-xTB (tblite)", "GFN2-xTB"]


def test_tracking_ignores_a_constant_offset():
    import torch

    methane = _load("methane")
    reference = torch.randn(100, dtype=torch.float64)
    assert methane.tracking(reference - 37.5, reference) == pytest.approx({"relative_rmse": 0.0, "pearson": 1.0})
    noisy = reference + 0.5 * torch.randn(100, dtype=torch.float64)
    got = methane.tracking(noisy, reference)
    assert got["relative_rmse"] == pytest.approx(float((noisy - reference).std(correction=0) / reference.std(correction=0)))


def test_student_flops_count_only_unfoldable_branches():
    sys.path.insert(0, str(EXPERIMENTS))
    try:
        from common import lmkan_student, model_flops
    finally:
        sys.path.remove(str(EXPERIMENTS))
    import torch

    lookups = 2 * (4 * 8 + 8 * 8 + 8 * 1)
    example = torch.randn(3, 4)
    first = lmkan_student(4, 8, 4, preconditioning="relu_first")
    assert [m.preconditioning for m in first[::2]] == ["linear", "relu_first", "relu_first"]
    assert model_flops(first, example) == lookups
    last = lmkan_student(4, 8, 4, preconditioning="relu_last")
    assert [m.preconditioning for m in last[::2]] == ["relu_last", "relu_last", "linear"]
    assert model_flops(last, example) == lookups + 4 * 8 + 8 * 8


def test_fastkan(isolated):
    results = _load("fastkan").main(["--smoke", "--out", str(isolated)])
    assert set(results["series"]) == {"MLP", "lmKAN (2-D)", "FastKAN", "1-D lookup KAN"}
    assert (isolated / "pareto.png").exists()


def test_cost_at_error_interpolates_the_pareto_front():
    sys.path.insert(0, str(EXPERIMENTS))
    try:
        from common import cost_at_error
    finally:
        sys.path.remove(str(EXPERIMENTS))
    costs, errors = [10, 100, 1000, 50], [1.0, 0.5, 0.25, 2.0]  # (50, 2.0) is dominated
    assert cost_at_error(costs, errors, 0.5) == pytest.approx((100, "interpolated"))
    value, kind = cost_at_error(costs, errors, 0.5 ** 0.5)
    assert kind == "interpolated" and value == pytest.approx(10 ** 1.5)
    assert cost_at_error(costs, errors, 0.1) == (1000, "beyond")
    assert cost_at_error(costs, errors, 3.0) == (10, "below")


def test_methane_features_are_invariant_where_they_should_be():
    import torch

    methane = _load("methane")
    vectors = torch.randn(5, 4, 3)
    moved = methane.augment(vectors, rotate=True)
    for rep in ("distances", "inverse_distances"):
        a, b = methane.features(vectors, rep), methane.features(moved, rep)
        assert torch.allclose(a[:, :4].sort(1).values, b[:, :4].sort(1).values, atol=1e-5)
        assert torch.allclose(a.sort(1).values, b.sort(1).values, atol=1e-5)
    gram = torch.einsum("nia,nja->nij", moved, moved)
    assert torch.allclose(gram.flatten(1).sort(1).values,
                          torch.einsum("nia,nja->nij", vectors, vectors).flatten(1).sort(1).values, atol=1e-4)
