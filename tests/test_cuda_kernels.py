"""CUDA kernels (kernels/cuda).

Without a GPU: the CUDA core compiles for sm_90 with this machine's nvcc (no register spills) and its host header is
plain C++ (skipped when no CUDA toolkit is found); the host API and its kernels run on the CPU through a
thread-per-lane emulation (kernels/cuda/emulate_on_host.cpp) against the reference, on emulated GPUs that force the
planner's other tilings. With a GPU: the torch extension matches a float64 reference (float32 tables to 1e-5
relative, bfloat16 tables to 1e-5 against their own values and 1e-2 against the float32 table), gradients included,
over ragged shapes, a G sweep (shared-memory and global-memory paths) and inputs far outside the grid; outputs are
poisoned with NaN beforehand so an element a kernel forgets to write fails.
"""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess

import numpy
import pytest
import torch
from torch import nn

from lmkan_surgery import LMKANLinear
from lmkan_surgery.kernels import build
from lmkan_surgery.ops import lmkan_lookup
from lmkan_surgery.ops.dispatch import BACKEND_ENV
from lmkan_surgery.ops.reference import backward_reference, forward_reference
from oracles import rel_err

CUDA_DIR = build.KERNELS_DIR / "cuda"
GPU = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not GPU, reason="needs a CUDA device")


TOOLKIT = build._cuda_home()
needs_nvcc = pytest.mark.skipif(TOOLKIT is None, reason="no CUDA toolkit (nvcc) found")


@needs_nvcc
def test_core_compiles_for_sm90_without_spills(tmp_path):
    nvcc = str(TOOLKIT / "bin" / "nvcc")
    cmd = [nvcc, "-c", "-O3", "-gencode=arch=compute_90,code=sm_90", "-Xptxas", "-v", "-Werror", "all-warnings",
           str(CUDA_DIR / "lmkan_cuda.cu"), "-o", str(tmp_path / "lmkan_cuda.o")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    spills = re.findall(r"(\d+) bytes spill stores", done.stderr)
    assert spills and all(n == "0" for n in spills), done.stderr[-4000:]


@needs_nvcc
def test_host_header_is_plain_cxx(tmp_path):
    cxx = shutil.which("c++") or shutil.which("g++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    src = tmp_path / "use_header.cpp"
    src.write_text('#include "lmkan_cuda.cuh"\nint main() { LmkanCudaInfo info; return info.out_tile; }\n')
    cmd = [cxx, "-std=c++17", "-fsyntax-only", f"-I{CUDA_DIR}", f"-I{TOOLKIT / 'include'}", str(src)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-4000:]


# ------------------------------------------------------------------ the kernels run on the CPU (no GPU needed)
# kernels/cuda/emulate_on_host.cpp compiles lmkan_cuda.cu as C++ with one thread per CUDA thread and calls its public
# API on an emulated GPU whose multiprocessor count and shared memory per block steer the planner into the tilings
# other GPUs would get: several pair chunks, batch splits, the global-memory path.

H100_SMEM = 232448
EMULATED = [  # kind, B, P, G, N_out, SMs, shared memory per block, input scale, expected (pair chunk, splits, shared)
    ("fwd", 70, 5, 4, 40, 4, 8000, 1.5, (2, 1, 1)),
    ("fwd", 1000, 2, 3, 33, 8, H100_SMEM, 1.5, (2, 4, 1)),
    ("fwd", 70, 3, 6, 7, 4, 4000, 1.5, (3, 1, 0)),
    ("fwd", 70, 3, 8, 36, 4, H100_SMEM, 1e3, (3, 1, 1)),
    ("fwd", 5, 2, 41, 1, 4, H100_SMEM, 1.5, (1, 1, 1)),
    ("fwd", 5, 2, 42, 3, 4, H100_SMEM, 1.5, (2, 1, 0)),
    ("fwd", 4, 0, 3, 5, 4, H100_SMEM, 1.5, (0, 0, 1)),
    ("fwd_bf16", 70, 5, 4, 70, 4, 8000, 1.5, (2, 1, 1)),
    ("fwd_bf16", 70, 5, 4, 128, 4, H100_SMEM, 30.0, (5, 1, 1)),
    ("fwd_bf16", 70, 5, 4, 64, 4, 3000, 1.5, (5, 2, 0)),
    ("backward", 70, 5, 4, 40, 4, 8000, 1.5, (2, 1, 1)),
    ("backward", 1000, 2, 3, 20, 8, H100_SMEM, 1.5, (2, 4, 1)),
    ("backward", 70, 5, 4, 33, 4, 3000, 1.5, (5, 2, 0)),
    ("backward", 70, 3, 8, 7, 4, H100_SMEM, 1e3, (3, 1, 1)),
    ("backward", 0, 2, 3, 5, 4, H100_SMEM, 1.5, None),
    ("grad_x", 70, 5, 4, 40, 4, 8000, 1.5, (2, 1, 1)),
    ("grad_table", 70, 5, 4, 40, 4, 8000, 1.5, (2, 1, 1)),
]


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    exe = tmp_path_factory.mktemp("emulator") / "emulate_on_host"
    cmd = [cxx, "-std=c++20", "-O1", "-pthread", "-o", str(exe), str(CUDA_DIR / "emulate_on_host.cpp")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if done.returncode != 0 and "barrier" in done.stderr:
        pytest.skip("the C++ compiler has no C++20 <barrier>")
    assert done.returncode == 0, done.stderr[-4000:]
    return exe


def _read(path, like):
    return torch.from_numpy(numpy.fromfile(path, dtype=numpy.float32)).view(like.shape)


@pytest.mark.parametrize("kind,batch,pairs,grids,outputs,sms,smem,scale,tiling", EMULATED)
def test_api_emulated_on_cpu(emulator, tmp_path, kind, batch, pairs, grids, outputs, sms, smem, scale, tiling):
    x = torch.randn(batch, 2 * pairs) * scale
    table = torch.randn(pairs, grids + 1, grids + 1, outputs)
    gy = torch.randn(batch, outputs)
    if kind == "fwd_bf16":
        table = table.to(torch.bfloat16)
        table.view(torch.int16).numpy().tofile(tmp_path / "table.bin")
    else:
        table.numpy().tofile(tmp_path / "table.bin")
    x.numpy().tofile(tmp_path / "x.bin")
    gy.numpy().tofile(tmp_path / "gy.bin")
    args = [kind, batch, pairs, grids, outputs, sms, smem, tmp_path]
    done = subprocess.run([str(emulator), *map(str, args)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    if tiling is not None:  # the launch that was asked for: grad_table's is the second line of a backward
        line = done.stdout.splitlines()[1 if kind == "grad_table" else 0]
        assert tuple(int(v) for v in line.split()) == tiling
    if kind.startswith("fwd"):
        expected = forward_reference(x.double(), table.double())
        results = [(_read(tmp_path / "y.bin", expected), expected)]
    else:
        grad_x, grad_table = backward_reference(gy.double(), x.double(), table.double())
        results = [(_read(tmp_path / "gx.bin", x), grad_x)] if kind != "grad_table" else []
        results += [(_read(tmp_path / "gt.bin", table), grad_table)] if kind != "grad_x" else []
    for actual, expected in results:
        assert not actual.isnan().any()
        if expected.numel() == 0 or expected.abs().max() == 0:
            assert (actual == 0).all()
        else:
            assert rel_err(actual, expected) < 1e-5


# ------------------------------------------------------------------------------------------------ GPU tests


@pytest.fixture(scope="module")
def native():
    return build.load_native("cuda")


def _poison(*numels: int) -> None:
    """Leave NaN-filled blocks of these sizes in the caching allocator, where the next outputs are carved from."""
    blocks = [torch.full((n,), float("nan"), device="cuda") for n in numels if n > 0]
    torch.cuda.synchronize()
    del blocks


def _inputs(batch, pairs, outputs, grids, scale=1.5, dtype=torch.float32):
    x = torch.randn(batch, 2 * pairs, device="cuda") * scale
    table = torch.randn(pairs, grids + 1, grids + 1, outputs, device="cuda").to(dtype)
    return x, table


def _check_forward(native, x, table, tol=1e-5):
    _poison(x.shape[0] * table.shape[3])
    y = native.forward(x, table)
    expected = forward_reference(x.double(), table.double())
    assert y.shape == expected.shape and y.dtype == torch.float32
    assert not y.isnan().any()
    assert rel_err(y, expected) < tol


def _check_backward(native, x, table, need_x=True, need_table=True, tol=1e-5, tol_table=1e-5):
    gy = torch.randn(x.shape[0], table.shape[3], device="cuda")
    _poison(x.numel(), table.numel())
    grad_x, grad_table = native.backward(gy, x, table, need_x, need_table)
    ex_x, ex_table = backward_reference(gy.double(), x.double(), table.double(), need_x, need_table)
    if need_x:
        assert grad_x.shape == x.shape and not grad_x.isnan().any()
        assert rel_err(grad_x, ex_x) < tol
    else:
        assert grad_x.numel() == 0
    if need_table:
        assert grad_table.shape == table.shape and grad_table.dtype == table.dtype
        assert not grad_table.isnan().any()
        assert rel_err(grad_table, ex_table) < tol_table
    else:
        assert grad_table.numel() == 0


RAGGED = list(itertools.product((1, 5, 1000), (1, 3, 17), (1, 7, 33)))


@needs_gpu
@pytest.mark.parametrize("batch,pairs,outputs", RAGGED)
def test_forward_ragged_shapes(native, batch, pairs, outputs):
    x, table = _inputs(batch, pairs, outputs, 8)
    _check_forward(native, x, table)


@needs_gpu
@pytest.mark.parametrize("batch,pairs,outputs", RAGGED)
def test_backward_ragged_shapes(native, batch, pairs, outputs):
    x, table = _inputs(batch, pairs, outputs, 8)
    _check_backward(native, x, table)


@needs_gpu
@pytest.mark.parametrize("grids", [3, 8, 20, 28, 40, 41, 42, 64])
def test_grid_sweep(native, grids):
    """Shared-memory slices up to G = 41 on Hopper; beyond, the global-memory path (warned once)."""
    x, table = _inputs(300, 10, 40, grids)
    _check_forward(native, x, table)
    _check_backward(native, x, table)


@needs_gpu
@pytest.mark.parametrize("outputs", [64, 70])
def test_bf16_table_forward(native, outputs):
    x, table = _inputs(777, 9, outputs, 20)
    table16 = table.to(torch.bfloat16)
    _check_forward(native, x, table16)  # against the bf16 values themselves, upcast
    assert rel_err(native.forward(x, table16), forward_reference(x, table)) < 1e-2


@needs_gpu
def test_bf16_table_backward_upcasts(native):
    x, table = _inputs(200, 4, 24, 12, dtype=torch.bfloat16)
    _check_backward(native, x, table, tol_table=1e-2)  # grad_table comes back rounded to bfloat16


@needs_gpu
@pytest.mark.parametrize("need_x,need_table", [(True, False), (False, True)])
def test_backward_single_gradient(native, need_x, need_table):
    x, table = _inputs(100, 5, 36, 6)
    _check_backward(native, x, table, need_x, need_table)


@needs_gpu
@pytest.mark.parametrize("scale", [30.0, 1e3])
def test_extrapolated_inputs(native, scale):
    x, table = _inputs(500, 6, 20, 8, scale=scale)
    _check_forward(native, x, table)
    _check_backward(native, x, table)


@needs_gpu
@pytest.mark.parametrize("grids", [3, 20])
def test_exact_init_matches_linear_far_outside(monkeypatch, grids):
    """Through the op and the dispatcher: an exact-init layer reproduces nn.Linear to 1e-5 for |x| up to 1e3."""
    monkeypatch.setenv(BACKEND_ENV, "cuda")  # the native kernels or an error, never a silent fallback
    torch.backends.cuda.matmul.allow_tf32 = False
    linear = nn.Linear(64, 33).cuda()
    layer = LMKANLinear.from_linear(linear, grids).cuda()
    for scale in (1.0, 30.0, 1e3):
        x = torch.randn(4096, 64, device="cuda") * scale
        assert rel_err(layer(x), linear(x)) < 1e-5, scale


@needs_gpu
def test_large_batch_splits_and_empty_inputs(native):
    x, table = _inputs(70000, 2, 5, 4)  # few tiles: the batch is split over many blocks
    _check_forward(native, x, table)
    _check_backward(native, x, table)
    empty_x = torch.empty(0, 4, device="cuda")
    assert native.forward(empty_x, table).shape == (0, 5)
    grad_x, grad_table = native.backward(torch.empty(0, 5, device="cuda"), empty_x, table, True, True)
    assert grad_x.shape == (0, 4) and torch.equal(grad_table, torch.zeros_like(table))


@needs_gpu
def test_autograd_through_the_op(monkeypatch):
    monkeypatch.setenv(BACKEND_ENV, "cuda")
    x, table = _inputs(64, 3, 10, 5)
    x.requires_grad_(True)
    table.requires_grad_(True)
    lmkan_lookup(x, table).square().sum().backward()
    x64 = x.detach().double().requires_grad_(True)
    t64 = table.detach().double().requires_grad_(True)
    forward_reference(x64, t64).square().sum().backward()
    assert rel_err(x.grad, x64.grad) < 1e-5 and rel_err(table.grad, t64.grad) < 1e-5
