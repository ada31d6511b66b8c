"""The main job: fetch a real CT, denoise it with the shipped weights, show and measure the result.

    python -m medgan_training.demo [--data data] [--out output/demo] [--dose 0.25]

Fetches the real head CT (Debian package invesalius-examples) into the data cache, takes the
held-out slab the shipped model never saw in training, simulates a low-dose scan of it in the
projection domain, denoises it with the shipped CT model through the same engine the Slicer
module and the command-line tool use, writes the low-dose, denoised and noise volumes (NIfTI,
with the scan's geometry) and a side-by-side PNG, and prints the time, the device and PSNR/SSIM
against the full-dose reference. When ../shared/data/real_ldct_pair exists it also denoises that
real quarter-dose slice.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from MedGANDenoiseLib.engine import denoise_volume, estimate_noise_sigma
from MedGANDenoiseLib.registry import ModelRegistry, load_model

from .data_fetch import fetch
from .degradations import make_degradation
from .evaluate import comparison_figure, load_real_ldct_pair
from .metrics import format_summary, slice_metrics, summarize, window_for

REAL_PAIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "real_ldct_pair"


def write_volume(array: np.ndarray, reference: sitk.Image, path: Path) -> None:
    image = sitk.GetImageFromArray(array.astype(np.float32))
    image.SetSpacing(reference.GetSpacing())
    image.SetOrigin(reference.GetOrigin())
    image.SetDirection(reference.GetDirection())
    sitk.WriteImage(image, str(path))


def held_out_slab(card, num_slices: int) -> slice:
    """The validation slab the shipped model was selected on (never trained on); for a model
    without that record, the last 16 slices."""
    scans = card.training.get("data", {}).get("scans", [])
    first = scans[0].get("val_slices", "") if scans else ""
    if isinstance(first, str) and "-" in first:
        start, stop = (int(v) for v in first.split("-"))
        return slice(start, stop + 1)
    return slice(max(0, num_slices - 16), num_slices)


def run(data: Path, out: Path, dose: float, variant: str, device: str, seed: int) -> int:
    paths = fetch(["ct_head"], data)
    if "ct_head" not in paths:
        print("demo: the real head CT could not be fetched (see above); nothing to denoise", file=sys.stderr)
        return 1
    registry = ModelRegistry.default()
    card = registry.find("CT", variant)
    model = load_model(card)
    scan = sitk.ReadImage(str(paths["ct_head"]))
    full_dose = sitk.GetArrayFromImage(scan).astype(np.float32)
    slab = held_out_slab(card, len(full_dose))
    clean = full_dose[slab]
    degrade = make_degradation(f"ct_low_dose:dose={dose}")
    rng = np.random.default_rng(seed)
    spacing = scan.GetSpacing()
    print(f"simulating {dose:.0%} dose for slices {slab.start}-{slab.stop - 1} of {paths['ct_head'].name} "
          f"(projection domain, {clean.shape[1]}x{clean.shape[2]} pixels of {spacing[0]:.2f} mm)")
    low_dose = np.stack([degrade(s, rng, pixel_size_mm=spacing[0]) for s in clean])

    started = time.perf_counter()
    result = denoise_volume(low_dose, model, "CT", device=device)
    elapsed = time.perf_counter() - started

    out.mkdir(parents=True, exist_ok=True)
    reference = scan[:, :, slab.start : slab.stop]
    for name, array in (("low_dose", low_dose), ("denoised", result.denoised), ("noise", result.noise), ("full_dose", clean)):
        write_volume(array, reference, out / f"ct_head_{name}.nii.gz")
    window = window_for("CT", clean)
    before = summarize([slice_metrics(n, c, window) for n, c in zip(low_dose, clean)])
    after = summarize([slice_metrics(d, c, window) for d, c in zip(result.denoised, clean)])
    comparison_figure(out / "ct_head_side_by_side.png", {"low dose": low_dose, f"denoised ({card.id})": result.denoised},
                      clean, window, len(clean) // 2, {"low dose": before, f"denoised ({card.id})": after})
    print(f"model {card.id}: {len(clean)} slices denoised on {result.device} in {elapsed:.2f} s "
          f"({elapsed / len(clean):.3f} s per slice)")
    print(f"noise sigma (robust estimate): {estimate_noise_sigma(low_dose):.1f} HU before, {estimate_noise_sigma(result.denoised):.1f} HU after")
    print(f"low dose vs full dose: {format_summary(before, window, 'HU')}")
    print(f"denoised vs full dose: {format_summary(after, window, 'HU')}")

    if REAL_PAIR.is_dir():
        quarter, full = load_real_ldct_pair(REAL_PAIR)
        real = denoise_volume(quarter, model, "CT", device=device)
        real_before = summarize([slice_metrics(quarter[0], full[0], window)])
        real_after = summarize([slice_metrics(real.denoised[0], full[0], window)])
        comparison_figure(out / "real_quarter_dose_side_by_side.png",
                          {"real quarter dose": quarter, f"denoised ({card.id})": real.denoised}, full, window, 0,
                          {"real quarter dose": real_before, f"denoised ({card.id})": real_after})
        print(f"real quarter-dose body CT slice (AAPM-Mayo): {real_before['psnr']:.2f} dB / SSIM {real_before['ssim']:.4f} -> "
              f"{real_after['psnr']:.2f} dB / SSIM {real_after['ssim']:.4f} (window [-160, 240] HU)")
    else:
        print(f"no real low-dose pair at {REAL_PAIR}: that check is skipped")
    print(f"wrote {', '.join(sorted(p.name for p in out.iterdir()))} to {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="medgan-demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data"), help="the data cache folder")
    parser.add_argument("--out", type=Path, default=Path("output/demo"))
    parser.add_argument("--dose", type=float, default=0.25, help="simulated dose fraction")
    parser.add_argument("--variant", default="unet")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args(argv)
    return run(args.data, args.out, args.dose, args.variant, args.device, args.seed)


if __name__ == "__main__":
    sys.exit(main())
