"""How far the CPU default precision (bf16 coarse U-Net levels) lands from float32, in HU, on the
body-like phantom of benchmark_engine.py and on real body CT slices (a measurement, not a test).

    python benchmarks/cpu_precision_accuracy.py [--models ct-unet-w32] [--slices 70:72]

Prints, per model and image: the 99.9th percentile and the largest difference inside the
soft-tissue window [-160, 240] HU, and the largest anywhere (bone and air included).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from benchmark_engine import body_volume  # the speed benchmark's phantom, a sibling script

from MedGANDenoiseLib.engine import denoise_volume
from MedGANDenoiseLib.registry import ModelRegistry, load_model
from medgan_training.datasets import load_volume


def differences(model, volume: np.ndarray) -> tuple[float, float, float]:
    exact = denoise_volume(volume, model, "CT", device="cpu", precision="fp32").denoised
    mixed = denoise_volume(volume, model, "CT", device="cpu", precision="bf16").denoised
    error = np.abs(mixed - exact)
    shown = (exact > -160) & (exact < 240)
    return float(np.percentile(error[shown], 99.9)), float(error[shown].max()), float(error.max())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["ct-unet-w32"])
    parser.add_argument("--scan", default="data/ct_body_chest_abdomen.nii.gz", help="a real CT (medgan-data --sources ct_body)")
    parser.add_argument("--slices", default="70:72", help="slices of --scan, as start:stop")
    args = parser.parse_args(argv)
    start, stop = (int(v) for v in args.slices.split(":"))
    images = {"phantom 4 x 512 x 512": body_volume(4, 512).astype(np.float32)}
    if Path(args.scan).is_file():
        images[f"{Path(args.scan).name} slices {args.slices}"] = load_volume(args.scan)[0][start:stop].astype(np.float32)
    print("| model | image | 99.9th percentile in the window (HU) | largest in the window | largest anywhere |")
    print("|---|---|---|---|---|")
    for model_id in args.models:
        model = load_model(ModelRegistry.default().get(model_id))
        for name, volume in images.items():
            p999, window_max, overall = differences(model, volume)
            print(f"| {model_id} | {name} | {p999:.3f} | {window_max:.3f} | {overall:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
