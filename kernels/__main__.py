"""``python -m lmkan_surgery.kernels build [--kind cpu|cuda|all]``: prebuild the native kernels into the cache."""

from __future__ import annotations

import argparse
import sys
import time

from ..errors import KernelBuildError
from . import build


def main(argv: list[str] | None = None) -> int:
    """Build the requested kinds, print where each lives and which code path is active; 1 if any build failed."""
    parser = argparse.ArgumentParser(prog="python -m lmkan_surgery.kernels", description=__doc__)
    parser.add_argument("command", choices=("build",))
    parser.add_argument("--kind", default="cpu", help="'cpu', 'cuda' or 'all' (every registered kind)")
    args = parser.parse_args(argv)
    kinds = sorted(build.SPECS) if args.kind == "all" else [args.kind]
    status = 0
    for kind in kinds:
        start = time.perf_counter()
        try:
            module = build.load_native(kind)
        except KernelBuildError as err:
            print(f"{kind}: FAILED: {err}", file=sys.stderr)
            status = 1
            continue
        isa = module.isa() if hasattr(module, "isa") else "-"
        print(f"{kind}: ok in {time.perf_counter() - start:.1f}s, cache {build.cache_dir(kind)}, active path {isa}")
    return status


if __name__ == "__main__":
    sys.exit(main())
