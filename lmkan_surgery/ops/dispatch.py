"""Backend choice for the lmKAN op: the one home of kernel dispatch.

``LMKAN_BACKEND=reference|cpu|cuda`` forces a backend. Otherwise float32 work on CPU goes to the native C++
kernel (float32, float16 or bfloat16 tables) and float32 (or bfloat16-table) work on CUDA to the CUDA kernel, when
they build; anything else (float64, other devices, a failed build) goes to the pure-PyTorch reference. A failed
build warns once, naming the cause.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import KernelBuildError, LMKANError
from . import reference

BACKEND_ENV = "LMKAN_BACKEND"
_VALID_BACKENDS = ("reference", "cpu", "cuda")


@dataclass(frozen=True)
class Backend:
    """A named pair of forward/backward implementations over the canonical layout."""

    name: str
    forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    backward: Callable[..., tuple[torch.Tensor | None, torch.Tensor | None]]
    conv2d_forward: Callable[..., torch.Tensor] | None = None  # direct convolution, where there is one
    conv2d_backward: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None
    place: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None  # one-pass quantile placement
    gram: Callable[..., None] | None = None  # adds the normal matrix of bilinear design rows (table fitting)
    pointwise_forward: Callable[..., torch.Tensor | None] | None = None  # 1x1 inference, map and bias; None: n/a
    pool_bytes: Callable[[], int] | None = None  # bytes of freed large outputs kept for reuse (CPU binding)
    release_pool: Callable[[], None] | None = None  # frees them
    huge_page_copy: Callable[[torch.Tensor], torch.Tensor] | None = None  # a CPU tensor's copy on 2 MB pages


def _reference_backward(grad_out, x, table, need_x, need_table):
    grad_x, grad_table = reference.backward_reference(grad_out, x, table, need_x, need_table)
    if grad_table is not None:
        grad_table = grad_table.to(table.dtype)
    return grad_x, grad_table


REFERENCE = Backend("reference", reference.forward_reference, _reference_backward)

_native_cache: dict[str, Backend | None] = {}


def _native_backend(kind: str) -> Backend | None:
    """The native backend of `kind` ('cpu' or 'cuda'), building it on first use; None (after one warning) if that fails."""
    if kind not in _native_cache:
        from ..kernels import build

        try:
            module = build.load_native(kind)
        except KernelBuildError as err:
            warnings.warn(f"lmkan: native {kind} kernels unavailable, using the PyTorch reference: {err}", stacklevel=3)
            _native_cache[kind] = None
        else:
            _native_cache[kind] = Backend(kind, module.forward, _undefined_as_none(module.backward),
                                          getattr(module, "conv2d_forward", None),
                                          getattr(module, "conv2d_backward", None), getattr(module, "place", None),
                                          getattr(module, "bilinear_gram_add", None),
                                          getattr(module, "pointwise_forward", None),
                                          getattr(module, "output_pool_bytes", None),
                                          getattr(module, "release_output_pool", None),
                                          getattr(module, "huge_page_copy", None))
    return _native_cache[kind]


def _undefined_as_none(native_backward):
    def backward(grad_out, x, table, need_x, need_table):
        grad_x, grad_table = native_backward(grad_out, x, table, need_x, need_table)
        return (grad_x if need_x else None, grad_table if need_table else None)

    return backward


_ENVIRON_DATA = getattr(os.environ, "_data", None)  # CPython's dict behind os.environ, keys encoded


def _backend_setting() -> str | None:
    """os.environ.get(LMKAN_BACKEND) without the KeyError an unset variable raises and catches inside os.environ
    (~2 us a call, read on every forward at batch 1)."""
    if _ENVIRON_DATA is None:
        return os.environ.get(BACKEND_ENV)
    raw = _ENVIRON_DATA.get(os.environ.encodekey(BACKEND_ENV))
    return None if raw is None else os.environ.decodevalue(raw)


def forced_backend() -> str | None:
    """The backend named by LMKAN_BACKEND, or None when unset."""
    name = _backend_setting()
    if not name or not (name := name.strip().lower()):
        return None
    if name not in _VALID_BACKENDS:
        raise LMKANError(f"{BACKEND_ENV}={name!r} is not one of {', '.join(_VALID_BACKENDS)}")
    return name


def _native_supports(kind: str, x: torch.Tensor, table: torch.Tensor) -> bool:
    """Whether the native `kind` kernels (x's device type) take these dtypes."""
    if x.dtype != torch.float32:
        return False
    return table.dtype in (torch.float32, torch.bfloat16) or (kind == "cpu" and table.dtype == torch.float16)


def direct_call_allowed(x: torch.Tensor, table: torch.Tensor) -> bool:
    """Whether a forward may call its backend directly instead of going through the torch.library op (about 15 us
    a call saved at batch 1): eager (see eager_call_allowed) with no gradient to record."""
    return not (torch.is_grad_enabled() and (x.requires_grad or table.requires_grad)) and eager_call_allowed(x, table)


def eager_call_allowed(x: torch.Tensor, table: torch.Tensor) -> bool:
    """Plain CPU/CUDA tensors and nothing that must see the op node: a tracer, torch.compile/export, a Python
    dispatch or function mode (fvcore's, a FakeTensor mode)."""
    return (
        type(x) is torch.Tensor
        and type(table) in (torch.Tensor, torch.nn.Parameter)
        and (x.is_cpu or x.is_cuda)  # not x.device.type: a device object per call (~1 us at batch 1)
        and not torch.jit.is_tracing()  # not torch._C._is_tracing(): torch.compile cannot trace that call
        and not torch.compiler.is_compiling()
        and not torch.compiler.is_exporting()
        and not torch._C._is_torch_function_mode_enabled()
        and torch._C._len_torch_dispatch_stack() == 0
    )


def native_gram() -> Callable[..., None] | None:
    """The native normal-matrix accumulator of closed-form table fitting (passes/fit.py), else None (dense rows)."""
    if forced_backend() == "reference":
        return None
    native = _native_backend("cpu")
    return native.gram if native is not None else None


def native_place(x: torch.Tensor) -> Callable[..., tuple[torch.Tensor, torch.Tensor]] | None:
    """The native one-pass quantile placement for an eager float32 CPU x, else None (standard ops then)."""
    if not eager_call_allowed(x, x) or x.device.type != "cpu" or x.dtype != torch.float32 or x.numel() == 0:
        return None
    if forced_backend() == "reference":
        return None
    native = _native_backend("cpu")
    return native.place if native is not None else None


def release_cpu_output_pool() -> int:
    """Frees the freed large outputs (>= 4 MiB) that the CPU kernels keep mapped for reuse, up to
    ``LMKAN_CPU_OUTPUT_POOL_MB`` (1024 by default; 0 keeps none), and returns how many bytes that was. Call it when a
    process stops training or running lmKAN layers and needs the memory back; the next large output maps afresh."""
    native = _native_cache.get("cpu")
    if native is None or native.release_pool is None:
        return 0
    held = native.pool_bytes()
    native.release_pool()
    return held


# The binding's kPooledBytes (kernels/cpu/torch_output_pool.h): from this size on its copies sit on 2 MB pages.
HUGE_PAGE_TABLE_BYTES = 4 << 20
_HUGE_PAGE = 2 << 20


def _wants_huge_pages(table: torch.Tensor) -> bool:
    """A plain CPU table of HUGE_PAGE_TABLE_BYTES or more (no FakeTensor or other subclass, no dispatch mode: their
    storage is not memory), and the native backend not ruled out by LMKAN_BACKEND."""
    return (type(table) in (torch.Tensor, torch.nn.Parameter) and table.device.type == "cpu"
            and table.numel() * table.element_size() >= HUGE_PAGE_TABLE_BYTES
            and torch._C._len_torch_dispatch_stack() == 0 and forced_backend() != "reference")


def huge_page_table(table: torch.Tensor) -> torch.Tensor:
    """A large CPU table copied onto 2 MB-aligned MADV_HUGEPAGE pages by the CPU binding, else `table` itself (small,
    not on the CPU, a FakeTensor or other subclass, reference backend forced, no native kernels). The kernels stream
    the table: on 4 KB pages the 14x14x256 3x3 forward at batch 1 took 12.3 ms against 10.3 on 2 MB pages (Round 13,
    docs/benchmarks.md)."""
    if not _wants_huge_pages(table):
        return table
    native = _native_backend("cpu")
    return native.huge_page_copy(table) if native is not None and native.huge_page_copy else table


def _file_mapped(address: int) -> bool:
    """Whether `address` lies in a mapping of a file or of shared memory (/proc/self/maps names a path: torch.load's
    mmap=True, UntypedStorage.from_file, /dev/shm); False where /proc is missing."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                start, end = (int(bound, 16) for bound in fields[0].split("-"))
                if start <= address < end:
                    return len(fields) == 6 and fields[5].strip()[:1] == "/"
    except OSError:
        pass
    return False


def _storage_holders(table: torch.Tensor) -> int:
    """How many tensors (and storage handles) hold `table`'s storage, the handle made to ask excluded; a large
    number where this torch cannot say (nothing is then moved)."""
    use_count = getattr(torch._C, "_storage_Use_Count", None)
    return use_count(table.untyped_storage()._cdata) - 1 if use_count is not None else 1 << 30


def table_movable_to_huge_pages(table: torch.Tensor, alias: torch.Tensor | None = None,
                                unpickling: bool = False) -> bool:
    """Whether LMKANLayer may move a table that torch allocated itself (unpickled, deep-copied, converted by .to(),
    assigned) onto 2 MB pages (huge_page_table) without anyone seeing it: large and on the CPU, not at the start of a
    2 MB-aligned block already (the binding's copies, torch's THP_MEM_ALLOC_ENABLE), the table alone on its storage
    (no view into a larger one; no other tensor on it but `alias`, the state-dict tensor load_state_dict(assign=True)
    assigns; `unpickling`: one more holder, the handle pickle's and torch.load's unpickler keeps on each storage it
    rebuilt until it returns), and not shared memory or a file mapping (share_memory(), torch.load(mmap=True)),
    whose sharing is the point."""
    if not _wants_huge_pages(table) or not table.is_contiguous():
        return False
    holders = _storage_holders(table)  # before `storage` below, a handle of its own
    storage = table.untyped_storage()
    if storage.data_ptr() % _HUGE_PAGE == 0 or storage.nbytes() != table.numel() * table.element_size():
        return False
    aliased = alias is not None and alias.untyped_storage().data_ptr() == storage.data_ptr()
    if holders > 1 + aliased + unpickling or storage.is_shared():
        return False
    return not _file_mapped(storage.data_ptr())


def one_call_kernel(x: torch.Tensor) -> Callable[..., torch.Tensor | None] | None:
    """The native one-call 1x1 inference kernel (Backend.pointwise_forward, which checks its tensors itself and
    answers None where they do not suit it) for a CPU x, unless another backend is forced or none builds."""
    forced = forced_backend()
    if not x.is_cpu or (forced is not None and forced != "cpu"):
        return None
    native = _native_backend("cpu")
    return None if native is None else native.pointwise_forward


def backend_for(x: torch.Tensor, table: torch.Tensor) -> Backend:
    """The backend that runs the op for these inputs."""
    forced = forced_backend()
    if forced == "reference":
        return REFERENCE
    kind = "cpu" if x.is_cpu else x.device.type
    if forced is not None and forced != kind:
        raise LMKANError(f"{BACKEND_ENV}={forced} but the inputs are on {x.device}")
    if kind in ("cpu", "cuda") and _native_supports(kind, x, table):
        native = _native_backend(kind)
        if native is not None:
            return native
        if forced is not None:
            raise KernelBuildError(f"{BACKEND_ENV}={forced} but the native {forced} kernels could not be built")
    return REFERENCE
