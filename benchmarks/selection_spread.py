"""How much a run's best-epoch choice could flatter its validation figures: for each training run
folder, the best validation epoch (the one medgan-train exports) beside the last epoch and the
mean of the last three. Where the validation slices are also the slices a table reports, the
difference is the most the selection can have added to that table's model row.

    python benchmarks/selection_spread.py runs/ct_unet_w32 runs/xray_valleeds ...
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path


def spread(run: Path) -> dict[str, float] | None:
    """Best and last epochs of a run's log.csv (None without a log)."""
    log = run / "log.csv"
    if not log.is_file():
        return None
    rows = list(csv.DictReader(log.open()))
    if not rows:
        return None
    psnr = [float(r["val_psnr"]) for r in rows]
    ssim = [float(r["val_ssim"]) for r in rows]
    best = max(range(len(psnr)), key=psnr.__getitem__)
    return {"epochs": len(rows), "best_epoch": int(rows[best]["epoch"]), "best_psnr": psnr[best], "best_ssim": ssim[best],
            "last_psnr": psnr[-1], "last_ssim": ssim[-1], "last3_psnr": sum(psnr[-3:]) / len(psnr[-3:])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="training output folders (medgan-train --out)")
    args = parser.parse_args(argv)
    print("| run | epochs | best epoch: PSNR / SSIM | last epoch: PSNR / SSIM | best - last (dB) | best - mean of the last 3 (dB) |")
    print("|---|---|---|---|---|---|")
    for run in args.runs:
        s = spread(run)
        if s is None:
            print(f"| {run.name} | no log.csv | | | | |")
            continue
        print(f"| {run.name} | {s['epochs']} | {s['best_epoch']}: {s['best_psnr']:.2f} / {s['best_ssim']:.4f} | "
              f"{s['last_psnr']:.2f} / {s['last_ssim']:.4f} | {s['best_psnr'] - s['last_psnr']:.2f} | {s['best_psnr'] - s['last3_psnr']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
