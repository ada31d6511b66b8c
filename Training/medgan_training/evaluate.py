"""Compare the project's models with the classical denoisers on the same slices, window and range.

    medgan-evaluate --clean data/ct_head_cranium.nii.gz --degradation "ct_noise:hu=25,kernel=hann" --slices 55:71 --out output/evaluate/head
    medgan-evaluate --real-ldct-pair ../shared/data/real_ldct_pair --out output/evaluate/real_pair
    medgan-evaluate --real-ldct-pair ../shared/data/real_ldct_pair --methods noisy,bm3d-oracle,cad,model --model ID

Methods (--methods, comma-separated; default all):
  noisy        the noisy input
  bm3d-oracle  BM3D, sigma tuned on the clean reference (*)
  bm3d         BM3D, sigma estimated from the image (scikit-image's wavelet estimate)
  nlm-oracle   scikit-image non-local means (fast mode), sigma tuned on the reference (*)
  nlm          non-local means, estimated sigma
  tv-oracle    total variation (scikit-image Chambolle), weight tuned on the reference (*)
  cad          curvature anisotropic diffusion at Slicer's module defaults (SimpleITK)
  gad          gradient anisotropic diffusion at Slicer's module defaults (SimpleITK)
  cad-oracle   curvature anisotropic diffusion, conductance and iterations tuned on the reference (*)
  model        the models (--model ID, repeatable; default every registered model of the modality),
               with each generator branch on its own (content c and x - n) unless --no-branches
(*) an oracle: tuned for the best PSNR against the clean reference, which a user does not have.
The tuning runs on central crops of a few slices (of every slice, each for itself, with
--tune-per-slice: for a stack of slices of different scans); see medgan_training/baselines.py.

Writes table.md (mean +- std PSNR, SSIM, RMSE and bias over slices, seconds per slice; PSNR and
SSIM on each slice for up to 12 slices),
metrics.json and comparison.png to --out (default output/evaluate). CT is measured at the
[-160, 240] HU window (data range 400). With --real-ldct-pair it also writes nps.png: the noise
power spectrum of the real quarter-dose noise against the simulator's for each reconstruction
kernel, and prints the L1 distance between the normalised spectra.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from MedGANDenoiseLib.engine import CT_PADDING_BELOW_HU, ENSEMBLE_SIZES, denoise_volume, inference_copy, resolve_device
from MedGANDenoiseLib.normalization import NormalizationParams, Normalizer
from MedGANDenoiseLib.registry import LoadedModel, ModelRegistry, load_model, normalize_modality

from .baselines import BASELINES, ORACLE_NOTE, Scaling
from .metrics import Window, format_summary, noise_power_spectrum, slice_metrics, summarize, window_for

METHODS = ("noisy", *BASELINES, "model")
# The real pair's noise: quarter-dose noise power is 4x the full-dose image's, so the difference
# quarter - full holds 1.25x the quarter-dose noise power.
QUARTER_MINUS_FULL_POWER = 1.25
REAL_PAIR_PIXEL_MM = 0.7  # AAPM-Mayo abdominal slices are reconstructed at about 0.66-0.70 mm


def scaling_for(modality: str, clean: np.ndarray) -> Scaling:
    """The classical filters' ~[0, 1] scale: CT by the fixed HU map of the models, other
    modalities by the clean stack's robust maximum (the same for every slice)."""
    if modality == "CT":
        return Scaling(-1024.0, 4096.0)
    return Scaling(0.0, float(np.percentile(clean, 99.5)) or 1.0)


def parse_methods(text: str | list[str] | None) -> tuple[str, ...]:
    """'noisy,bm3d-oracle' (or a list of such) -> the keys in table order; ValueError on unknown."""
    if not text:
        return METHODS
    items = [text] if isinstance(text, str) else list(text)
    chosen = {m.strip().lower() for item in items for m in item.split(",") if m.strip()}
    unknown = sorted(chosen - set(METHODS))
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    return tuple(m for m in METHODS if m in chosen)


def model_branches(model: LoadedModel, noisy: np.ndarray, device: str = "auto",
                   normalization: NormalizationParams | None = None) -> dict[str, np.ndarray]:
    """Each generator branch on its own, in fp32 on whole slices: the content estimate c and the
    second estimate x - n, in the input's units (CT padding shown as air, as the engine does).
    The normalisation is fitted on `noisy` unless given, as in denoise_volume."""
    import torch

    normalizer = Normalizer.from_dict(model.card.normalization)
    params = normalization if normalization is not None else normalizer.fit(noisy)
    torch_device = resolve_device(device)
    generator = inference_copy(model.generator, torch_device)
    network_input = noisy
    if model.card.modality == "CT":
        network_input = np.where(noisy < CT_PADDING_BELOW_HU, np.float32(-1024.0), noisy)
    branches: dict[str, list[np.ndarray]] = {"content branch c": [], "x - n branch": []}
    with torch.inference_mode():
        for image in network_input:
            x = torch.from_numpy(normalizer.forward(image[None, None], params)).to(torch_device)
            _, content, noise = generator(x)
            branches["content branch c"].append(normalizer.inverse(content.float().cpu().numpy()[0, 0], params))
            branches["x - n branch"].append(normalizer.inverse((x - noise).float().cpu().numpy()[0, 0], params))
    return {name: np.stack(values).astype(np.float32) for name, values in branches.items()}


def evaluate(
    noisy: np.ndarray,
    clean: np.ndarray,
    modality: str,
    *,
    methods: tuple[str, ...] = METHODS,
    models: list[str] | None = None,
    models_dirs: tuple[str, ...] = (),
    branches: bool = True,
    device: str = "auto",
    tune_slices: int = 3,
    tune_crop: int = 256,
    tune_per_slice: bool = False,
    strength: float = 1.0,
    ensemble: int = 1,
    log=print,
) -> tuple[dict[str, dict], dict[str, np.ndarray], Window]:
    """Metrics per method on a (slices, H, W) stack; returns (summaries, outputs, window). The
    models remove `strength` of their estimated noise, averaged over `ensemble` flips and rotations
    of each slice (their branch rows are always whole and single-pass).
    Each summary holds mean and std of PSNR, SSIM, RMSE and bias, their values per slice
    (per_slice), seconds_per_slice, setting and, for oracle-tuned baselines, oracle=True and the
    search's details (tuned on a few slices, or on each with `tune_per_slice`)."""
    modality = normalize_modality(modality)
    window = window_for(modality, clean)
    scaling = scaling_for(modality, clean)
    outputs: dict[str, np.ndarray] = {}
    extra: dict[str, dict] = {}
    if "noisy" in methods:
        outputs["noisy input"] = noisy.astype(np.float32)
        extra["noisy input"] = {"seconds_per_slice": 0.0, "setting": "", "oracle": False}
    for key in (m for m in methods if m in BASELINES):
        baseline = BASELINES[key]
        log(f"{baseline.label} ...")
        run = baseline.run(noisy, clean, scaling, window, tune_slices=tune_slices, tune_crop=tune_crop,
                           per_slice=tune_per_slice)
        outputs[baseline.label] = run.denoised
        extra[baseline.label] = {"method": key, "seconds_per_slice": run.seconds_per_slice, "setting": run.setting,
                                 "oracle": baseline.oracle, "details": run.details}
    if "model" in methods:
        registry = ModelRegistry.default(models_dirs)
        cards = [registry.get(m) for m in models] if models else [c for c in registry.models() if c.modality == modality]
        for card in cards:
            log(f"model {card.id} ...")
            model = load_model(card)
            result = denoise_volume(noisy, model, modality, device=device, strength=strength, ensemble=ensemble)
            base = f"model {card.id}"
            name = base + (f", strength {strength:g}" if strength != 1.0 else "") + (f", self-ensemble x{ensemble}" if ensemble > 1 else "")
            outputs[name] = result.denoised
            extra[name] = {"method": "model", "seconds_per_slice": result.seconds / len(noisy), "oracle": False,
                           "setting": f"{card.variant}, {result.precision} on {result.device}"
                                      + (f", removes {card.noise_scale:g} of its estimate" if card.noise_scale != 1.0 else ""),
                           "strength": strength, "noise_scale": card.noise_scale,
                           "ensemble": ensemble}
            if branches and card.architecture.get("mode", "both") == "both":
                for branch, stack in model_branches(model, noisy, device).items():
                    outputs[f"{base}: {branch}"] = stack
                    extra[f"{base}: {branch}"] = {"method": "model branch", "seconds_per_slice": None,
                                                  "setting": "fp32, one branch alone", "oracle": False}
    summaries = {}
    for name, stack in outputs.items():
        per_slice = [slice_metrics(o, c, window) for o, c in zip(stack, clean)]
        summaries[name] = {**summarize(per_slice), **extra[name],
                           "per_slice": {key: [m[key] for m in per_slice] for key in per_slice[0]}}
    return summaries, outputs, window


def markdown_table(summaries: dict[str, dict], window: Window, unit: str) -> str:
    """The table: one row per method, mean +- std over slices, the setting it used, s/slice."""
    slices = int(next(iter(summaries.values()))["slices"])
    units = f" ({unit})" if unit else ""
    lines = [f"Window {window.label(unit)} (data range {window.data_range:g}); mean +- std over {slices} slice"
             f"{'s' if slices != 1 else ''}.", "",
             f"| method | setting | PSNR (dB) | SSIM | RMSE{units} | bias{units} | s/slice |",
             "|---|---|---|---|---|---|---|"]
    for name, s in summaries.items():
        seconds = "" if s["seconds_per_slice"] is None else f"{s['seconds_per_slice']:.2f}"
        lines.append(f"| {name} | {s.get('setting', '')} | {s['psnr']:.2f} +- {s['psnr_std']:.2f} | "
                     f"{s['ssim']:.4f} +- {s['ssim_std']:.4f} | {s['rmse']:.2f} +- {s['rmse_std']:.2f} | "
                     f"{s['bias']:+.2f} +- {s['bias_std']:.2f} | {seconds} |")
    if any(s.get("oracle") for s in summaries.values()):
        lines += ["", f"(*) {ORACLE_NOTE}: an upper bound for that filter, not what a user gets. The search ran on "
                      "central crops of a few slices (or of each slice for that slice); s/slice is the time to apply the chosen setting. Sigmas and "
                      "weights are in the image's units (HU for CT), averaged over slices."]
    return "\n".join(lines) + "\n"


def per_slice_table(summaries: dict[str, dict], at_most: int = 12) -> str:
    """PSNR / SSIM of each method on each slice (empty for one slice or more than `at_most`):
    where the slices come from different scans, their mean hides which scan each method loses on."""
    slices = int(next(iter(summaries.values()))["slices"])
    if not 1 < slices <= at_most:
        return ""
    lines = ["PSNR (dB) / SSIM on each slice:", "",
             "| method | " + " | ".join(f"slice {i}" for i in range(slices)) + " |",
             "|---|" + "---|" * slices]
    for name, s in summaries.items():
        cells = (f"{p:.2f} / {q:.3f}" for p, q in zip(s["per_slice"]["psnr"], s["per_slice"]["ssim"]))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
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


def noise_spectra(quarter: np.ndarray, full: np.ndarray, *, kernels: tuple[str, ...] | None = None,
                  pixel_size_mm: float = REAL_PAIR_PIXEL_MM, seed: int = 0, roi: int = 32) -> dict:
    """The noise power spectrum of the real quarter-dose noise, (quarter - full) / sqrt(1.25), and
    of the simulator's noise (simulate_ct_noise on the full-dose slice at the real noise's
    soft-tissue level) for each reconstruction kernel; with the L1 distance of each normalised
    (unit-sum) simulated spectrum to the normalised real one."""
    from .degradations import CT_KERNELS, simulate_ct_noise, soft_tissue_noise_hu

    real_noise = (quarter - full) / np.sqrt(QUARTER_MINUS_FULL_POWER)
    noise_hu = soft_tissue_noise_hu(full + real_noise, full)
    frequency, real_power = noise_power_spectrum(real_noise, full, roi=roi)
    result = {"frequency": frequency.tolist(), "noise_hu": noise_hu, "real": real_power.tolist(), "kernels": {}}
    for kernel in kernels or CT_KERNELS:
        simulated = simulate_ct_noise(full, noise_hu, kernel=kernel, pixel_size_mm=pixel_size_mm,
                                      rng=np.random.default_rng(seed)) - full
        _, power = noise_power_spectrum(simulated, full, roi=roi)
        distance = float(np.abs(power / power.sum() - real_power / real_power.sum()).sum())
        result["kernels"][kernel] = {"power": power.tolist(), "l1": distance}
    return result


def nps_figure(path: Path, spectra: dict) -> None:
    """Absolute and normalised noise power spectra, real against each simulated kernel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frequency = np.asarray(spectra["frequency"])
    real = np.asarray(spectra["real"])
    fig, (absolute, shape) = plt.subplots(1, 2, figsize=(11, 4.2))
    absolute.plot(frequency, real, "k-", lw=2.5, label="real quarter-dose noise")
    shape.plot(frequency, real / real.sum(), "k-", lw=2.5, label="real quarter-dose noise")
    for kernel, entry in spectra["kernels"].items():
        power = np.asarray(entry["power"])
        absolute.plot(frequency, power, "--", label=f"simulated, {kernel}")
        shape.plot(frequency, power / power.sum(), "--", label=f"simulated, {kernel} (L1 {entry['l1']:.3f})")
    absolute.set(xlabel="spatial frequency (cycles/pixel)", ylabel="NPS (HU$^2$ pixel$^2$)",
                 title=f"noise power spectrum, soft tissue ({spectra['noise_hu']:.1f} HU)")
    shape.set(xlabel="spatial frequency (cycles/pixel)", ylabel="normalised NPS (sum 1)", title="shape")
    for ax in (absolute, shape):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def simulated_stack(clean_path: str, degradation: str, slices: str, seed: int, axis: int = 0,
                    tile: int = 0, draws: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Held-out clean slices of a scan and their degraded versions (fixed seed). With draws > 1 the
    slices are degraded that many times, with seeds seed, seed + 1, ..., and the stacks follow one
    another (draw 0 first): a mean over noise realisations as well as over slices. With `tile`, each
    slice is degraded whole and then cut into non-overlapping tile x tile squares that become the
    slices: a large 2-D X-ray or ultrasound image gives a mean +- std over its regions. Tiles
    without image content (clean standard deviation under 1 % of the image's 0.5-99.5 percentile
    range: a detector's saturated background, the black outside an ultrasound sector) are left
    out: PSNR on a constant patch measures nothing (it is infinite where a filter returns it)."""
    from .datasets import load_volume
    from .degradations import make_degradation

    volume, spacing = load_volume(clean_path)
    volume = np.moveaxis(volume, axis, 0)
    parts = slices.split(":")
    if not 1 <= len(parts) <= 3:
        raise ValueError(f"--slices {slices}: give a Python slice such as 55:71 or 68:88:3")
    clean = volume[slice(*(int(v) if v else None for v in parts))].astype(np.float32)
    if not len(clean):
        raise ValueError(f"--slices {slices} selects no slice of {clean_path} ({volume.shape[0]} slices along axis {axis})")
    if draws < 1:
        raise ValueError(f"--draws must be at least 1, got {draws}")
    degrade = make_degradation(degradation)
    in_plane = [s for i, s in enumerate(reversed(spacing)) if i != axis]
    noisy = []
    for draw in range(draws):
        rng = np.random.default_rng(seed + draw)
        noisy.extend(degrade(s, rng, pixel_size_mm=float(in_plane[0])) for s in clean)
    noisy = np.stack(noisy).astype(np.float32)
    clean = np.concatenate([clean] * draws)
    if tile:
        clean, noisy = cut_into_tiles(tile, clean, noisy, source=clean_path)
    return noisy, clean


def cut_into_tiles(tile: int, clean: np.ndarray, *stacks: np.ndarray, source: str = "the image") -> tuple[np.ndarray, ...]:
    """`clean` and each stack of the same shape cut into the same non-overlapping tile x tile squares,
    keeping the tiles whose clean standard deviation is at least 1 % of the clean 0.5-99.5 percentile
    range (see simulated_stack). Returns (clean tiles, *stack tiles)."""
    height, width = clean.shape[1:]
    if tile > min(height, width):
        raise ValueError(f"--tile {tile} is larger than the {height} x {width} slices")
    corners = [(r, c) for r in range(0, height - tile + 1, tile) for c in range(0, width - tile + 1, tile)]
    cut = lambda stack: np.stack([s[r : r + tile, c : c + tile] for s in stack for r, c in corners])
    low, high = np.percentile(clean, [0.5, 99.5])
    clean_tiles = cut(clean)
    content = clean_tiles.reshape(len(clean_tiles), -1).std(axis=1) > 0.01 * (high - low)
    if not content.any():
        raise ValueError(f"no {tile} x {tile} tile of {source} holds image content")
    return (clean_tiles[content], *(cut(stack)[content] for stack in stacks))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="medgan-evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--clean", help="A clean scan; its held-out slices (--slices) are degraded with --degradation.")
    source.add_argument("--real-ldct-pair", type=Path, help="A folder with quarter_dose_hu.npy and full_dose_hu.npy (real CT noise).")
    parser.add_argument("--modality", default="CT", help="Modality of --clean (sets the window and the models).")
    parser.add_argument("--degradation", default="ct_low_dose:dose=0.25",
                        help='Degradation spec for --clean, e.g. "ct_noise:hu=25,kernel=hann" or "ct_low_dose:dose=0.25".')
    parser.add_argument("--slices", default="-16:", help="Python slice of the held-out slices along --axis (default: the last 16).")
    parser.add_argument("--axis", type=int, default=0, help="Slice axis of the numpy (k, j, i) volume.")
    parser.add_argument("--seed", type=int, default=1234, help="Seed of the simulated noise.")
    parser.add_argument("--draws", type=int, default=1,
                        help="Degrade the slices this many times (seeds --seed, --seed + 1, ...) and measure over all: "
                             "mean +- std over slices x noise draws (default: 1).")
    parser.add_argument("--tile", type=int, default=0,
                        help="Cut each degraded slice into tiles of this side, used as the slices (2-D X-ray, ultrasound).")
    parser.add_argument("--methods", action="append", help=f"Comma-separated subset of: {', '.join(METHODS)} (default: all).")
    parser.add_argument("--model", dest="models", action="append", metavar="ID",
                        help="A model id to evaluate (repeatable; default: every registered model of the modality).")
    parser.add_argument("--models", dest="models", action="extend", nargs="+", help=argparse.SUPPRESS)  # older spelling
    parser.add_argument("--models-dir", action="append", default=[], help="A folder of your own models (repeatable).")
    parser.add_argument("--no-branches", action="store_true", help="Skip the per-branch rows (content c, x - n) of the models.")
    parser.add_argument("--no-classical", action="store_true", help="Skip the classical baselines (same as --methods noisy,model).")
    parser.add_argument("--tune-slices", type=int, default=3, help="Slices the oracle search uses (spread over the stack).")
    parser.add_argument("--tune-crop", type=int, default=256, help="Side of the central crop the oracle search uses.")
    parser.add_argument("--tune-per-slice", action="store_true",
                        help="Tune each oracle on every slice for that slice alone (the stronger oracle where the "
                             "slices come from different scans or patients; default: one setting for the stack).")
    parser.add_argument("--device", default="auto", help="Device of the models: auto, cpu, cuda or mps.")
    parser.add_argument("--strength", type=float, default=1.0,
                        help="Share of their estimated noise the models remove, 0..1, as medgan-denoise --strength (default: 1).")
    parser.add_argument("--ensemble", type=int, default=1, choices=ENSEMBLE_SIZES,
                        help="Average the models' outputs over this many flips and rotations of each slice, as "
                             "medgan-denoise --ensemble (default: 1, off).")
    parser.add_argument("--out", type=Path, default=Path("output/evaluate"), help="Output folder.")
    args = parser.parse_args(argv)
    try:
        methods = parse_methods(args.methods)
        if not 0.0 <= args.strength <= 1.0:
            raise ValueError(f"--strength must be between 0 and 1, got {args.strength}")
        if args.no_classical:
            methods = tuple(m for m in methods if m not in BASELINES)
        if args.real_ldct_pair:
            modality = "CT"
            noisy, clean = load_real_ldct_pair(args.real_ldct_pair)
        else:
            modality = normalize_modality(args.modality)
            noisy, clean = simulated_stack(args.clean, args.degradation, args.slices, args.seed, args.axis, args.tile,
                                           args.draws)
        summaries, outputs, window = evaluate(noisy, clean, modality, methods=methods, models=args.models,
                                              models_dirs=tuple(args.models_dir), branches=not args.no_branches,
                                              device=args.device, tune_slices=args.tune_slices, tune_crop=args.tune_crop,
                                              tune_per_slice=args.tune_per_slice, strength=args.strength,
                                              ensemble=args.ensemble)
    except (ValueError, OSError) as error:
        print(f"medgan-evaluate: error: {error}", file=sys.stderr)
        return 2
    if not summaries:
        print("medgan-evaluate: error: no method to evaluate (check --methods and --model)", file=sys.stderr)
        return 2
    unit = "HU" if modality == "CT" else ""
    args.out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(summaries, window, unit)
    source = (f"real pair {args.real_ldct_pair}" if args.real_ldct_pair else
              f"{args.clean} slices {args.slices} (axis {args.axis}){f', {args.tile}-pixel tiles' if args.tile else ''}, "
              f"{args.degradation}, " + (f"seed {args.seed}" if args.draws == 1 else
                                         f"{args.draws} noise draws (seeds {args.seed}-{args.seed + args.draws - 1})"))
    per_slice = per_slice_table(summaries)
    (args.out / "table.md").write_text(f"Data: {source}.\n\n{table}" + (f"\n{per_slice}" if per_slice else ""))
    report = {"source": source, "window": window.label(unit), "methods": summaries}
    written = [args.out / "table.md", args.out / "metrics.json", args.out / "comparison.png"]
    if args.real_ldct_pair:
        started = time.perf_counter()
        spectra = noise_spectra(noisy[0], clean[0])
        nps_figure(args.out / "nps.png", spectra)
        report["noise_power_spectrum"] = spectra
        written.append(args.out / "nps.png")
        print(f"noise power spectrum, real quarter-dose noise ({spectra['noise_hu']:.1f} HU in soft tissue) against "
              f"simulate_ct_noise at that level ({time.perf_counter() - started:.1f} s):")
        for kernel, entry in spectra["kernels"].items():
            print(f"  kernel {kernel:12s} L1 distance of the normalised spectra {entry['l1']:.3f}")
    (args.out / "metrics.json").write_text(json.dumps(report, indent=2))
    comparison_figure(args.out / "comparison.png", outputs, clean, window, len(clean) // 2, summaries)
    print(table)
    for name, summary in summaries.items():
        print(f"{name}: {format_summary(summary, window, unit)}")
    print(f"wrote {', '.join(str(p) for p in written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
