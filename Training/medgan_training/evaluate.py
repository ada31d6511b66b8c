"""Compare the project's models with classical denoisers on the same slices, window and range.

    medgan-evaluate --clean data/ct_head_cranium.nii.gz --modality CT \
        --degradation "ct_low_dose:dose=0.25" --slices 92:108 --out runs/eval_ct
    medgan-evaluate --real-ldct-pair ../shared/data/real_ldct_pair --out runs/eval_real

Methods: the noisy input, BM3D and non-local means with the noise sigma estimated from the
image (scikit-image) and with the true ("oracle") sigma, total variation (scikit-image), curvature anisotropic diffusion (SimpleITK: what Slicer offers built in), and
every registered model of the modality (or those named with --models). Writes a Markdown and
a JSON table (mean +- std PSNR, SSIM, RMSE, bias over slices) and a comparison figure.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from MedGANDenoiseLib.engine import denoise_volume
from MedGANDenoiseLib.registry import ModelRegistry, load_model, normalize_modality

from .metrics import Window, format_summary, slice_metrics, summarize, window_for

Denoiser = Callable[[np.ndarray, float], np.ndarray]

# Classical denoisers work on intensities scaled to about [0, 1], the same scale for every slice
# of a scan: CT by the fixed HU map, other modalities by the clean slab's robust maximum.
CT_OFFSET, CT_SCALE = -1024.0, 4096.0


def estimated_sigma(image: np.ndarray) -> float:
    """scikit-image's wavelet estimate. It sees the finest scale only, so it underestimates
    spatially correlated noise such as CT noise after a smooth reconstruction kernel."""
    from skimage.restoration import estimate_sigma

    return float(estimate_sigma(image))


def oracle_sigma(noisy: np.ndarray, clean: np.ndarray) -> float:
    """The true noise level (robust std of noisy - clean): the best case for a classical method."""
    difference = (noisy - clean).ravel()
    return float(1.4826 * np.median(np.abs(difference - np.median(difference))))


def bm3d_denoiser(image: np.ndarray, sigma: float) -> np.ndarray:
    import bm3d

    return np.asarray(bm3d.bm3d(image, sigma_psd=sigma), dtype=np.float32)


def nlm_denoiser(image: np.ndarray, sigma: float) -> np.ndarray:
    from skimage.restoration import denoise_nl_means

    return denoise_nl_means(image, h=0.8 * sigma, sigma=sigma, patch_size=5, patch_distance=6, fast_mode=True).astype(np.float32)


def tv_denoiser(image: np.ndarray, sigma: float) -> np.ndarray:
    from skimage.restoration import denoise_tv_chambolle

    return denoise_tv_chambolle(image, weight=2.0 * sigma).astype(np.float32)


def anisotropic_diffusion_denoiser(image: np.ndarray, sigma: float) -> np.ndarray:
    import SimpleITK as sitk

    filtered = sitk.CurvatureAnisotropicDiffusion(sitk.GetImageFromArray(image.astype(np.float32)),
                                                  timeStep=0.0625, conductanceParameter=3.0, numberOfIterations=5)
    return sitk.GetArrayFromImage(filtered)


# name -> (denoiser(image, sigma), which sigma it is given)
CLASSICAL: dict[str, tuple[Denoiser, str]] = {
    "BM3D (estimated sigma)": (bm3d_denoiser, "estimated"),
    "BM3D (oracle sigma)": (bm3d_denoiser, "oracle"),
    "non-local means (estimated sigma)": (nlm_denoiser, "estimated"),
    "non-local means (oracle sigma)": (nlm_denoiser, "oracle"),
    "total variation (oracle sigma)": (tv_denoiser, "oracle"),
    "curvature anisotropic diffusion": (anisotropic_diffusion_denoiser, "none"),
}


def scale_for(modality: str, clean: np.ndarray) -> tuple[float, float]:
    if modality == "CT":
        return CT_OFFSET, CT_SCALE
    return 0.0, float(np.percentile(clean, 99.5)) or 1.0


def evaluate(
    noisy: np.ndarray,
    clean: np.ndarray,
    modality: str,
    *,
    models: list[str] | None = None,
    models_dirs: tuple[str, ...] = (),
    classical: tuple[str, ...] = tuple(CLASSICAL),
    device: str = "auto",
) -> tuple[dict[str, dict], dict[str, np.ndarray], Window]:
    """Metrics per method on a (slices, H, W) stack; returns (summaries, outputs, window)."""
    modality = normalize_modality(modality)
    window = window_for(modality, clean)
    offset, scale = scale_for(modality, clean)
    outputs: dict[str, np.ndarray] = {"noisy input": noisy.astype(np.float32)}
    timings: dict[str, float] = {"noisy input": 0.0}
    for name in classical:
        denoiser, sigma_kind = CLASSICAL[name]
        started = time.perf_counter()
        denoised = []
        for noisy_slice, clean_slice in zip(noisy, clean):
            scaled = (noisy_slice - offset) / scale
            sigma = oracle_sigma(scaled, (clean_slice - offset) / scale) if sigma_kind == "oracle" else estimated_sigma(scaled)
            denoised.append(denoiser(scaled, sigma) * scale + offset)
        outputs[name] = np.stack(denoised).astype(np.float32)
        timings[name] = (time.perf_counter() - started) / len(noisy)
    registry = ModelRegistry.default(models_dirs)
    cards = [registry.get(m) for m in models] if models else [c for c in registry.models() if c.modality == modality]
    for card in cards:
        model = load_model(card)
        result = denoise_volume(noisy, model, modality, device=device)
        outputs[f"model {card.id}"] = result.denoised
        timings[f"model {card.id}"] = result.seconds / len(noisy)
    summaries = {}
    for name, stack in outputs.items():
        summary = summarize([slice_metrics(o, c, window) for o, c in zip(stack, clean)])
        summary["seconds_per_slice"] = timings[name]
        summaries[name] = summary
    return summaries, outputs, window


def markdown_table(summaries: dict[str, dict], window: Window, unit: str) -> str:
    lines = [f"Window {window.label(unit)} (data range {window.data_range:g}); mean +- std over "
             f"{int(next(iter(summaries.values()))['slices'])} slices.", "",
             "| method | PSNR (dB) | SSIM | RMSE | bias | s/slice |", "|---|---|---|---|---|---|"]
    for name, s in summaries.items():
        lines.append(f"| {name} | {s['psnr']:.2f} +- {s['psnr_std']:.2f} | {s['ssim']:.4f} +- {s['ssim_std']:.4f} | "
                     f"{s['rmse']:.2f} +- {s['rmse_std']:.2f} | {s['bias']:+.2f} | {s['seconds_per_slice']:.2f} |")
    return "\n".join(lines) + "\n"


def comparison_figure(path: Path, outputs: dict[str, np.ndarray], clean: np.ndarray, window: Window, index: int, summaries) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("clean reference", clean[index], None)] + [(n, o[index], summaries[n]) for n, o in outputs.items()]
    columns = min(4, len(panels))
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 4.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (name, image, summary) in zip(axes.flat, panels):
        ax.imshow(image, cmap="gray", vmin=window.low, vmax=window.high)
        ax.set_title(name if summary is None else f"{name}\n{summary['psnr']:.2f} dB, SSIM {summary['ssim']:.3f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def load_real_ldct_pair(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """The shared quarter-dose / full-dose slice pair, as (1, H, W) stacks in HU."""
    return np.load(folder / "quarter_dose_hu.npy")[None].astype(np.float32), np.load(folder / "full_dose_hu.npy")[None].astype(np.float32)


def simulated_stack(clean_path: str, degradation: str, slices: str, seed: int, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Held-out clean slices of a scan and their degraded versions (fixed seed)."""
    from .datasets import load_volume
    from .degradations import make_degradation

    volume, spacing = load_volume(clean_path)
    volume = np.moveaxis(volume, axis, 0)
    start, stop = (int(v) if v else None for v in slices.split(":"))
    clean = volume[start:stop].astype(np.float32)
    degrade = make_degradation(degradation)
    rng = np.random.default_rng(seed)
    in_plane = [s for i, s in enumerate(reversed(spacing)) if i != axis]
    noisy = np.stack([degrade(s, rng, pixel_size_mm=float(in_plane[0])) for s in clean]).astype(np.float32)
    return noisy, clean


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="medgan-evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--clean", help="a clean scan; held-out slices are degraded with --degradation")
    source.add_argument("--real-ldct-pair", type=Path, help="folder with quarter_dose_hu.npy and full_dose_hu.npy")
    parser.add_argument("--modality", default="CT")
    parser.add_argument("--degradation", default="ct_low_dose:dose=0.25")
    parser.add_argument("--slices", default="-16:", help="python slice of the held-out slices along --axis (default: last 16)")
    parser.add_argument("--axis", type=int, default=0)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--models", nargs="*", help="model ids (default: every model of the modality)")
    parser.add_argument("--models-dir", action="append", default=[], help="a folder of your own models (repeatable)")
    parser.add_argument("--no-classical", action="store_true", help="skip the classical baselines")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=Path("runs/evaluate"))
    args = parser.parse_args(argv)
    try:
        if args.real_ldct_pair:
            modality = "CT"
            noisy, clean = load_real_ldct_pair(args.real_ldct_pair)
        else:
            modality = normalize_modality(args.modality)
            noisy, clean = simulated_stack(args.clean, args.degradation, args.slices, args.seed, args.axis)
        summaries, outputs, window = evaluate(noisy, clean, modality, models=args.models, models_dirs=tuple(args.models_dir),
                                              classical=() if args.no_classical else tuple(CLASSICAL), device=args.device)
    except (ValueError, OSError) as error:
        print(f"medgan-evaluate: error: {error}", file=sys.stderr)
        return 2
    unit = "HU" if modality == "CT" else ""
    args.out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(summaries, window, unit)
    (args.out / "table.md").write_text(table)
    (args.out / "metrics.json").write_text(json.dumps({"window": window.label(unit), "methods": summaries}, indent=2))
    comparison_figure(args.out / "comparison.png", outputs, clean, window, len(clean) // 2, summaries)
    print(table)
    for name, summary in summaries.items():
        print(f"{name}: {format_summary(summary, window, unit)}")
    print(f"wrote {args.out / 'table.md'}, {args.out / 'metrics.json'}, {args.out / 'comparison.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
