"""Randomly displaced CH4 configurations labelled with GFN2-xTB (tblite), cached as a compressed file + manifest.

As in the paper's data set, C sits at the origin and each of the 4 H atoms is placed uniformly in a sphere around
it; configurations with any two atoms closer than MIN_DISTANCE are rejected. Energies are in Hartree.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import time
from pathlib import Path

import numpy as np

RADIUS = 3.5  # Angstrom: H positions are uniform in this sphere around C
MIN_DISTANCE = 0.5  # Angstrom: rejection threshold between any two atoms
ELECTRONIC_TEMPERATURE = 5e-3  # Hartree: helps SCF convergence on wide geometries
BOHR_PER_ANGSTROM = 1.0 / 0.529177210903
NUMBERS = np.array([6, 1, 1, 1, 1])
METHOD = "GFN2-xTB"


def random_configurations(count: int, seed: int) -> np.ndarray:
    """[count, 5, 3] positions in Angstrom (C first, at the origin), with the paper-style random H placement."""
    rng = np.random.default_rng(seed)
    kept: list[np.ndarray] = []
    total = 0
    while total < count:
        n = 2 * (count - total) + 16
        direction = rng.normal(size=(n, 4, 3))
        direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
        radius = RADIUS * rng.random((n, 4, 1)) ** (1.0 / 3.0)
        pos = np.concatenate([np.zeros((n, 1, 3)), direction * radius], axis=1)
        dist = np.linalg.norm(pos[:, :, None] - pos[:, None], axis=-1) + np.eye(5) * 1e9
        good = pos[dist.min(axis=(1, 2)) >= MIN_DISTANCE]
        kept.append(good)
        total += len(good)
    return np.concatenate(kept)[:count]


def _label_chunk(positions: np.ndarray) -> np.ndarray:
    """GFN2-xTB energies (Hartree) of a chunk; NaN where the SCF fails."""
    os.environ["OMP_NUM_THREADS"] = "1"
    from tblite.interface import Calculator

    energies = np.full(len(positions), np.nan)
    calc = None
    for i, pos in enumerate(positions):
        try:
            if calc is None:
                calc = Calculator(METHOD, NUMBERS, pos * BOHR_PER_ANGSTROM)
                calc.set("verbosity", 0)
                calc.set("temperature", ELECTRONIC_TEMPERATURE)
            else:
                calc.update(positions=pos * BOHR_PER_ANGSTROM)
            energies[i] = calc.singlepoint().get("energy")
        except RuntimeError:
            calc = None
    return energies


def label_xtb(positions: np.ndarray, workers: int = 1) -> np.ndarray:
    """GFN2-xTB energies (Hartree) of positions [N, 5, 3] in Angstrom, over `workers` processes; NaN where the SCF
    fails."""
    chunks = np.array_split(positions, max(1, workers * 8))
    if workers > 1:
        with mp.get_context("spawn").Pool(workers) as pool:
            return np.concatenate(pool.map(_label_chunk, chunks))
    return np.concatenate([_label_chunk(c) for c in chunks])


def load_or_generate(count: int, seed: int, cache: Path, workers: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Positions [N, 5, 3] (Angstrom) and energies [N] (Hartree) of `count` labelled configurations (cached).

    Configurations whose SCF fails are dropped, so N can be slightly below count; the manifest records how many.
    """
    path = cache / f"ch4_gfn2_seed{seed}_n{count}.npz"
    if path.exists():
        data = np.load(path)
        return data["positions"], data["energies"]
    start = time.perf_counter()
    positions = random_configurations(count, seed)
    energies = label_xtb(positions, workers)
    ok = np.isfinite(energies)
    positions, energies = positions[ok].astype(np.float32), energies[ok]
    np.savez_compressed(path, positions=positions, energies=energies)
    manifest = {"method": METHOD, "package": "tblite", "electronic_temperature_hartree": ELECTRONIC_TEMPERATURE,
                "seed": seed, "requested": count, "count": int(ok.sum()), "failed_scf": int((~ok).sum()),
                "radius_angstrom": RADIUS, "min_distance_angstrom": MIN_DISTANCE, "units": "Angstrom / Hartree",
                "label_seconds": round(time.perf_counter() - start, 1),
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    path.with_suffix(".json").write_text(json.dumps(manifest, indent=2))
    return positions, energies
