"""Compile-on-first-use of the native kernels: a registry of extension specs keyed by kind ('cpu', 'cuda').

Each kind is built once per (torch version, hash of its sources and flags) into
``$LMKAN_CACHE_DIR`` or ``~/.cache/lmkan_surgery/<torch version>/<name>-<hash>``, under a file lock so parallel
processes (pytest-xdist, torchrun) do not collide; editing a source changes the hash and triggers a rebuild.
Every entry is verified before it is loaded (size + hash recorded at build time, see cache.py): a damaged one is
rebuilt, and only the few most recently used entries per kind are kept.
``LMKAN_DISABLE_NATIVE=1`` makes every load fail, which exercises the reference fallback. No ``-march=native``:
the CPU library carries generic, AVX2 and AVX-512 paths and picks one at run time, so a cached binary can move
machines.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Callable

from ..errors import KernelBuildError
from . import cache

KERNELS_DIR = Path(__file__).resolve().parent
HEADER_SUFFIXES = (".h", ".inc", ".cuh")  # files the sources include
CACHE_ENV = "LMKAN_CACHE_DIR"
DISABLE_ENV = "LMKAN_DISABLE_NATIVE"
LOCK_TIMEOUT_S = 1800
_BUILD_ERRORS = (RuntimeError, OSError, ImportError, SystemExit, subprocess.SubprocessError)  # what a build raises


@dataclass(frozen=True)
class ExtensionSpec:
    """How to build one native extension: sources (relative to kernels/), flags and a preflight check."""

    name: str
    sources: tuple[str, ...]
    cflags: tuple[str, ...] = ()
    ldflags: tuple[str, ...] = ()
    cuda_cflags: tuple[str, ...] = ()
    include_dirs: tuple[str, ...] = ()
    preflight: Callable[[], None] | None = field(default=None, compare=False)  # raises KernelBuildError

    @property
    def depends(self) -> tuple[str, ...]:
        """Every header and included file in the include dirs (hashed, not compiled on their own): read from disk so
        that a new .inc file can never be missing from the build hash (a stale cached binary)."""
        return tuple(sorted(f"{folder}/{path.name}" for folder in self.include_dirs
                            for path in (KERNELS_DIR / folder).iterdir() if path.suffix in HEADER_SUFFIXES))


def _require_cxx() -> None:
    """Raise KernelBuildError when no C++ compiler can be found."""
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise KernelBuildError(f"no C++ compiler found (looked for {compiler!r}; set CXX or install g++)")


def _cuda_home() -> Path | None:
    """The CUDA toolkit to build with: $CUDA_HOME, torch's guess or /usr/local/cuda, whichever has the headers."""
    from torch.utils import cpp_extension

    for root in (os.environ.get("CUDA_HOME"), cpp_extension.CUDA_HOME, "/usr/local/cuda"):
        home = Path(root) if root else None
        if home and (home / "bin" / "nvcc").exists() and (home / "include" / "cuda_runtime_api.h").exists():
            return home
    return None


def _require_nvcc() -> None:
    """Raise KernelBuildError unless torch has CUDA and an nvcc of the same CUDA major.minor exists; point torch's
    extension builder at that toolkit (a wrapper nvcc on PATH otherwise makes it guess a folder without headers)."""
    import torch
    from torch.utils import cpp_extension

    if torch.version.cuda is None:
        raise KernelBuildError(f"torch {torch.__version__} is a CPU-only build: no CUDA kernels")
    home = _cuda_home()
    if home is None:
        raise KernelBuildError("no CUDA toolkit (nvcc and headers) found: install one or set CUDA_HOME")
    nvcc = home / "bin" / "nvcc"
    try:
        out = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as err:
        raise KernelBuildError(f"{nvcc} --version failed: {err}") from err
    found = re.search(r"release (\d+\.\d+)", out)
    wanted = ".".join(torch.version.cuda.split(".")[:2])
    if found is None or found.group(1) != wanted:
        raise KernelBuildError(
            f"nvcc in {home} is CUDA {found.group(1) if found else '?'} but torch {torch.__version__} was built with "
            f"CUDA {wanted}: install the matching toolkit or set CUDA_HOME"
        )
    cpp_extension.CUDA_HOME = str(home)
    os.environ["CUDA_HOME"] = str(home)


def _cuda_arch_flags() -> tuple[str, ...]:
    """-gencode flags for $TORCH_CUDA_ARCH_LIST (e.g. "9.0;12.0+PTX"); by default machine code for Ampere, Ada and
    Hopper (sm_80, 86, 89, 90) plus compute_90 PTX that the driver compiles for newer GPUs."""
    wanted = os.environ.get("TORCH_CUDA_ARCH_LIST", "").replace(" ", ";").split(";")
    archs = [a for a in wanted if re.fullmatch(r"\d+\.\d+a?(\+PTX)?", a)] or ["8.0", "8.6", "8.9", "9.0+PTX"]
    flags = []
    for arch in archs:
        num = arch.split("+")[0].replace(".", "")
        flags.append(f"-gencode=arch=compute_{num},code=sm_{num}")
        if arch.endswith("+PTX"):
            flags.append(f"-gencode=arch=compute_{num},code=compute_{num}")
    return tuple(flags)


# The registry: one spec per kind; a new kind (another device, another library) is one more entry here and
# nothing else. Sources ending in .cu make the build a CUDA build (nvcc, CUDA_HOME); everything else is shared.
SPECS: dict[str, ExtensionSpec] = {
    "cpu": ExtensionSpec(
        name="lmkan_cpu",
        sources=("cpu/torch_binding.cpp", "cpu/lmkan_cpu.cpp"),
        cflags=("-O3", "-fopenmp"),
        ldflags=("-fopenmp",),
        include_dirs=("cpu",),
        preflight=_require_cxx,
    ),
    # No --use_fast_math: the kernels need the accurate expf and IEEE division of the reference grid maths.
    "cuda": ExtensionSpec(
        name="lmkan_cuda",
        sources=("cuda/torch_binding.cpp", "cuda/lmkan_cuda.cu"),
        cflags=("-O3",),
        cuda_cflags=("-O3", *_cuda_arch_flags()),
        include_dirs=("cuda",),
        preflight=_require_nvcc,
    ),
}

_loaded: dict[str, ModuleType] = {}


def native_disabled() -> bool:
    """True when LMKAN_DISABLE_NATIVE asks for the pure-PyTorch path only."""
    return os.environ.get(DISABLE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _spec(kind: str) -> ExtensionSpec:
    if kind not in SPECS:
        raise KernelBuildError(f"no native {kind!r} kernels in this build (known kinds: {', '.join(sorted(SPECS))})")
    return SPECS[kind]


def _is_cuda(spec: ExtensionSpec) -> bool:
    return any(src.endswith(".cu") for src in spec.sources)


def source_hash(kind: str) -> str:
    """Hash of everything that determines the binary of `kind`: sources, flags, torch/python versions, arch."""
    import torch

    spec = _spec(kind)
    digest = hashlib.sha256()
    meta = (spec.name, spec.cflags, spec.ldflags, spec.cuda_cflags, torch.__version__, sys.version, platform.machine())
    digest.update(repr(meta).encode())
    for rel in spec.sources + spec.depends:
        digest.update(rel.encode())
        digest.update((KERNELS_DIR / rel).read_bytes())
    return digest.hexdigest()[:16]


def cache_dir(kind: str) -> Path:
    """The build folder of `kind` for the current sources and torch version."""
    import torch

    root = os.environ.get(CACHE_ENV)
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "lmkan_surgery" / torch.__version__
    return base / f"{_spec(kind).name}-{source_hash(kind)}"


def _error_excerpt(message: str, max_lines: int = 15) -> str:
    """The compiler's error lines (or the tail of the log) from a failed build message."""
    lines = [line for line in message.splitlines() if line.strip()]
    errors = [line for line in lines if re.search(r"\berror\b|fatal", line, re.IGNORECASE)]
    return "\n".join((errors or lines)[-max_lines:])


def _ensure_ninja_on_path() -> None:
    """Make the ninja of this interpreter's environment visible when the venv is not activated."""
    venv_bin = Path(sys.executable).parent
    if shutil.which("ninja") is None and (venv_bin / "ninja").exists():
        os.environ["PATH"] = f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"


def _import_cpp_extension(cuda: bool) -> ModuleType:
    """torch.utils.cpp_extension; for a CPU build its import-time CUDA probe ("No CUDA runtime is found") is muted:
    CUDA is looked for only when a CUDA build is asked for."""
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    if not cuda:
        logger.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        logger.setLevel(level)
    return cpp_extension


def _compile(spec: ExtensionSpec, build_dir: Path, module_name: str) -> ModuleType:
    """Run torch's extension builder (ninja decides what is out of date) and import the library."""
    cpp_extension = _import_cpp_extension(_is_cuda(spec))
    return cpp_extension.load(
        name=module_name,
        sources=[str(KERNELS_DIR / src) for src in spec.sources],
        extra_cflags=list(spec.cflags),
        extra_ldflags=list(spec.ldflags),
        extra_cuda_cflags=list(spec.cuda_cflags),
        extra_include_paths=[str(KERNELS_DIR / inc) for inc in spec.include_dirs],
        build_directory=str(build_dir),
        with_cuda=_is_cuda(spec),
        verbose=False,
    )


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    return info.st_size, info.st_mtime_ns


def _load_verified(kind: str, spec: ExtensionSpec, build_dir: Path) -> ModuleType:
    """Load the cache entry, first rebuilding it when its library does not match its build record (a relink,
    then a build from scratch); record the library of every build. Caller holds the entry's lock."""
    module_name = f"{spec.name}_{build_dir.name.rsplit('-', 1)[1]}"
    damaged = cache.damage(build_dir, module_name)
    if damaged is not None:
        warnings.warn(f"lmkan: the cached {kind} kernels in {build_dir} were damaged ({damaged}); rebuilding them",
                      stacklevel=4)
        cache.discard_library(build_dir, module_name)
    library = cache.library_path(build_dir, module_name)
    before = _stat(library)
    try:
        module = _compile(spec, build_dir, module_name)
    except _BUILD_ERRORS as err:
        if damaged is None:
            raise
        cache.wipe(build_dir)  # the objects may be damaged too
        try:
            module = _compile(spec, build_dir, module_name)
        except _BUILD_ERRORS as again:
            raise KernelBuildError(
                f"rebuilding the damaged {kind} kernel cache in {build_dir} failed ({_error_excerpt(str(again))}); "
                f"delete the folder {build_dir} and retry (first error: {str(err).splitlines()[0]})") from again
    if _stat(library) != before:  # built or relinked by this call
        cache.write_record(build_dir, module_name)
    os.utime(build_dir)  # most recently used: kept by prune()
    return module


def load_native(kind: str) -> ModuleType:
    """Return the compiled extension module for `kind` ('cpu' or 'cuda'), building it if needed, or raise
    KernelBuildError."""
    if native_disabled():
        raise KernelBuildError(f"native kernels disabled by {DISABLE_ENV}=1")
    if kind in _loaded:
        return _loaded[kind]
    spec = _spec(kind)
    if spec.preflight is not None:
        spec.preflight()
    try:
        import filelock
    except ImportError as err:  # pragma: no cover - a hard dependency
        raise KernelBuildError(f"cannot build native kernels: {err}") from err
    _ensure_ninja_on_path()
    build_dir = cache_dir(kind)
    build_dir.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(build_dir) + ".lock", timeout=LOCK_TIMEOUT_S)
    try:
        with lock:
            module = _load_verified(kind, spec, build_dir)
    except filelock.Timeout as err:
        raise KernelBuildError(f"timed out after {LOCK_TIMEOUT_S}s waiting for the build lock {lock.lock_file}") from err
    except KernelBuildError:
        raise
    except _BUILD_ERRORS as err:
        raise KernelBuildError(f"building the {kind} kernels in {build_dir} failed (if it keeps failing, delete that "
                               f"folder and retry):\n{_error_excerpt(str(err))}") from err
    cache.prune(build_dir)
    _loaded[kind] = module
    return module
