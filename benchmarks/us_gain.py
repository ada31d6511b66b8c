"""An ultrasound model against the filters a user has (BM3D and NLM with estimated sigma, Slicer's
curvature anisotropic diffusion) on images whose display gain was turned down: the clean image
speckled on its 60 dB log display, then clean and speckled image alike lowered by 0, 6, 12, 18 dB
of that range (clipped at the floor), as the scanner's overall gain does. Lowering the gain moves
textured tissue and its speckle towards the floor, where they are clipped; it is how a user's
darker scan differs from a bright one.

    python benchmarks/us_gain.py --model us-unet-w16
    python benchmarks/us_gain.py --models-dir runs/us_gainft2/export --model usgainft2

Images: the calibration images of benchmarks/us_noise_scale.py (no model trained on them), as
160 x 160 tiles, speckle seed 1234. The filters' results are cached under output/us_gain_v2/. Prints
one line per image, gain and speckle strength, and the conditions where the model is below a filter.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from medgan_training.datasets import load_volume
from medgan_training.degradations import make_degradation
from medgan_training.evaluate import cut_into_tiles, evaluate
from us_noise_scale import IMAGES, against_filters

DISPLAY_DB = 60.0


def speckled(volume: np.ndarray, spacing, level: str, seed: int = 1234) -> np.ndarray:
    """The image with speckle of that strength added on its DISPLAY_DB log display."""
    degrade = make_degradation(f"us_speckle:strength={level},db={DISPLAY_DB:g}")
    rng = np.random.default_rng(seed)
    pixel_size = float(list(reversed(spacing))[1])  # in-plane, as medgan-evaluate takes it
    return np.stack([degrade(s, rng, pixel_size_mm=pixel_size) for s in volume]).astype(np.float32)


def darkened_tiles(clean: np.ndarray, noisy: np.ndarray, gain_db: float, source: str,
                   tile: int = 160) -> tuple[np.ndarray, np.ndarray]:
    """(noisy, clean) tiles of a speckled B-mode image and its reference, both lowered by gain_db of
    the display's range and clipped at its floor, as the scanner's overall gain does."""
    floor = float(clean.min())
    shift = (float(clean.max()) - floor) * -gain_db / DISPLAY_DB
    clean, noisy = (np.maximum(stack - shift, floor) for stack in (clean, noisy))
    return cut_into_tiles(tile, clean, noisy, source=source)[::-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="the model id")
    parser.add_argument("--models-dir", action="append", default=[], help="a folder of further models (a run's export)")
    parser.add_argument("--strength", type=float, default=1.0, help="as medgan-denoise --strength (default: 1)")
    parser.add_argument("--images", nargs="+", default=list(IMAGES), help="clean B-mode images")
    parser.add_argument("--gains", default="0,-6,-12,-18", help="display gains in dB")
    parser.add_argument("--levels", default="0.25,0.5,1", help="speckle strengths added")
    parser.add_argument("--out", type=Path, default=Path("output/us_gain_v2"), help="cache of the filters' results")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    below, margins = [], []
    levels = args.levels.split(",")
    for image in args.images:
        name = Path(image).name.split(".")[0]
        volume, spacing = load_volume(image)
        volume = volume.astype(np.float32)
        speckled_at = {level: speckled(volume, spacing, level) for level in levels}  # the same for every gain
        for gain in (float(g) for g in args.gains.split(",")):
            for level in levels:
                noisy, clean = darkened_tiles(volume, speckled_at[level], gain, image)
                cache = args.out / f"filters_{name}_{gain:g}_{level}.json"
                if cache.is_file():
                    filters = json.loads(cache.read_text())
                else:
                    filters, _, _ = evaluate(noisy, clean, "US", methods=("noisy", "bm3d", "nlm", "cad"), log=lambda _: None)
                    filters = {k: {m: v[m] for m in ("psnr", "ssim")} for k, v in filters.items()}
                    cache.write_text(json.dumps(filters, indent=1))
                rows, _, _ = evaluate(noisy, clean, "US", methods=("model",), models=[args.model],
                                      models_dirs=tuple(args.models_dir), branches=False, strength=args.strength,
                                      log=lambda _: None)
                model = next(iter(rows.values()))
                ok, best = against_filters(model, filters)
                margins.append((model["psnr"] - best["psnr"], model["ssim"] - best["ssim"]))
                condition = f"{name} gain {gain:+g} dB speckle {level}"
                if not ok:
                    below.append(condition)
                noisy_row = filters["noisy input"]
                print(f"{condition:48s} noisy {noisy_row['psnr']:.2f} / {noisy_row['ssim']:.4f}   best filter "
                      f"{best['psnr']:.2f} / {best['ssim']:.4f}   model {model['psnr']:.2f} / {model['ssim']:.4f}   "
                      f"{'beats' if ok else 'BELOW'}", flush=True)
    psnr, ssim = zip(*margins)
    print(f"{args.model} (strength {args.strength:g}, noise_scale {model['noise_scale']:g}): beats every filter in {len(margins) - len(below)} of "
          f"{len(margins)} conditions; margin over the best filter: SSIM mean {np.mean(ssim):+.4f}, smallest "
          f"{min(ssim):+.4f}; PSNR mean {np.mean(psnr):+.2f} dB, smallest {min(psnr):+.2f} dB")
    if below:
        print("below a filter: " + "; ".join(below))
    return 0


if __name__ == "__main__":
    sys.exit(main())
