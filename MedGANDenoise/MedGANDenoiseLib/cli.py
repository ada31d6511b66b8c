"""medgan-denoise: denoise a scan (or a folder of scans) from the command line.

    medgan-denoise scan.nii.gz -o denoised.nii.gz [--noise noise.nii.gz] --modality CT [--variant unet]
    medgan-denoise dicom_folder/ -o denoised.nrrd --modality CT
    medgan-denoise scans/ -o results/ --modality MR --save-noise       (batch: every scan of a folder)
    medgan-denoise --list-models [--models-dir DIR]

INPUT is any file SimpleITK reads (NIfTI, NRRD, MHA, a single DICOM file), a folder holding one
DICOM series, or a batch folder of such scans (files, or sub-folders with a DICOM series). In
batch mode OUTPUT is a folder and each scan is written as <name>_denoised.nii.gz (and
<name>_noise.nii.gz with --save-noise). Outputs keep the input's size, spacing, origin and
direction, carry none of its metadata, and are written only after denoising succeeded; the
input is never overwritten.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .engine import denoise_volume, estimate_noise_sigma
from .image_io import (
    MultipleSeriesError,
    check_output_path,
    find_scans,
    image_to_array,
    list_dicom_series,
    read_image,
    scan_stem,
    write_like,
)
from .networks import VARIANTS
from .registry import LoadedModel, ModelRegistry, load_model, normalize_modality

PROG = "medgan-denoise"
# image index axis (i, j, k) -> numpy axis of the (k, j, i) array
AXES = {"i": 2, "x": 2, "j": 1, "y": 1, "k": 0, "z": 0}


class CommandError(ValueError):
    """An expected failure, reported as one line."""


@dataclass
class Job:
    source: Path
    series: str | None
    denoised: Path
    noise: Path | None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", nargs="?", type=Path, help="scan file, DICOM series folder, or batch folder")
    parser.add_argument("-o", "--output", type=Path, help="denoised output file (batch mode: output folder)")
    parser.add_argument("--noise", type=Path, help="also write the estimated noise to this file")
    parser.add_argument("--save-noise", action="store_true", help="batch mode: also write <name>_noise.nii.gz")
    parser.add_argument("--modality", help="CT, MR, PET, XRAY or US (default: the --model's modality)")
    parser.add_argument("--variant", default="unet", choices=VARIANTS, help="predictor variant (default: unet)")
    parser.add_argument("--model", help="a model id from --list-models (default: the first for modality and variant)")
    parser.add_argument("--models-dir", action="append", default=[], type=Path, help="a folder of your own models (repeatable)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available, else CPU), cpu, cuda, cuda:N or mps")
    parser.add_argument("--batch-size", type=int, default=None, help="slices per batch (default: 8 on a GPU, 1 on the CPU)")
    parser.add_argument("--axis", default="k", choices=sorted(AXES), help="image axis the slices are taken across (default k: the slice direction)")
    parser.add_argument("--strength", type=float, default=1.0, help="fraction of the estimated noise to remove, 0..1 (default: 1)")
    series = parser.add_mutually_exclusive_group()
    series.add_argument("--series", help="the DICOM series UID to denoise when a folder holds several")
    series.add_argument("--all-series", action="store_true", help="denoise every series of a DICOM folder (OUTPUT is a folder)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    parser.add_argument("--list-models", action="store_true", help="list the available models and exit")
    return parser


def list_models(registry: ModelRegistry) -> str:
    rows = [("id", "modality", "variant", "validation", "description")]
    for card in registry.models():
        validation = card.metrics.get("validation", {})
        score = f"{validation['psnr']:.2f} dB / {validation['ssim']:.3f}" if "psnr" in validation else "-"
        rows.append((card.id, card.modality, card.variant, score, card.description))
    if len(rows) == 1:
        return "no models found; train one with medgan-train and pass its folder with --models-dir"
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4] for r in rows)


def select_model(args: argparse.Namespace, registry: ModelRegistry) -> LoadedModel:
    modality = normalize_modality(args.modality) if args.modality else None
    if args.model:
        card = registry.get(args.model)
        if modality is not None and card.modality != modality:
            raise CommandError(f"model {card.id!r} is a {card.modality} model, but --modality is {modality}; pick a {modality} model")
    elif modality is None:
        raise CommandError("give --modality (CT, MR, PET, XRAY or US) or --model")
    else:
        card = registry.find(modality, args.variant)
    return load_model(card)


def plan_jobs(args: argparse.Namespace) -> list[Job]:
    """What to read and where to write, checked before any work is done."""
    source: Path = args.input
    if not source.exists():
        raise CommandError(f"input not found: {source}")
    dicom_folder = source.is_dir() and bool(list_dicom_series(source))
    if source.is_dir() and (args.all_series or not dicom_folder):
        if dicom_folder:  # every series of one DICOM folder
            items = [(source, uid, uid) for uid, _, _ in list_dicom_series(source)]
        else:
            scans = find_scans(source)
            if not scans:
                raise CommandError(f"{source} holds no scans (NIfTI, NRRD, MHA, DICOM files or DICOM series folders)")
            items = [(scan, None, scan_stem(scan)) for scan in scans]
        if args.noise:
            raise CommandError("in batch mode use --save-noise instead of --noise")
        if args.output.exists() and not args.output.is_dir():
            raise CommandError(f"in batch mode OUTPUT must be a folder; {args.output} is a file")
        jobs = [Job(path, uid, args.output / f"{stem}_denoised.nii.gz", args.output / f"{stem}_noise.nii.gz" if args.save_noise else None)
                for path, uid, stem in items]
    else:
        if args.save_noise:
            raise CommandError("--save-noise is for batch mode; give --noise FILE for one scan")
        if dicom_folder and args.series is None and len(list_dicom_series(source)) > 1:
            raise MultipleSeriesError(source, list_dicom_series(source))
        jobs = [Job(source, args.series, args.output, args.noise)]
    inputs = [job.source for job in jobs]
    for job in jobs:
        job.denoised = check_output_path(job.denoised, inputs)
        if job.noise is not None:
            job.noise = check_output_path(job.noise, inputs)
            if job.noise == job.denoised:
                raise CommandError("--noise must differ from the denoised output")
    return jobs


def run_job(job: Job, model: LoadedModel, args: argparse.Namespace) -> str:
    """Denoise one scan and write its outputs; returns the summary line."""
    from tqdm import tqdm

    image = read_image(job.source, job.series)
    volume = image_to_array(image)
    with tqdm(total=volume.shape[AXES[args.axis]] if volume.ndim == 3 else 1, unit="slice", disable=args.quiet,
              desc=job.source.name, leave=False) as bar:
        result = denoise_volume(
            volume, model, args.modality, axis=AXES[args.axis] if volume.ndim == 3 else None, batch_size=args.batch_size,
            device=args.device, strength=args.strength, progress=lambda done, total: bar.update(done - bar.n),
        )
    written = [write_like(result.denoised, image, job.denoised)]
    try:
        if job.noise is not None:
            written.append(write_like(result.noise, image, job.noise))
    except BaseException:
        for path in written:  # nothing half-made: the pair is written whole or not at all
            path.unlink(missing_ok=True)
        raise
    for warning in result.warnings:
        print(f"{PROG}: warning: {warning}", file=sys.stderr)
    return (
        f"{job.source.name}: {'x'.join(map(str, volume.shape))} on {result.device} in {result.seconds:.1f} s; "
        f"noise sigma {estimate_noise_sigma(volume):.3g} -> {estimate_noise_sigma(result.denoised):.3g}; "
        f"wrote {', '.join(str(p) for p in written)}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        registry = ModelRegistry.default(args.models_dir)
        if args.list_models:
            print(list_models(registry))
            return 0
        if args.input is None or args.output is None:
            parser.error("INPUT and -o OUTPUT are required (or --list-models)")
        if not 0.0 <= args.strength <= 1.0:
            raise CommandError(f"--strength must be between 0 and 1, got {args.strength}")
        if args.batch_size is not None and args.batch_size < 1:
            raise CommandError(f"--batch-size must be at least 1, got {args.batch_size}")
        model = select_model(args, registry)
        args.modality = model.card.modality
        jobs = plan_jobs(args)
    except ValueError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    failures = []
    for job in jobs:
        try:
            summary = run_job(job, model, args)
        except ValueError as error:
            if len(jobs) == 1:
                print(f"{PROG}: error: {error}", file=sys.stderr)
                return 2
            failures.append(f"{job.source.name}: {error}")
            print(f"{PROG}: skipped {job.source.name}: {error}", file=sys.stderr)
            continue
        if not args.quiet:
            print(summary)
    if failures:
        print(f"{PROG}: error: {len(failures)} of {len(jobs)} scans failed: " + "; ".join(failures), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
