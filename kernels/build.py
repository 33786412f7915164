"""Compile-on-first-use of the native kernels (filled in by the CPU kernel work)."""

from __future__ import annotations

from ..errors import KernelBuildError


def load_native(kind: str):
    """Return the compiled extension module for `kind` ('cpu' or 'cuda'), or raise KernelBuildError."""
    raise KernelBuildError(f"the native {kind} kernels are not part of this build yet")
