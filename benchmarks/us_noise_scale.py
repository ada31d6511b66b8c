"""Choose an ultrasound model's noise_scale (the share of its noise estimate removed at strength 1)
on validation images: the largest scale, from 1 down in steps, at which the model beats BM3D and
NLM with estimated sigma and Slicer's curvature anisotropic diffusion in PSNR and in SSIM on every
validation image at every speckle strength (the acceptance rule of the shipped models, applied to
images the model neither trained on nor is tested on).

    python benchmarks/us_noise_scale.py --models-dir runs/us_nosec/export --model usnosec

Runs `medgan-evaluate` once per image and strength for the filters, and once per image, strength
and candidate scale for the model (as --strength, on a card whose own noise_scale is 1); the runs
go to output/noise_scale/. Prints one line per condition and the chosen scale.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

FILTERS = ("BM3D, estimated sigma", "non-local means, estimated sigma", "curvature anisotropic diffusion, Slicer defaults")
IMAGES = ("data/us_still_epiq.nii.gz", "data/us_aloka_pelvis.nii.gz", "data/us_logiq_sector.nii.gz")


def against_filters(model: dict, filters: dict) -> tuple[bool, dict]:
    """Whether a model's row beats every one of FILTERS in PSNR and in SSIM, and the best filter
    figures (each metric's maximum over FILTERS) it was held against."""
    best = {m: max(filters[f][m] for f in FILTERS) for m in ("psnr", "ssim")}
    return model["psnr"] > best["psnr"] and model["ssim"] > best["ssim"], best


def evaluate(image: str, level: str, out: Path, extra: list[str]) -> dict:
    if not (out / "metrics.json").is_file():
        command = ["medgan-evaluate", "--clean", image, "--modality", "US", "--slices", ":", "--tile", "160",
                   "--degradation", f"us_speckle:strength={level},db=60", "--out", str(out), *extra]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / "metrics.json").read_text())["methods"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="the model id (its card's noise_scale must be 1)")
    parser.add_argument("--models-dir", required=True, help="the folder holding the model (a run's export)")
    parser.add_argument("--images", nargs="+", default=list(IMAGES), help="validation images (clean references)")
    parser.add_argument("--levels", default="0.25,0.5,1", help="speckle strengths added")
    parser.add_argument("--step", type=float, default=0.05, help="step between candidate scales")
    parser.add_argument("--lowest", type=float, default=0.5, help="the smallest scale tried")
    parser.add_argument("--out", type=Path, default=Path("output/noise_scale"))
    args = parser.parse_args(argv)
    card = next((m for m in json.loads((Path(args.models_dir) / "registry.json").read_text())["models"]
                 if m["id"] == args.model), None)
    if card is None:
        parser.error(f"no model {args.model!r} in {args.models_dir}/registry.json")
    if card.get("noise_scale", 1.0) != 1.0:
        parser.error(f"{args.model} already has noise_scale {card['noise_scale']}: calibrate the network's raw output")
    levels = args.levels.split(",")
    names = {image: Path(image).name.split(".")[0] for image in args.images}
    filters = {(image, level): evaluate(image, level, args.out / f"filters_{names[image]}_{level}",
                                        ["--methods", "noisy,bm3d,nlm,cad"])
               for image in args.images for level in levels}
    scale = 1.0
    while scale >= args.lowest - 1e-9:
        passed, margins = True, []
        for (image, level), rows in filters.items():
            name = names[image]
            runs = evaluate(image, level, args.out / f"{args.model}-{card['sha256'][:8]}_{name}_{level}_x{scale:.2f}",
                            ["--methods", "model", "--no-branches", "--models-dir", args.models_dir, "--model", args.model,
                             "--strength", f"{scale:.2f}"])
            model = next(v for k, v in runs.items() if k.startswith("model"))
            ok, best = against_filters(model, rows)
            passed &= ok
            margins.append((model["psnr"] - best["psnr"], model["ssim"] - best["ssim"], f"{name} {level}"))
            print(f"scale {scale:.2f}  {name:18s} speckle {level:4s}  model {model['psnr']:.2f} dB / {model['ssim']:.4f}"
                  f"   best filter {best['psnr']:.2f} / {best['ssim']:.4f}   {'beats' if ok else 'BELOW'}")
        if passed:
            print(f"chosen noise_scale: {scale:.2f} (the largest at which the model beats every filter everywhere)")
            psnr, ssim, where = zip(*margins)
            print(f"margins over the best filter there: SSIM smallest {min(ssim):+.4f} ({where[ssim.index(min(ssim))]}), "
                  f"mean {sum(ssim) / len(ssim):+.4f}; PSNR smallest {min(psnr):+.2f} dB ({where[psnr.index(min(psnr))]}), "
                  f"mean {sum(psnr) / len(psnr):+.2f} dB")
            return 0
        scale = round(scale - args.step, 6)
    print(f"no scale down to {args.lowest} beats every filter on every condition")
    return 1


if __name__ == "__main__":
    sys.exit(main())
