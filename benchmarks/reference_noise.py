"""How much noise a CT reference carries itself (a measurement, not a test).

    python benchmarks/reference_noise.py [data/ct_slices_seven_patients.nii.gz ...] [--pair ../shared/data/real_ldct_pair]

For each slice: the 10th and 25th percentiles of the local standard deviation (9 x 9 window) over
soft tissue (local mean -100..150 HU). Flat tissue sets the low percentiles, so they estimate the
scan's own noise; a reference noisier than the noise added to it cannot score a denoiser.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy.ndimage import uniform_filter


def own_noise_hu(image: np.ndarray, window: int = 9) -> tuple[float, float]:
    image = image.astype(np.float64)
    mean = uniform_filter(image, window)
    std = np.sqrt(np.maximum(uniform_filter(image**2, window) - mean**2, 0))
    tissue = (mean > -100) & (mean < 150)
    return float(np.percentile(std[tissue], 10)), float(np.percentile(std[tissue], 25))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("volumes", nargs="*", type=Path, default=[Path("data/ct_slices_seven_patients.nii.gz")])
    parser.add_argument("--pair", type=Path, default=Path("../shared/data/real_ldct_pair"))
    args = parser.parse_args()
    for path in args.volumes:
        for index, image in enumerate(sitk.GetArrayFromImage(sitk.ReadImage(str(path)))):
            p10, p25 = own_noise_hu(image)
            print(f"{path.name} slice {index}: {p10:.1f} HU (10th percentile), {p25:.1f} HU (25th)")
    full = args.pair / "full_dose_hu.npy"
    if full.is_file():
        p10, p25 = own_noise_hu(np.load(full))
        print(f"real pair, full-dose slice: {p10:.1f} HU (10th percentile), {p25:.1f} HU (25th)")


if __name__ == "__main__":
    main()
