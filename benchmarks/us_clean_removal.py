"""What does an ultrasound model take for noise in an image with no speckle added? Denoise each
ultrasound image of the data folder as it is (the first frame of a cine) and report the standard
deviation of what the model removed, and its PSNR/SSIM against the image itself (160 x 160 content
tiles, the evaluation's US window).

    python benchmarks/us_clean_removal.py [MODEL_ID [MODELS_DIR]]

A model that has learned the speckle it was trained to remove, and not the texture of ultrasound
as such, removes little from every image; one that removes much more from one image than from the
others takes that image's own texture for added speckle.
"""

import sys

import numpy as np

from MedGANDenoiseLib.engine import denoise_volume
from MedGANDenoiseLib.registry import ModelRegistry, load_model
from medgan_training.datasets import load_volume
from medgan_training.evaluate import cut_into_tiles
from medgan_training.metrics import slice_metrics, summarize, window_for

IMAGES = {
    "data/us_logiq_lymph_node.nii.gz": "test (held out)",
    "data/us_still_epiq.nii.gz": "validation",
    "data/us_logiq_sector.nii.gz": "noise_scale calibration",
    "data/us_cine_epiq.nii.gz": "training (frame 0)",
    "data/us_echo_epiq.nii.gz": "training",
    "data/us_affiniti_echo.nii.gz": "training (frame 0)",
    "data/us_aloka_pelvis.nii.gz": "validation",
}


def main() -> None:
    model_id = sys.argv[1] if len(sys.argv) > 1 else "us-unet-w16"
    model = load_model(ModelRegistry.default(sys.argv[2:3]).get(model_id))
    for path, role in IMAGES.items():
        image = load_volume(path)[0][:1].astype(np.float32)
        output = denoise_volume(image, model, "US").denoised
        window = window_for("US", image)
        clean_tiles, output_tiles = cut_into_tiles(160, image, output, source=path)
        tiles = summarize([slice_metrics(o, c, window) for o, c in zip(output_tiles, clean_tiles)])
        print(f"{path} ({role}, {image.shape[1]} x {image.shape[2]}): removed std {float((output - image).std()):.2f} "
              f"grey levels; output against the image: {tiles['psnr']:.2f} dB / SSIM {tiles['ssim']:.3f} "
              f"({len(clean_tiles)} tiles)")


if __name__ == "__main__":
    main()
