"""A DFT-labelled CH4 check set (pyscf), to test whether models trained on GFN2-xTB energies track a higher level
of theory. Each configuration carries both labels (GFN2-xTB and DFT), so the xTB-vs-DFT gap can be reported too.

Run on its own (it takes ~1-2 s per configuration on one core):

    python experiments/methane/dft_data.py --count 1500

Labelling is resumable: finished configurations are kept in a partial file every CHECKPOINT_EVERY steps.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cache_dir  # noqa: E402
from ch4_data import label_xtb, random_configurations  # noqa: E402

FUNCTIONAL = "B3LYP"
BASIS = "def2-SVP"
SEED_OFFSET = 1_000_003  # check-set configurations never coincide with a training set drawn with the same seed
CHECKPOINT_EVERY = 50


def dft_energy(position: np.ndarray) -> float:
    """Closed-shell Kohn-Sham energy (Hartree) of one CH4 geometry [5, 3] in Angstrom; NaN when the SCF fails.

    DIIS alone fails on about a quarter of the stretched geometries; those continue with pyscf's second-order
    (Newton) solver from where DIIS stopped, which converges them.
    """
    from pyscf import dft, gto

    mol = gto.M(atom=[(symbol, tuple(r)) for symbol, r in zip("CHHHH", position)], basis=BASIS, unit="Angstrom",
                spin=0, verbose=0)
    mf = dft.RKS(mol)
    mf.xc = FUNCTIONAL
    energy = mf.kernel()
    if not mf.converged:
        diis, mf = mf, mf.newton()
        energy = mf.kernel(diis.mo_coeff, diis.mo_occ)
    return float(energy) if mf.converged else float("nan")


def check_set_path(count: int, seed: int) -> Path:
    """Where the check set of `count` configurations drawn from `seed` is cached."""
    return cache_dir("methane") / f"ch4_dft_{FUNCTIONAL}_{BASIS}_seed{seed}_n{count}.npz"


def load_check_set(count: int, seed: int) -> dict[str, np.ndarray] | None:
    """The cached check set (positions [N, 5, 3], energies_xtb, energies_dft), or None if not labelled yet."""
    path = check_set_path(count, seed)
    if not path.exists():
        return None
    data = np.load(path)
    return {key: data[key] for key in ("positions", "energies_xtb", "energies_dft")}


def label_check_set(count: int, seed: int, progress: bool = True) -> dict[str, np.ndarray]:
    """Label (resuming a partial run) and cache `count` configurations with GFN2-xTB and DFT; failures dropped."""
    cached = load_check_set(count, seed)
    if cached is not None:
        return cached
    path = check_set_path(count, seed)
    partial = path.with_suffix(".partial.npz")
    positions = random_configurations(count, seed + SEED_OFFSET)
    energies_xtb = label_xtb(positions)
    energies_dft = np.full(count, np.nan)
    done, seconds = 0, 0.0
    if partial.exists():
        saved = np.load(partial)
        done, seconds = int(saved["done"]), float(saved["seconds"])
        energies_dft[:done] = saved["energies_dft"][:done]
    start = time.perf_counter() - seconds
    for i in range(done, count):
        if np.isfinite(energies_xtb[i]):
            energies_dft[i] = dft_energy(positions[i])
        if (i + 1) % CHECKPOINT_EVERY == 0 or i + 1 == count:
            np.savez(partial, energies_dft=energies_dft, done=i + 1, seconds=time.perf_counter() - start)
            if progress:
                print(f"{i + 1}/{count} labelled, {time.perf_counter() - start:.0f} s", flush=True)
    ok = np.isfinite(energies_xtb) & np.isfinite(energies_dft)
    np.savez_compressed(path, positions=positions[ok].astype(np.float32), energies_xtb=energies_xtb[ok],
                        energies_dft=energies_dft[ok])
    manifest = {"method": f"{FUNCTIONAL}/{BASIS} (pyscf RKS) and GFN2-xTB (tblite)", "seed": seed + SEED_OFFSET,
                "requested": count, "count": int(ok.sum()), "failed": int((~ok).sum()), "units": "Angstrom / Hartree",
                "label_seconds": round(time.perf_counter() - start, 1),
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    path.with_suffix(".json").write_text(json.dumps(manifest, indent=2))
    partial.unlink()
    return load_check_set(count, seed)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0, help="the methane run's seed (the check set adds an offset)")
    args = parser.parse_args(argv)
    data = label_check_set(args.count, args.seed)
    print(f"{len(data['energies_dft'])} configurations in {check_set_path(args.count, args.seed)}")


if __name__ == "__main__":
    main()
