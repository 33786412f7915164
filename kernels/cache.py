"""Verification of the kernel build cache: each entry records its library's size and SHA-256 at build time
(written atomically), is checked before every load (a truncated library would otherwise die with SIGBUS in
dlopen, a garbage one fail forever) and is rebuilt when damaged; old entries of a kind are pruned."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from ..atomic import atomic_write_bytes

RECORD_NAME = "lmkan_build.json"
KEEP_ENTRIES = 3  # per kind: the current entry and the two most recently used others (other checkouts, versions)


def library_path(build_dir: Path, module_name: str) -> Path:
    """Where torch's extension builder puts the shared library of `module_name`."""
    return build_dir / f"{module_name}.so"


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_record(build_dir: Path, module_name: str) -> None:
    """Record the freshly built library's name, size and hash beside it."""
    lib = library_path(build_dir, module_name)
    record = {"library": lib.name, "size": lib.stat().st_size, "sha256": _digest(lib)}
    atomic_write_bytes(build_dir / RECORD_NAME, (json.dumps(record) + "\n").encode())


def damage(build_dir: Path, module_name: str) -> str | None:
    """Why the cached library cannot be trusted (None when it matches its record, or is not built yet)."""
    lib = library_path(build_dir, module_name)
    if not lib.exists():
        return None
    try:
        record = json.loads((build_dir / RECORD_NAME).read_text())
        size, expected = int(record["size"]), str(record["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        return f"{lib.name} has no valid build record (an interrupted build?)"
    actual = lib.stat().st_size
    if actual != size:
        return f"{lib.name} is {actual} bytes, {size} when built (truncated or overwritten)"
    if _digest(lib) != expected:
        return f"{lib.name} does not match the hash recorded when it was built"
    return None


def discard_library(build_dir: Path, module_name: str) -> None:
    """Remove a damaged library and its record (the object files stay: the rebuild is a relink)."""
    library_path(build_dir, module_name).unlink(missing_ok=True)
    (build_dir / RECORD_NAME).unlink(missing_ok=True)


def wipe(build_dir: Path) -> None:
    """Empty a build folder completely (objects, ninja state, library) for a rebuild from scratch."""
    shutil.rmtree(build_dir, ignore_errors=True)
    build_dir.mkdir(parents=True, exist_ok=True)


def prune(current: Path, keep: int = KEEP_ENTRIES) -> list[Path]:
    """Delete all but the `keep` most recently used sibling entries of `current` (same kind, other source
    hashes) whose lock is free; return the folders removed."""
    import filelock

    prefix = current.name.rsplit("-", 1)[0] + "-"
    siblings = [p for p in current.parent.glob(prefix + "*") if p.is_dir() and p != current]
    siblings.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    removed = []
    for old in siblings[max(0, keep - 1):]:
        lock = filelock.FileLock(str(old) + ".lock", timeout=0)
        try:
            with lock:
                shutil.rmtree(old, ignore_errors=True)
        except filelock.Timeout:  # another process is building or loading it right now
            continue
        Path(str(old) + ".lock").unlink(missing_ok=True)
        removed.append(old)
    return removed
