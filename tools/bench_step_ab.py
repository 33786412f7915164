"""Train-step CPU time of bench_students' students, this checkout against a base git ref, in one process.

The base ref's package is extracted (git archive) and imported as `lmkan_base` (its torch.library ops renamed to
the `lmkanbase::` namespace so both register); both sides build the same students (same seed, bench_students'
builders, of this checkout) and are timed by bench_students.step_times one round at a time, alternating base and
this checkout: a before/after that shares the box's load, unlike two runs back to back.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType

import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "tools" / "bench_students.py"


def extract_base(ref: str, into: Path) -> Path:
    """The package of `ref` as importable `lmkan_base` under `into` (kernels and passes where setup puts them)."""
    src = into / "src"
    src.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    package = into / "pkg" / "lmkan_base"
    shutil.copytree(src / "lmkan_surgery", package)
    shutil.copytree(src / "kernels", package / "kernels")
    shutil.copytree(src / "passes", package / "passes")
    for path in package.rglob("*.py"):
        text = path.read_text()
        renamed = text.replace("lmkan::", "lmkanbase::").replace("torch.ops.lmkan.", "torch.ops.lmkanbase.")
        if renamed != text:
            path.write_text(renamed)
    return into / "pkg"


def base_kernels(base: ModuleType, ref: str, into: Path) -> None:
    """Give the base package its native CPU kernels without touching this checkout's cache entry: this checkout's
    loaded module when kernels/ is the same at `ref` (the same code), else a build in a cache folder of its own
    (one cache entry compiled from two source paths would be relinked back and forth)."""
    import os

    from lmkan_surgery.kernels.build import CACHE_ENV
    from lmkan_surgery.ops import dispatch

    if subprocess.run(["git", "-C", str(ROOT), "diff", "--quiet", ref, "--", "kernels"]).returncode == 0:
        base.ops.dispatch._native_cache["cpu"] = dispatch._native_backend("cpu")
        return
    saved = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(into / "kcache")
    try:
        base.ops.dispatch._native_backend("cpu")
    finally:
        if saved is None:
            os.environ.pop(CACHE_ENV)
        else:
            os.environ[CACHE_ENV] = saved


def bench_module(name: str, package: ModuleType | None) -> ModuleType:
    """A fresh instance of bench_students; with `package`, its lmKAN layer and engine come from that package."""
    spec = importlib.util.spec_from_file_location(name, BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if package is not None:
        from importlib import import_module

        module.LMKANLinear = package.LMKANLinear
        module.TrainConfig = import_module(f"{package.__name__}.distill").TrainConfig
        module.train_lmkan = import_module(f"{package.__name__}.distill").train_lmkan
        module.knot_values = import_module(f"{package.__name__}.nn.placement").knot_values
    return module


def features(bench: ModuleType, teacher: str) -> tuple[torch.Tensor, type]:
    """The bench's input features of one teacher (the same configurations and filter as its main)."""
    positions, energies = bench.load_or_generate(20000, 0, bench.cache_dir("methane"), 1)
    pos, energy = torch.tensor(positions, dtype=torch.float64), torch.tensor(energies, dtype=torch.float64)
    pos = pos[energy <= torch.quantile(energy, 0.98)]
    featurize = {"distances": (bench.distances, torch.nn.SiLU), "symmetry": (bench.symmetry_functions, torch.nn.CELU)}
    fn, act = featurize[teacher]
    return fn(pos).float(), act


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base-ref", default="main", help="git ref of the 'before' side")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--budgets", type=float, nargs="+", default=[0.5, 0.25, 0.1])
    p.add_argument("--teachers", nargs="+", default=["distances", "symmetry"], choices=["distances", "symmetry"])
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        sys.path.insert(0, str(extract_base(args.base_ref, Path(tmp))))
        import lmkan_base

        base_kernels(lmkan_base, args.base_ref, Path(tmp))
        sides = {"base": bench_module("bench_students_base", lmkan_base), "this": bench_module("bench_students", None)}
        step_args = argparse.Namespace(batch=256, hessian=1e-3, hessian_every=1, rounds=1)
        results = {}
        for teacher in args.teachers:
            feats, act = features(sides["this"], teacher)
            bench = sides["this"]
            d_in, total = feats.shape[1], bench.macs(feats.shape[1], 128, False)
            stats = (feats.mean(0), feats.std(0).clamp_min(1e-12))
            sample = torch.randperm(len(feats), generator=torch.Generator().manual_seed(1))[:11 * 256]
            x, y = feats[sample], torch.randn(len(sample), 1, generator=torch.Generator().manual_seed(2))
            for fraction in args.budgets:
                models = {}
                for side, module in sides.items():
                    torch.manual_seed(0)
                    models[side] = {
                        "plain": module.mlp(d_in, module.width_for(d_in, int(fraction * total), False), act, stats,
                                            norm=True),
                        "lmkan": module.lmkan_student(d_in, module.width_for(d_in, int(fraction * total), True), 8,
                                                      feats, 0.5)}
                samples: dict[str, dict[str, list[float]]] = {side: {} for side in sides}
                for _ in range(args.rounds):
                    for side, module in sides.items():
                        for name, value in module.step_times(models[side], x, y, step_args, 10).items():
                            samples[side].setdefault(name, []).append(value)
                means = {side: {k: statistics.fmean(v) for k, v in s.items()} for side, s in samples.items()}
                results[f"{teacher} {fraction}x"] = means
                line = [f"{teacher} {fraction}x"]
                for side, t in means.items():
                    every, fourth = t["lmkan"] / t["plain"], t["lmkan (Hessian every 4th step)"] / t["plain"]
                    line.append(f"{side}: {every:.2f} / {fourth:.2f} / {t['lmkan (no Hessian term)'] / t['plain']:.2f} "
                                f"(lmKAN {t['lmkan'] * 1e3:.2f} ms, plain {t['plain'] * 1e3:.2f} ms)")
                print(" | ".join(line), flush=True)
    print(f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; lmKAN / plain step CPU time: Hessian every step / "
          f"every 4th / none")
    return results


if __name__ == "__main__":
    main()
