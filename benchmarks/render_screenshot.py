"""Render Resources/Screenshots/MedGANDenoise.png, the Extensions Index screenshot: input, denoised
and estimated noise of one CT slice, denoised by the shipped model through the shared engine.

The committed picture uses a synthetic head phantom with projection-domain 25 % dose noise, so no
third-party scan is redistributed. --source real uses the real quarter-dose body CT of
../shared/data/real_ldct_pair, --source head a 25 % dose simulation of a slice of
data/ct_head_cranium.nii.gz (medgan-data); both for local viewing only.

    python benchmarks/render_screenshot.py [--source phantom|head|real] [--out Resources/Screenshots/MedGANDenoise.png]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "MedGANDenoise"), str(ROOT / "Training")]

WINDOW = (-160.0, 240.0)  # HU, the window of the README's results


def phantom(size: int = 256) -> np.ndarray:
    """A head-like HU phantom: air, skull ring, brain with a few low/high contrast blobs."""
    y, x = np.mgrid[-1:1:size * 1j, -1:1:size * 1j]
    r = np.hypot(x / 0.85, y / 0.95)
    hu = np.full((size, size), -1000.0, dtype=np.float32)
    hu[r < 1.0] = 900.0
    hu[r < 0.9] = 35.0
    for cx, cy, radius, value in ((-0.3, -0.2, 0.12, 80.0), (0.35, 0.1, 0.08, 5.0), (0.0, 0.45, 0.1, 60.0)):
        hu[np.hypot(x - cx, y - cy) < radius] = value
    return hu


def noisy_slice(source: str) -> tuple[np.ndarray, str]:
    if source == "real":
        pair = ROOT.parent / "shared" / "data" / "real_ldct_pair" / "quarter_dose_hu.npy"
        return np.load(pair).astype(np.float32), "real quarter-dose body CT"
    from medgan_training.degradations import make_degradation

    head = ROOT / "data" / "ct_head_cranium.nii.gz"
    if source == "head":
        from MedGANDenoiseLib.image_io import image_to_array, read_image

        volume = image_to_array(read_image(head))
        clean, source = volume[volume.shape[0] // 2].astype(np.float32), "head CT, simulated 25 % dose"
    else:
        clean, source = phantom(), "phantom, simulated 25 % dose"
    return make_degradation("ct_low_dose:dose=0.25")(clean, np.random.default_rng(0)), source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", choices=["phantom", "head", "real"], default="phantom")
    parser.add_argument("--out", type=Path, default=ROOT / "Resources" / "Screenshots" / "MedGANDenoise.png")
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from MedGANDenoiseLib.engine import denoise_volume, estimate_noise_sigma
    from MedGANDenoiseLib.registry import ModelRegistry, load_model

    image, source = noisy_slice(args.source)
    model = load_model(ModelRegistry.default().find("CT", "unet"))
    result = denoise_volume(image[np.newaxis], model, "CT", device="cpu")
    denoised, noise = result.denoised[0], result.noise[0]
    limit = 3 * float(np.std(noise))
    panels = [
        (image, f"input ({source})\nnoise sigma {estimate_noise_sigma(image):.1f} HU", WINDOW),
        (denoised, f"denoised ({model.card.id})\nnoise sigma {estimate_noise_sigma(denoised):.1f} HU", WINDOW),
        (noise, "estimated noise\n(input = denoised + noise)", (-limit, limit)),
    ]
    figure, axes = plt.subplots(1, 3, figsize=(10.5, 4.1), dpi=80, facecolor="black")
    for axis, (picture, title, (low, high)) in zip(axes, panels):
        axis.imshow(picture, cmap="gray", vmin=low, vmax=high)
        axis.set_title(title, color="white", fontsize=10)
        axis.axis("off")
    figure.suptitle("MedGANDenoise (3D Slicer, Filtering > Denoising)", color="white", fontsize=12)
    figure.tight_layout(rect=(0, 0, 1, 0.93))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, facecolor="black")
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KiB) from the {source}")


if __name__ == "__main__":
    main()
