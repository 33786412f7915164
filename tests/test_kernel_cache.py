"""The kernel cache verifies what it loads: a truncated library (SIGBUS in dlopen before) or a garbage one is
rebuilt by itself, a failed rebuild names the folder, old entries are pruned, and a CPU-only run never prints
torch's "No CUDA runtime is found" line. Every damaged-cache run is a subprocess on a copy of the cache."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lmkan_surgery.errors import KernelBuildError
from lmkan_surgery.kernels import build, cache

REPO = Path(__file__).resolve().parents[1]

# Runs one native forward and checks it against the reference; prints which backend ran.
CHILD = """
import torch, lmkan_surgery as L
from lmkan_surgery.ops import dispatch
from lmkan_surgery.ops.reference import forward_reference
x, table = torch.randn(4, 16), torch.randn(8, 9, 9, 3)
y = L.lmkan_lookup(x, table)
assert torch.allclose(y, forward_reference(x, table), rtol=1e-5, atol=1e-5)
print("backend", dispatch.backend_for(x, table).name)
"""


@pytest.fixture(scope="module")
def built() -> Path:
    """The cache entry of the CPU kernels of this test session (built if needed)."""
    try:
        build.load_native("cpu")
    except KernelBuildError as err:
        pytest.skip(f"no native CPU kernels here: {err}")
    return build.cache_dir("cpu")


def copied_cache(built: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the built entry in a fresh cache folder (mtimes kept: a rebuild is a relink); (root, library)."""
    root = tmp_path / "cache"
    shutil.copytree(built, root / built.name, ignore=shutil.ignore_patterns("lock"))
    lib = next((root / built.name).glob("*.so"))
    return root, lib


def run_child(root: Path, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHONPATH": str(REPO), build.CACHE_ENV: str(root), **env}
    full.pop("LMKAN_BACKEND", None)
    return subprocess.run([sys.executable, "-c", CHILD], env=full, capture_output=True, text=True, timeout=600)


def test_truncated_library_is_rebuilt_instead_of_sigbus(built, tmp_path):
    root, lib = copied_cache(built, tmp_path)
    size = lib.stat().st_size
    os.truncate(lib, size // 2)
    old = [root / f"{built.name.rsplit('-', 1)[0]}-{k:016d}" for k in range(4)]
    for age, folder in enumerate(old):  # entries of other source versions, oldest first
        folder.mkdir()
        os.utime(folder, (1_000_000 + age, 1_000_000 + age))
    proc = run_child(root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "backend cpu" in proc.stdout
    assert f"cached cpu kernels in {root / built.name} were damaged" in proc.stderr
    assert f"{size // 2} bytes, {size} when built" in proc.stderr
    assert lib.stat().st_size == size and cache.damage(lib.parent, lib.stem) is None
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == sorted([built.name] + [p.name for p in old[-2:]])
    again = run_child(root)  # the repaired entry loads silently
    assert again.returncode == 0 and "damaged" not in again.stderr and "backend cpu" in again.stdout


def test_garbage_library_and_a_failed_rebuild_name_the_folder(built, tmp_path):
    root, lib = copied_cache(built, tmp_path)
    lib.write_bytes(os.urandom(lib.stat().st_size))  # same size, wrong bytes: the hash catches it
    proc = run_child(root, CXX="/bin/false")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "backend reference" in proc.stdout
    assert "does not match the hash recorded" in proc.stderr
    assert f"delete the folder {root / built.name}" in proc.stderr


def test_library_without_a_record_is_not_trusted(built, tmp_path):
    root, lib = copied_cache(built, tmp_path)
    (lib.parent / cache.RECORD_NAME).unlink()
    assert "no valid build record" in cache.damage(lib.parent, lib.stem)
    proc = run_child(root)
    assert proc.returncode == 0 and "backend cpu" in proc.stdout, proc.stderr[-2000:]
    assert cache.damage(lib.parent, lib.stem) is None


def test_cpu_run_prints_no_cuda_probe_line(built):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    code = "import torch, lmkan_surgery as L; L.LMKANLinear(16, 8)(torch.randn(4, 16))"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "No CUDA runtime" not in proc.stderr + proc.stdout


def test_onnxruntime_library_cache_is_verified_too(tmp_path, monkeypatch):
    from lmkan_surgery.onnx import CustomOpLibraryError, library

    builds = []

    def fake_compile(out_dir, headers, cuda, compiler):  # the compiler itself is not under test here
        builds.append(out_dir)
        (out_dir / library.LIBRARY_NAME).write_bytes(b"\x7fELF" + bytes(range(256)) * 64)

    monkeypatch.setattr(library, "_compile", fake_compile)
    out_dir = tmp_path / "lmkan_ort-test"
    out_dir.mkdir()
    library._verified_build(out_dir, tmp_path, False, "c++")
    library._verified_build(out_dir, tmp_path, False, "c++")  # verified: no second build
    lib = out_dir / library.LIBRARY_NAME
    assert len(builds) == 1 and cache.damage(out_dir, lib.stem) is None
    os.truncate(lib, 100)
    with pytest.warns(UserWarning, match=r"onnxruntime library in .*lmkan_ort-test was damaged.*100 bytes"):
        library._verified_build(out_dir, tmp_path, False, "c++")
    assert len(builds) == 2 and lib.stat().st_size > 100

    def failing_compile(out_dir, headers, cuda, compiler):
        raise CustomOpLibraryError("compiler crashed")

    monkeypatch.setattr(library, "_compile", failing_compile)
    lib.write_bytes(b"garbage")
    with pytest.warns(UserWarning), pytest.raises(CustomOpLibraryError, match=f"delete the folder {out_dir}"):
        library._verified_build(out_dir, tmp_path, False, "c++")


@pytest.mark.parametrize("kind", sorted(build.SPECS))
def test_build_hash_covers_every_included_file(kind: str) -> None:
    """Every file a kernel source includes (#include "...", transitively) is hashed: a change to a forgotten .inc
    once left a stale cached binary in use."""
    import re

    spec = build.SPECS[kind]
    hashed = set(spec.sources) | set(spec.depends)
    pending, seen = list(hashed), set()
    while pending:
        rel = pending.pop()
        if rel in seen:
            continue
        seen.add(rel)
        text = (build.KERNELS_DIR / rel).read_text()
        for name in re.findall(r'^\s*#\s*include\s+"([^"]+)"', text, flags=re.MULTILINE):
            folder = Path(rel).parent
            included = (folder / name).as_posix()
            if (build.KERNELS_DIR / included).exists():
                assert included in hashed, f"{rel} includes {included}, which the {kind} build hash leaves out"
                pending.append(included)


def test_build_errors_name_the_cause(monkeypatch, tmp_path):
    with pytest.raises(KernelBuildError, match="no native 'tpu' kernels"):
        build.load_native("tpu")
    monkeypatch.setenv("CXX", "no-such-compiler-xyz")
    with pytest.raises(KernelBuildError, match="no C\\+\\+ compiler"):
        build.SPECS["cpu"].preflight()
    monkeypatch.delenv("CXX")
    (tmp_path / "broken.cpp").write_text("int main( { return 0; }\n")
    monkeypatch.setattr(build, "KERNELS_DIR", tmp_path)
    monkeypatch.setitem(build.SPECS, "broken", build.ExtensionSpec(name="lmkan_broken", sources=("broken.cpp",)))
    monkeypatch.setenv(build.CACHE_ENV, str(tmp_path / "cache"))
    with pytest.raises(KernelBuildError, match="error"):
        build.load_native("broken")


def test_cache_folder_tracks_sources_flags_and_env(monkeypatch, tmp_path):
    monkeypatch.setenv(build.CACHE_ENV, str(tmp_path))
    first = build.cache_dir("cpu")
    assert first.parent == tmp_path and first.name.startswith("lmkan_cpu-")
    spec = build.SPECS["cpu"]
    changed = build.ExtensionSpec(**{**spec.__dict__, "cflags": spec.cflags + ("-DLMKAN_TEST_FLAG",)})
    monkeypatch.setitem(build.SPECS, "cpu", changed)
    assert build.cache_dir("cpu") != first
