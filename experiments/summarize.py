"""Print the markdown tables of docs/experiments.md from experiment results.json files.

Usage: python experiments/summarize.py docs/experiments/*/results.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ERROR_KEYS = {"function_approx": "mse", "methane": "relative_rmse", "lmkan_cnn": "test_error", "fastkan": "test_error"}


def _ratio(row: dict, cost: str) -> str:
    value, kind = row[f"{cost}_ratio"], row[f"{cost}_ratio_kind"]
    prefix = {"interpolated": "", "beyond": ">", "below": "<"}[kind]
    return f"{prefix}{value:.3g}x"


def model_table(rows: list[dict], error_key: str) -> str:
    """One line per trained model: error, FLOPs, parameters, CPU time per sample, training time."""
    lines = [f"| model | {error_key} | multiply-adds | params | CPU us/sample | train s |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['label']} | {r[error_key]:.4g} | {r['flops']:,} | {r['params']:,} | "
                     f"{r['seconds_per_sample'] * 1e6:.3g} | {r['train_seconds']:.0f} |")
    return "\n".join(lines)


def matched_table(matched: list[dict], error_key: str) -> str:
    """MLP cost at each lmKAN's error divided by the lmKAN's cost ('<': lmKAN worse than the smallest MLP;
    '>': better than the largest)."""
    lines = [f"| lmKAN | {error_key} | FLOPs reduction | CPU time reduction |", "|---|---|---|---|"]
    for m in matched:
        lines.append(f"| {m['label']} | {m[error_key]:.4g} | {_ratio(m, 'flops')} | "
                     f"{_ratio(m, 'seconds_per_sample')} |")
    return "\n".join(lines)


def dft_check_table(results: dict) -> str:
    """Per methane model: how its energies track the GFN2-xTB labels and the DFT labels of the check set (offset
    removed; RMSE / std of the reference), next to how GFN2-xTB itself tracks DFT."""
    check = results["dft_check"]
    base = check["xtb_vs_dft"]
    lines = [f"DFT check set: {check['count']} configurations, {check['method']}; GFN2-xTB itself vs DFT: relative "
             f"RMSE {base['relative_rmse']:.3f}, Pearson r {base['pearson']:.4f}.", "",
             "| model | rel. RMSE vs xTB | rel. RMSE vs DFT | Pearson r vs DFT |", "|---|---|---|---|"]
    for block in results["representations"].values():
        for r in block["mlp"] + block["lmkan"]:
            if "check_vs_dft" in r:
                lines.append(f"| {r['label']} | {r['check_vs_xtb']['relative_rmse']:.3f} | "
                             f"{r['check_vs_dft']['relative_rmse']:.3f} | {r['check_vs_dft']['pearson']:.4f} |")
    return "\n".join(lines)


def summarize(path: Path) -> str:
    """Markdown for one results.json."""
    results = json.loads(path.read_text())
    name = results["experiment"]
    key = ERROR_KEYS[name]
    parts = [f"### {name} ({results['mode']}, lmKAN backend: {results['lmkan_backend']})"]
    if name == "methane":
        for rep, block in results["representations"].items():
            parts += [f"#### {rep}", model_table(block["mlp"] + block["lmkan"], key),
                      matched_table(block["matched"], key)]
        if "dft_check" in results:
            parts.append(dft_check_table(results))
    elif name == "fastkan":
        rows = [dict(r, label=f"{r['label']} ({r['params_per_function']} p/f)")
                for series in results["series"].values() for r in series]
        parts.append(model_table(rows, key))
    else:
        parts += [model_table(results["mlp"] + results["lmkan"], key), matched_table(results["matched"], key)]
    return "\n\n".join(parts)


if __name__ == "__main__":
    print("\n\n".join(summarize(Path(p)) for p in sys.argv[1:]))
