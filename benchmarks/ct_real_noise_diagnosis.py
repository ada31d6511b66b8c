"""Why the CT models fall short on real quarter-dose noise (a measurement, not a test).

    python benchmarks/ct_real_noise_diagnosis.py [--pair ../shared/data/real_ldct_pair] [--model ct-unet-w32]

On the shared real pair's full-dose slice, the model's PSNR gain for: the real quarter-dose noise;
that noise phase-randomised inside the body (its exact power spectrum, made stationary); the
simulator's noise at the real level for a few kernels, and with tube current modulation and a
bowtie filter (`ct_noise:tcm=,bowtie=`). For each noise, how it spreads over the body: the
coefficient of variation of its local standard deviation (Gaussian window, 12 pixels), the ratio
of its horizontal to vertical pixel differences (streaks) and the correlation of its local
standard deviation map with the real noise's. Then the real slice denoised as it is and averaged
over its 8 flips and rotations (the engine's self-ensemble, `ensemble=8`). One slice of one
scanner: read the differences, not the levels.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

from MedGANDenoiseLib.engine import denoise_volume
from MedGANDenoiseLib.registry import ModelRegistry, load_model
from medgan_training.degradations import simulate_ct_noise, soft_tissue_noise_hu
from medgan_training.evaluate import REAL_PAIR_PIXEL_MM, load_real_ldct_pair
from medgan_training.metrics import slice_metrics, window_for


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pair", type=Path, default=Path("../shared/data/real_ldct_pair"))
    parser.add_argument("--model", default="ct-unet-w32")
    args = parser.parse_args()

    quarter, full = (stack[0] for stack in load_real_ldct_pair(args.pair))
    window = window_for("CT", full)
    model = load_model(ModelRegistry.default().get(args.model))
    denoise = lambda image: denoise_volume(np.ascontiguousarray(image), model, "CT", device="cpu", precision="fp32").denoised

    real_noise = quarter - full
    inside = gaussian_filter((full > -500).astype(np.float32), 2) > 0.99
    local_std = lambda noise: np.sqrt(gaussian_filter(noise.astype(np.float64) ** 2, 12))[inside]
    real_map = local_std(real_noise)

    def report(label: str, noisy: np.ndarray) -> None:
        before, after = slice_metrics(noisy, full, window)["psnr"], slice_metrics(denoise(noisy), full, window)["psnr"]
        noise = noisy - full
        spread = local_std(noise)
        across = np.diff(noise, axis=1)[inside[:, 1:] & inside[:, :-1]].std() / np.diff(noise, axis=0)[inside[1:] & inside[:-1]].std()
        print(f"{label:52s} input {before:.2f} dB, {args.model} {after:.2f} dB, gain {after - before:.2f} dB; "
              f"local std CV {spread.std() / spread.mean():.3f}, x/y differences {across:.3f}, "
              f"map correlation {np.corrcoef(spread, real_map)[0, 1]:.3f}")

    level = soft_tissue_noise_hu(quarter, full)
    report("real quarter-dose noise", quarter)
    body = full > -500
    phases = np.exp(1j * np.angle(np.fft.fft2(np.random.default_rng(0).standard_normal(full.shape))))
    randomised = np.real(np.fft.ifft2(np.abs(np.fft.fft2(real_noise)) * phases))
    randomised *= real_noise[body].std() / randomised[body].std()
    report("real noise, phase-randomised in the body", np.where(body, full + randomised, quarter).astype(np.float32))
    for kernel, cutoff in (("hann", 1.0), ("cosine", 0.85), ("hann", 0.7), ("sharp", 1.0)):
        noisy = simulate_ct_noise(full, level, kernel=kernel, cutoff=cutoff, pixel_size_mm=REAL_PAIR_PIXEL_MM,
                                  rng=np.random.default_rng(1))
        report(f"simulated {kernel}, cutoff {cutoff:g}, {level:.1f} HU", noisy)
    for tcm, bowtie in ((1.0, 0.0), (0.0, 3.0), (1.0, 3.0)):
        noisy = simulate_ct_noise(full, level, kernel="hann", pixel_size_mm=REAL_PAIR_PIXEL_MM, rng=np.random.default_rng(1),
                                  tube_current_modulation=tcm, bowtie=bowtie)
        report(f"simulated hann, tcm {tcm:g}, bowtie {bowtie:g}, {level:.1f} HU", noisy)

    single, averaged = (slice_metrics(denoise_volume(quarter, model, "CT", device="cpu", precision="fp32", ensemble=n).denoised,
                                      full, window) for n in (1, 8))
    print(f"real slice: {single['psnr']:.2f} dB / {single['ssim']:.4f}; "
          f"averaged over 8 flips and rotations: {averaged['psnr']:.2f} dB / {averaged['ssim']:.4f}")


if __name__ == "__main__":
    main()
