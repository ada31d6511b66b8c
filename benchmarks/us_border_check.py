"""Does an ultrasound model lose at the image border? Denoise the held-out LOGIQ lymph-node image
as it is and reflect-padded by 16-64 pixels (cropped back), and compare PSNR/SSIM.

    python benchmarks/us_border_check.py [MODEL_ID [MODELS_DIR]]

The speckle draw, window, metrics and 160 x 160 tiles of the README's ultrasound table
(`medgan-evaluate ... --tile 160`, seed 1234), except that the whole image is denoised at once and
the tiles are cut from the result.
"""

import sys

import numpy as np

from MedGANDenoiseLib.engine import denoise_volume
from MedGANDenoiseLib.registry import ModelRegistry, load_model
from medgan_training.evaluate import cut_into_tiles, simulated_stack
from medgan_training.metrics import slice_metrics, summarize, window_for

IMAGE, TILE, SEED = "data/us_logiq_lymph_node.nii.gz", 160, 1234


def scores(clean: np.ndarray, output: np.ndarray) -> str:
    """Whole-image PSNR/SSIM and the mean over content tiles, in the evaluation's US window."""
    window = window_for("US", clean)
    whole = slice_metrics(output[0], clean[0], window)
    clean_tiles, output_tiles = cut_into_tiles(TILE, clean, output, source=IMAGE)
    tiles = summarize([slice_metrics(o, c, window) for o, c in zip(output_tiles, clean_tiles)])
    return f"whole {whole['psnr']:.2f} / {whole['ssim']:.3f}  tiles({len(clean_tiles)}) {tiles['psnr']:.2f} / {tiles['ssim']:.3f}"


def main() -> None:
    model_id = sys.argv[1] if len(sys.argv) > 1 else "us-unet-w16"
    model = load_model(ModelRegistry.default(sys.argv[2:3]).get(model_id))
    for strength in (0.5, 1.0):
        noisy, clean = simulated_stack(IMAGE, f"us_speckle:strength={strength},db=60", ":", SEED)
        print(f"strength {strength}: noisy input  {scores(clean, noisy)}")
        height, width = clean.shape[1:]
        for pad in (0, 16, 32, 64):
            padded = np.pad(noisy, ((0, 0), (pad, pad), (pad, pad)), mode="reflect")
            out = denoise_volume(padded, model, "US", precision="fp32").denoised[:, pad:pad + height, pad:pad + width]
            print(f"strength {strength}: pad {pad:2d} px  {scores(clean, out)}", flush=True)


if __name__ == "__main__":
    main()
