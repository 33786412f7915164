"""Build-on-first-use of the onnxruntime custom-op library (kernels/ort/) from the same kernel sources as the torch op.

Headers: ``$ONNXRUNTIME_INCLUDE_DIR`` (a folder holding ``onnxruntime_c_api.h``, API >= 21), else the API-21 headers
of Debian trixie's ``libonnxruntime-dev`` fetched once by ``kernels/ort/fetch_headers.sh`` (throw-away apt
configuration) into the cache. The binary is cached by a hash of its sources, flags and headers under the same
cache root and lock timeout as the torch kernels (``kernels/build.py``), behind a file lock.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import warnings
from pathlib import Path

from ..kernels import cache
from ..kernels.build import CACHE_ENV, KERNELS_DIR, LOCK_TIMEOUT_S, SPECS, native_disabled
from .errors import CustomOpLibraryError

INCLUDE_ENV = "ONNXRUNTIME_INCLUDE_DIR"
CUDA_ENV = "LMKAN_ORT_CUDA"  # 1: build the CUDA kernel in too (needs nvcc), 0: never; unset: nvcc + onnxruntime-gpu
HEADERS_DEB_VERSION = "1.21.0+dfsg-1"
MIN_API_VERSION = 21
LIBRARY_NAME = "liblmkan_ort.so"



def _kernel_core(kind: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(sources, headers) of a torch extension spec minus its torch binding: the kernels both front-ends share."""
    spec = SPECS[kind]
    return tuple(src for src in spec.sources if not src.endswith("torch_binding.cpp")), spec.depends


_CPU_CORE, _CPU_DEPENDS = _kernel_core("cpu")
_CPU_SOURCES = ("ort/lmkan_ort.cpp", *_CPU_CORE)
_CUDA_SOURCES, _CUDA_DEPENDS = _kernel_core("cuda")
_CXX_FLAGS = ("-std=c++17", "-O3", "-fPIC", "-fvisibility=hidden", "-Wno-psabi")
_NVCC_FLAGS = ("-std=c++17", "-O3", "-Xcompiler", "-fPIC,-fvisibility=hidden")
_VERSION_SCRIPT = "{ global: RegisterCustomOps; local: *; };\n"

_built: dict[bool, Path] = {}


def cache_root() -> Path:
    """Where the library and fetched headers live: $LMKAN_CACHE_DIR/ort or ~/.cache/lmkan_surgery/ort."""
    root = os.environ.get(CACHE_ENV)
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "lmkan_surgery") / "ort"


def api_version(include_dir: Path) -> int:
    """ORT_API_VERSION declared by the onnxruntime_c_api.h in include_dir."""
    match = re.search(r"#define\s+ORT_API_VERSION\s+(\d+)", (include_dir / "onnxruntime_c_api.h").read_text())
    if match is None:
        raise CustomOpLibraryError(f"{include_dir}/onnxruntime_c_api.h declares no ORT_API_VERSION")
    return int(match.group(1))


def _check_include_dir(path: Path, origin: str) -> Path:
    if not (path / "onnxruntime_c_api.h").is_file() or not (path / "onnxruntime_cxx_api.h").is_file():
        raise CustomOpLibraryError(
            f"{origin} {path} holds no onnxruntime_c_api.h / onnxruntime_cxx_api.h: point {INCLUDE_ENV} at the "
            "folder of onnxruntime's C/C++ API headers (e.g. .../include/onnxruntime)"
        )
    if api_version(path) < MIN_API_VERSION:
        raise CustomOpLibraryError(
            f"{origin} {path} has ORT API {api_version(path)} headers; the lmkan library needs API >= "
            f"{MIN_API_VERSION} (onnxruntime >= 1.21): point {INCLUDE_ENV} at newer headers"
        )
    return path


def include_dir() -> Path:
    """onnxruntime's header folder: $ONNXRUNTIME_INCLUDE_DIR, else Debian's libonnxruntime-dev fetched to the cache."""
    env = os.environ.get(INCLUDE_ENV)
    if env:
        return _check_include_dir(Path(env).expanduser(), INCLUDE_ENV)
    dest = cache_root() / f"headers-{HEADERS_DEB_VERSION}"
    cached = dest / "include" / "onnxruntime"
    if (cached / "onnxruntime_c_api.h").is_file():
        return cached
    script = KERNELS_DIR / "ort" / "fetch_headers.sh"
    import filelock

    dest.parent.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(str(dest) + ".lock", timeout=LOCK_TIMEOUT_S):
        proc = subprocess.run(["bash", str(script), str(dest)], capture_output=True, text=True, check=False,
                              env={**os.environ, "LMKAN_ORT_DEB_VERSION": HEADERS_DEB_VERSION})
    if proc.returncode != 0:
        raise CustomOpLibraryError(
            f"onnxruntime's C API headers are not available: {INCLUDE_ENV} is unset and fetching Debian's "
            f"libonnxruntime-dev {HEADERS_DEB_VERSION} failed ({proc.stderr.strip()[-400:]}). Fix: set {INCLUDE_ENV} "
            "to a folder with onnxruntime_c_api.h (API >= 21), e.g. from an onnxruntime release archive"
        )
    return _check_include_dir(Path(proc.stdout.strip().splitlines()[-1]), "the fetched header folder")


def cuda_requested() -> bool:
    """Whether to build the CUDA kernel in ($LMKAN_ORT_CUDA; default: nvcc on PATH and onnxruntime has CUDA)."""
    flag = os.environ.get(CUDA_ENV, "").strip().lower()
    if flag in ("1", "true", "yes", "on"):
        return True
    if flag in ("0", "false", "no", "off"):
        return False
    if shutil.which("nvcc") is None or not all((KERNELS_DIR / src).is_file() for src in _CUDA_SOURCES):
        return False
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def _digest(headers: Path, cuda: bool, compiler: str) -> str:
    digest = hashlib.sha256(repr((_CXX_FLAGS, _NVCC_FLAGS, cuda, compiler, _VERSION_SCRIPT)).encode())
    files = _CPU_SOURCES + _CPU_DEPENDS + ((_CUDA_SOURCES + _CUDA_DEPENDS) if cuda else ())
    for rel in files:
        digest.update(rel.encode() + (KERNELS_DIR / rel).read_bytes())
    for header in sorted(headers.glob("*.h")):
        digest.update(header.read_bytes())
    return digest.hexdigest()[:16]


def _run(cmd: list[str], cwd: Path) -> None:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if re.search(r"\berror\b|fatal", ln, re.IGNORECASE)] or lines
        raise CustomOpLibraryError(f"building the lmkan onnxruntime library failed ({cmd[0]}):\n" +
                                   "\n".join(errors[-15:]))


def _compile(out_dir: Path, headers: Path, cuda: bool, compiler: str) -> Path:
    """Compile and link the library into out_dir (called under the lock); nvcc drives a CUDA build."""
    includes = [f"-I{headers}", f"-I{KERNELS_DIR / 'cpu'}", f"-I{KERNELS_DIR / 'cuda'}"]
    script = out_dir / "exports.map"
    script.write_text(_VERSION_SCRIPT)
    sources = [str(KERNELS_DIR / src) for src in _CPU_SOURCES]
    target, tmp = out_dir / LIBRARY_NAME, out_dir / f".{LIBRARY_NAME}.{os.getpid()}"
    if cuda:
        nvcc = shutil.which("nvcc")
        if nvcc is None:
            raise CustomOpLibraryError(f"{CUDA_ENV}=1 but nvcc is not on PATH: install the CUDA toolkit or unset it")
        objects = []
        for src in _CUDA_SOURCES:
            obj = out_dir / (Path(src).stem + ".o")
            _run([nvcc, *_NVCC_FLAGS, *includes, "-c", str(KERNELS_DIR / src), "-o", str(obj)], out_dir)
            objects.append(str(obj))
        host = ",".join(flag for flag in _CXX_FLAGS if flag not in ("-std=c++17", "-O3"))
        _run([nvcc, "-std=c++17", "-O3", f"-Xcompiler={host}", "-DLMKAN_ORT_WITH_CUDA", *includes, "-shared",
              *sources, *objects, "-cudart", "static", f"-Xlinker=--version-script={script}", "-o", str(tmp)],
             out_dir)
    else:
        _run([compiler, *_CXX_FLAGS, *includes, "-shared", *sources, f"-Wl,--version-script={script}", "-o",
              str(tmp)], out_dir)
    tmp.replace(target)
    return target


def build_library(cuda: bool | None = None) -> Path:
    """Path of the compiled custom-op library, building it on first use; raises CustomOpLibraryError on failure."""
    if native_disabled():
        raise CustomOpLibraryError("native kernels disabled by LMKAN_DISABLE_NATIVE=1 (unset it to build the library)")
    cuda = cuda_requested() if cuda is None else cuda
    if cuda in _built and _built[cuda].is_file():
        return _built[cuda]
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise CustomOpLibraryError(f"no C++ compiler found (looked for {compiler!r}; set CXX or install g++)")
    headers = include_dir()
    out_dir = cache_root() / f"lmkan_ort{'_cuda' if cuda else ''}-{_digest(headers, cuda, compiler)}"
    target = out_dir / LIBRARY_NAME
    import filelock

    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        with filelock.FileLock(str(out_dir) + ".lock", timeout=LOCK_TIMEOUT_S):
            _verified_build(out_dir, headers, cuda, compiler)
    except filelock.Timeout as err:
        raise CustomOpLibraryError(f"timed out waiting for the build lock of {out_dir}") from err
    _built[cuda] = target
    return target


def _verified_build(out_dir: Path, headers: Path, cuda: bool, compiler: str) -> None:
    """Build the library unless a copy matching its build record (size + hash) is there; a damaged one (which
    onnxruntime's dlopen could die on with SIGBUS) is rebuilt, and a failed rebuild names the folder."""
    stem = Path(LIBRARY_NAME).stem
    damaged = cache.damage(out_dir, stem)
    if damaged is not None:
        warnings.warn(f"lmkan: the cached onnxruntime library in {out_dir} was damaged ({damaged}); rebuilding it",
                      stacklevel=3)
        cache.discard_library(out_dir, stem)
    if (out_dir / LIBRARY_NAME).is_file():
        return
    try:
        _compile(out_dir, headers, cuda, compiler)
    except CustomOpLibraryError as err:
        if damaged is None:
            raise
        raise CustomOpLibraryError(f"rebuilding the damaged library in {out_dir} failed: {err}; delete the folder "
                                   f"{out_dir} and retry") from err
    cache.write_record(out_dir, stem)
