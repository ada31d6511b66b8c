"""The README's side-by-side picture per modality: one held-out slice, clean, degraded, what the
classical filters a user can run give (BM3D and NLM with estimated sigma, Slicer's curvature
anisotropic diffusion) and each shipped model of the modality, PSNR/SSIM under each panel.

    python benchmarks/render_modality_figures.py [--modalities MR PET XRAY US] [--out Resources/Screenshots]

Writes <out>/denoising_<modality>.png (8-bit grey, small). The data are those of
benchmarks/evaluate_zoo.sh (same files, slabs, degradations and seed).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from medgan_training.evaluate import evaluate, simulated_stack

# modality -> (clean file, slices, tile, degradation, slice shown, central crop shown (fraction of the side))
CASES = {
    "MR": ("data/mr_brain_colin27.nii.gz", "89:90", 0, "rician:sigma=0.04", 0, 0.6),
    "PET": ("data/pet_body_phantom.nii.gz", "66:67", 0, "pet_counts:fraction=0.1", 0, 0.8),
    "XRAY": ("data/xray_tibia_rg3.nii.gz", ":", 512, "xray:photons=300,log=3", 4, 0.6),
    "US": ("data/us_logiq_lymph_node.nii.gz", ":", 320, "us_speckle:strength=0.5,db=60", 0, 1.0),
}


def render(modality: str, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    path, slices, tile, degradation, shown, crop = CASES[modality]
    noisy, clean = simulated_stack(path, degradation, slices, seed=1234, tile=tile)
    noisy, clean = noisy[shown : shown + 1], clean[shown : shown + 1]
    summaries, outputs, window = evaluate(noisy, clean, modality, methods=("noisy", "bm3d", "nlm", "cad", "model"),
                                          branches=False, log=lambda *_: None)
    panels = [("clean reference", clean[0], "")] + [
        (name.replace("model ", "").replace(", estimated sigma", " (est. sigma)").replace("curvature anisotropic diffusion, Slicer defaults", "Slicer curvature AD"),
         stack[0], f"{summaries[name]['psnr']:.2f} dB, SSIM {summaries[name]['ssim']:.3f}")
        for name, stack in outputs.items()]
    columns = -(-len(panels) // 2)
    fig, axes = plt.subplots(2, columns, figsize=(2.7 * columns, 6.4), squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    height, width = clean.shape[1:]
    rows = slice(int(height * (1 - crop) / 2), int(height * (1 + crop) / 2))
    cols = slice(int(width * (1 - crop) / 2), int(width * (1 + crop) / 2))
    for ax, (name, image, figures) in zip(axes.flat, panels):
        ax.imshow(image[rows, cols], cmap="gray", vmin=window.low, vmax=window.high)
        ax.set_title(f"{name}\n{figures}", fontsize=8)
    fig.suptitle(f"{modality}: {Path(path).name}, {degradation} (central {crop:.0%} shown; figures over the whole slice)", fontsize=8)
    target = out / f"denoising_{modality.lower()}.png"
    scratch = target.with_suffix(".tmp.png")
    fig.savefig(scratch, dpi=110)
    plt.close(fig)
    Image.open(scratch).convert("L").save(target, optimize=True)
    scratch.unlink()
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modalities", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--out", type=Path, default=Path("Resources/Screenshots"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for modality in args.modalities:
        print(f"wrote {render(modality, args.out)}")


if __name__ == "__main__":
    main()
