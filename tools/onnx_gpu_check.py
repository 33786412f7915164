"""Device check of the onnxruntime CUDA custom op: build the library with CUDA, run an exported lmKAN MLP in
onnxruntime-gpu with the CUDA provider only (CPU fallback disabled, so the lmkan node must run the CUDA kernel on
onnxruntime's stream), compare with PyTorch and time it. Exit 0 pass, 1 fail, 2 prerequisites missing.

    ONNXRUNTIME_INCLUDE_DIR=<headers> .venv/bin/python tools/onnx_gpu_check.py

The device machine has no network: give it onnxruntime's headers (ONNXRUNTIME_INCLUDE_DIR, e.g. a copy of
~/.cache/lmkan_surgery/ort/headers-*/include/onnxruntime carried along) and an environment with onnxruntime-gpu.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn


def main() -> int:
    """Run the check; returns the exit code."""
    import onnxruntime as ort

    from lmkan_surgery import LMKANLinear
    from lmkan_surgery.onnx import build_library, export_onnx, session

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        print(f"SKIP: onnxruntime {ort.__version__} has no CUDAExecutionProvider (install onnxruntime-gpu)")
        return 2
    library = build_library(cuda=True)
    print(f"library: {library}")
    torch.manual_seed(0)
    model = nn.Sequential(LMKANLinear(512, 512, 8, init_scale=1.0), nn.ReLU(),
                          LMKANLinear(512, 512, 8, init_scale=1.0)).eval()
    x = torch.randn(4096, 512)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mlp.onnx"
        export_onnx(model, path, (x[:8],), validate=False, function_body=False)  # no body to fall back on
        options = ort.SessionOptions()
        options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
        sess = session(path, providers=["CUDAExecutionProvider"], library_path=library, sess_options=options)
        name = sess.get_inputs()[0].name
        for batch in (1, 5, 4096):
            (got,) = sess.run(None, {name: x[:batch].numpy()})
            with torch.no_grad():
                want = model(x[:batch]).numpy()
            rel = float(abs(got - want).max() / abs(want).max())
            print(f"batch {batch}: max rel difference vs torch CPU {rel:.3g}")
            if rel > 1e-4:
                print("FAIL: over 1e-4")
                return 1
        times = []
        for _ in range(20):
            start = time.perf_counter()
            sess.run(None, {name: x.numpy()})
            times.append((time.perf_counter() - start) * 1e3)
        print(f"ORT CUDA, batch 4096 MLP 512-512-512 G=8: median {statistics.median(times):.2f} ms "
              "(includes host<->device copies of x and y)")
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
