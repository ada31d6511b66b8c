"""Which ct_noise settings give the noise power spectrum of real quarter-dose CT noise (a measurement).

    python benchmarks/fit_ct_noise_spectrum.py [--pair ../shared/data/real_ldct_pair]

Simulates noise on the full-dose slice of the shared real pair at the real noise's soft-tissue
level for each kernel, cutoff and `lowfreq` share, and prints the settings sorted by the
normalised L1 distance of their spectrum to the real one (the measure of medgan-evaluate's nps.png).
The real pair is one slice of one scanner: a fit to it says which texture family to train on, not
that every scanner's noise looks like it.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np

from medgan_training.degradations import simulate_ct_noise, soft_tissue_noise_hu
from medgan_training.evaluate import QUARTER_MINUS_FULL_POWER, REAL_PAIR_PIXEL_MM, load_real_ldct_pair
from medgan_training.metrics import noise_power_spectrum


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pair", type=Path, default=Path("../shared/data/real_ldct_pair"))
    parser.add_argument("--top", type=int, default=8)
    args = parser.parse_args()

    quarter, full = (stack[0] for stack in load_real_ldct_pair(args.pair))
    real_noise = (quarter - full) / np.sqrt(QUARTER_MINUS_FULL_POWER)
    level = soft_tissue_noise_hu(full + real_noise, full)
    _, real_power = noise_power_spectrum(real_noise, full)
    real_power /= real_power.sum()
    results = []
    settings = itertools.product(("hann", "cosine", "shepp-logan"), (0.7, 0.8, 0.85, 0.9, 1.0), (0.0, 0.1, 0.2, 0.3))
    for kernel, cutoff, lowfreq in settings:
        noisy = simulate_ct_noise(full, level, kernel=kernel, cutoff=cutoff, lowfreq=lowfreq,
                                  pixel_size_mm=REAL_PAIR_PIXEL_MM, rng=np.random.default_rng(0))
        _, power = noise_power_spectrum(noisy - full, full)
        distance = float(np.abs(power / power.sum() - real_power).sum())
        results.append((distance, f"kernel={kernel},cutoff={cutoff:g},lowfreq={lowfreq:g}"))
    print(f"real quarter-dose noise: {level:.1f} HU in soft tissue")
    for distance, spec in sorted(results)[: args.top]:
        print(f"{distance:.3f}  ct_noise:{spec}")


if __name__ == "__main__":
    main()
