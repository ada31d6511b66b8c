"""One markdown table per modality from the runs of benchmarks/evaluate_zoo.sh: a row per method,
a column per held-out condition, each cell PSNR (mean +- std) / SSIM / RMSE.

    python benchmarks/readme_tables.py [--root output/evaluate] mr_rician04="Rician 4 %" mr_rician08 ...

A run may carry its column title after "="; "a+b" merges two runs of the same slices (the
classical filters and the models measured separately, same data and seed) into one column.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def merged(root: Path, parts: list[str]) -> dict:
    reports = [json.loads((root / part / "metrics.json").read_text()) for part in parts]
    if len({r["source"] for r in reports}) != 1:
        raise ValueError(f"{'+'.join(parts)}: the runs measured different data")
    methods = {}
    for report in reports:
        methods.update(report["methods"])
    return {**reports[0], "methods": methods}


def row_name(method: str) -> str:
    """'model ID' and 'model ID: branch' with the model id as code; other methods as they are."""
    if not method.startswith("model "):
        return method
    model_id, _, branch = method.removeprefix("model ").partition(": ")
    return f"`{model_id}`" + (f": {branch}" if branch else "")


def table(root: Path, columns: list[str]) -> str:
    titles = dict(c.split("=", 1) if "=" in c else (c, c) for c in columns)
    runs = list(titles)
    reports = {run: merged(root, run.split("+")) for run in runs}
    methods: list[str] = []
    for report in reports.values():
        methods += [m for m in report["methods"] if m not in methods and ": " not in m]  # branches go below
    branches: list[str] = []
    for report in reports.values():
        branches += [m for m in report["methods"] if m not in branches and ": " in m]
    lines = ["| method | " + " | ".join(f"{titles[run]}: PSNR / SSIM / RMSE" for run in runs) + " |",
             "|---|" + "---|" * len(runs)]
    best = {run: max((s["psnr"] for m, s in r["methods"].items() if ": " not in m and m != "noisy input"), default=0)
            for run, r in reports.items()}
    for method in methods + branches:
        cells = []
        for run, report in reports.items():
            s = report["methods"].get(method)
            if s is None:
                cells.append("")
                continue
            text = f"{s['psnr']:.2f} +- {s['psnr_std']:.2f} / {s['ssim']:.3f} / {s['rmse']:.3g}"
            cells.append(f"**{text}**" if s["psnr"] == best[run] else text)
        lines.append(f"| {row_name(method)} | " + " | ".join(cells) + " |")
    sources = "; ".join(f"{titles[run]}: {r['source']}, window {r['window']}" for run, r in reports.items())
    return "\n".join(lines) + f"\n\nData and windows: {sources}.\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("output/evaluate"))
    parser.add_argument("runs", nargs="+")
    args = parser.parse_args()
    print(table(args.root, args.runs))


if __name__ == "__main__":
    main()
