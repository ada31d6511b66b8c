"""Does an ultrasound model lose at the image border? Denoise the held-out LOGIQ lymph-node image
as it is and reflect-padded by 16-64 pixels (cropped back), and compare PSNR/SSIM.

    python benchmarks/us_border_check.py [MODEL_ID [MODELS_DIR]]

Speckle as in the README's ultrasound table (strength 0.5 and 1, 60 dB), one draw (seed 1234);
tiles: the 160 x 160 grid of the image, tiles without content (std < 1) left out.
"""

import sys

import numpy as np
import SimpleITK as sitk
from skimage.metrics import peak_signal_noise_ratio as psnr
from skimage.metrics import structural_similarity as ssim

from MedGANDenoiseLib.engine import denoise_volume
from MedGANDenoiseLib.registry import ModelRegistry, load_model
from medgan_training.degradations import make_degradation


def scores(clean: np.ndarray, output: np.ndarray, tile: int = 160) -> tuple[float, float, float, float]:
    """Whole-image PSNR/SSIM and the mean over content tiles, window [0, 255]."""
    tiles = [(clean[i:i + tile, j:j + tile], output[i:i + tile, j:j + tile])
             for i in range(0, clean.shape[0] - tile + 1, tile) for j in range(0, clean.shape[1] - tile + 1, tile)]
    tiles = [(c, o) for c, o in tiles if c.std() >= 1]
    return (psnr(clean, output, data_range=255), ssim(clean, output, data_range=255),
            float(np.mean([psnr(c, o, data_range=255) for c, o in tiles])),
            float(np.mean([ssim(c, o, data_range=255) for c, o in tiles])))


def main() -> None:
    model_id = sys.argv[1] if len(sys.argv) > 1 else "us-unet-w16"
    registry = ModelRegistry.default(sys.argv[2:3])
    model = load_model(registry.get(model_id))
    clean = sitk.GetArrayFromImage(sitk.ReadImage("data/us_logiq_lymph_node.nii.gz")).astype(np.float32)[0]
    for strength in (0.5, 1.0):
        noisy = make_degradation(f"us_speckle:strength={strength},db=60")(clean, np.random.default_rng(1234))
        print(f"strength {strength}: noisy input  whole %.2f / %.3f  tiles %.2f / %.3f" % scores(clean, np.clip(noisy, 0, 255)))
        for pad in (0, 16, 32, 64):
            padded = np.pad(noisy, pad, mode="reflect") if pad else noisy
            out = denoise_volume(padded[None], model, "US", precision="fp32").denoised[0]
            out = np.clip(out[pad:pad + clean.shape[0], pad:pad + clean.shape[1]], 0, 255)
            print(f"strength {strength}: pad {pad:2d} px  whole %.2f / %.3f  tiles %.2f / %.3f" % scores(clean, out), flush=True)


if __name__ == "__main__":
    main()
