r"""medgan-denoise: denoise a scan (or a folder of scans) from the command line.

    medgan-denoise scan.nii.gz -o denoised.nii.gz [--noise noise.nii.gz] --modality CT [--variant unet]
    medgan-denoise dicom_folder/ -o denoised.nrrd --modality CT
    medgan-denoise scans/ -o results/ --modality MR --save-noise       (batch: every scan of a folder)
    medgan-denoise --list-models [--models-dir DIR]

    medgan-denoise dicom_folder/ -o denoised_series/ --output-format dicom [--noise noise_series/] [--deidentify]

INPUT is any file SimpleITK reads (NIfTI, NRRD, MHA, a single DICOM file), a folder holding one
DICOM series, or a batch folder of such scans (files, or sub-folders with a DICOM series). In
batch mode OUTPUT is a folder and each scan is written as <name>_denoised.nii.gz (and
<name>_noise.nii.gz with --save-noise; --output-format picks another format). Outputs keep the
input's size, spacing, origin and direction, carry none of its metadata, and are written only
after denoising succeeded, each verified by reading it back; the input is never overwritten.

With --output-format dicom a DICOM series in gives a derived DICOM series out (OUTPUT is a new
folder): new series and instance UIDs in the same study and frame of reference, the same slice
positions, ImageType DERIVED\SECONDARY and references to the source images, so a PACS files it
beside the original. It carries the source's patient and study data unless --deidentify applies
DICOM PS3.15's basic de-identification profile.

Under torchrun (RANK and WORLD_SIZE set) the scans of a batch are shared out among the processes:
    torchrun --standalone --nproc_per_node=4 -m MedGANDenoiseLib.cli scans/ -o results/ --modality CT
Every rank checks the whole batch first, then denoises and writes its own share (on cuda:LOCAL_RANK
with --device auto or cuda); rank 0 prints a summary of all ranks. Several nodes: the same command
with --nnodes N --rdzv-backend c10d --rdzv-endpoint HOST:PORT on each node, over a shared filesystem.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from . import distributed
from .engine import ENSEMBLE_SIZES, PRECISIONS, denoise_volume, estimate_noise_sigma
from .image_io import (
    MultipleSeriesError,
    check_geometry_fits,
    check_output_path,
    find_scans,
    image_to_array,
    list_dicom_series,
    quiet_library_warnings,
    read_dicom_series,
    read_image,
    scan_stem,
    stage_like,
)
from .networks import VARIANTS
from .registry import LoadedModel, ModelRegistry, load_model, normalize_modality

PROG = "medgan-denoise"
# image index axis (i, j, k) -> numpy axis of the (k, j, i) array
AXES = {"i": 2, "x": 2, "j": 1, "y": 1, "k": 0, "z": 0}
OUTPUT_FORMATS = ("nii.gz", "nii", "nrrd", "mha", "dicom")


class CommandError(ValueError):
    """An expected failure, reported as one line."""


@dataclass
class Job:
    source: Path
    series: str | None
    denoised: Path
    noise: Path | None
    name: str = field(default="")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", nargs="?", type=Path, help="scan file, DICOM series folder, or batch folder")
    parser.add_argument("-o", "--output", type=Path, help="denoised output file (batch mode: output folder)")
    parser.add_argument("--noise", type=Path, help="also write the estimated noise to this file")
    parser.add_argument("--save-noise", action="store_true", help="batch mode: also write <name>_noise.nii.gz")
    parser.add_argument("--output-format", choices=OUTPUT_FORMATS,
                        help="nii.gz, nii, nrrd, mha, or dicom (a derived DICOM series in a new folder; needs a DICOM input). "
                             "Default: from the OUTPUT name; nii.gz in batch mode")
    parser.add_argument("--deidentify", action="store_true",
                        help="with --output-format dicom: remove patient data per DICOM PS3.15's basic profile")
    parser.add_argument("--modality", help="CT, MR, PET, XRAY or US (default: the --model's modality)")
    parser.add_argument("--variant", default="unet", choices=VARIANTS, help="predictor variant (default: unet)")
    parser.add_argument("--model", help="a model id from --list-models (default: the first for modality and variant)")
    parser.add_argument("--models-dir", action="append", default=[], type=Path, help="a folder of your own models (repeatable)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available, else CPU), cpu, cuda, cuda:N or mps")
    parser.add_argument("--batch-size", type=int, default=None, help="slices per batch (default: 8 on a GPU, 1 on the CPU)")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS,
                        help="auto: fp16 predictors on CUDA GPUs, bf16 coarse U-Net levels on CPUs with native bf16 "
                             "(99.9th percentile in soft tissue within 0.5 HU of fp32), fp32 otherwise; fp32 for the exact reference")
    parser.add_argument("--axis", default="k", choices=sorted(AXES), help="image axis the slices are taken across (default k: the slice direction)")
    parser.add_argument("--strength", type=float, default=1.0, help="fraction of the estimated noise to remove, 0..1 (default: 1, the model's full output)")
    parser.add_argument("--ensemble", type=int, default=1, choices=ENSEMBLE_SIZES,
                        help="self-ensemble: average the outputs over N flips and 90-degree rotations of each slice "
                             "(2: the slice and its mirror image, 4: the mirrorings, 8: with the rotations); N times "
                             "the time for a slightly better estimate "
                             "(default: 1, off)")
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


def output_format(args: argparse.Namespace, batch: bool) -> str:
    """The format of the outputs: --output-format, else the OUTPUT name's suffix (nii.gz in batch mode)."""
    if batch:
        return args.output_format or "nii.gz"
    from .image_io import output_suffix

    suffix = output_suffix(args.output)
    if args.output_format is None:
        return suffix[1:] if suffix else ""  # no suffix: check_output_path explains
    if args.output_format == "dicom":
        if suffix is not None:
            raise CommandError(f"--output-format dicom writes a series into a folder; {args.output} names a {suffix} file")
    elif suffix is not None and suffix[1:] != args.output_format:
        raise CommandError(f"--output-format {args.output_format} does not match the output name {args.output.name}")
    elif suffix is None:
        raise CommandError(f"output {args.output.name}: end it in .{args.output_format}")
    return args.output_format


def batch_names(items: list[tuple[Path, str | None, str]]) -> list[str]:
    """Output base names for the scans of a batch: distinct even where two scans share a stem
    (a.nii.gz and a.nrrd become a_nii_gz and a_nrrd), compared without regard to case."""
    counts: dict[str, int] = {}
    for _, _, stem in items:
        counts[stem.casefold()] = counts.get(stem.casefold(), 0) + 1
    names = [stem if counts[stem.casefold()] == 1 else path.name.replace(".", "_") for path, _, stem in items]
    if len({n.casefold() for n in names}) != len(names):
        raise CommandError("two scans of the batch would get the same output name; rename one of them")
    return names


def plan_jobs(args: argparse.Namespace) -> list[Job]:
    """What to read and where to write, checked before any work is done."""
    source: Path = args.input
    if not source.exists():
        raise CommandError(f"input not found: {source}")
    dicom_folder = source.is_dir() and bool(list_dicom_series(source))
    batch = source.is_dir() and (args.all_series or not dicom_folder)
    fmt = output_format(args, batch)
    if args.deidentify and fmt != "dicom":
        raise CommandError("--deidentify is for --output-format dicom; NIfTI, NRRD and MetaImage outputs carry no patient data anyway")
    if batch:
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
        ending = "" if fmt == "dicom" else "." + fmt
        jobs = [Job(path, uid, args.output / f"{name}_denoised{ending}", args.output / f"{name}_noise{ending}" if args.save_noise else None, name)
                for (path, uid, _), name in zip(items, batch_names(items))]
    else:
        if args.save_noise:
            raise CommandError("--save-noise is for batch mode; give --noise FILE for one scan")
        if dicom_folder and args.series is None and len(list_dicom_series(source)) > 1:
            raise MultipleSeriesError(source, list_dicom_series(source))
        jobs = [Job(source, args.series, args.output, args.noise, source.name)]
    inputs = [job.source for job in jobs]
    folder = fmt == "dicom"
    planned: set[Path] = set()
    for job in jobs:
        if folder:
            from .dicom_output import check_dicom_source

            check_dicom_source(job.source)
        job.denoised = check_output_path(job.denoised, inputs, folder=folder)
        if job.noise is not None:
            job.noise = check_output_path(job.noise, inputs, folder=folder)
            if job.noise == job.denoised:
                raise CommandError(f"--noise must differ from the denoised output (both are {job.denoised})")
        for path in (job.denoised, job.noise):
            if path is not None and path in planned:
                raise CommandError(f"two outputs would be written to {path}; nothing was written")
            planned.add(path)
    return jobs


def stage_outputs(job: Job, result, image, files: list[str] | None, model: LoadedModel, args: argparse.Namespace) -> list:
    """Every output of a job written and verified under a temporary name; nothing is committed."""
    outputs = [("denoised", result.denoised, job.denoised)] + ([("noise", result.noise, job.noise)] if job.noise is not None else [])
    staged = []
    try:
        for kind, array, path in outputs:
            if args.output_format == "dicom":
                from .dicom_output import stage_dicom_series

                staged.append(stage_dicom_series(array, image, files, path, kind=kind, model_id=model.card.id,
                                                 strength=args.strength, ensemble=args.ensemble, deidentify=args.deidentify))
            else:
                staged.append(stage_like(array, image, path))
    except BaseException:
        for item in staged:
            item.discard()
        raise
    return staged


def run_job(job: Job, model: LoadedModel, args: argparse.Namespace, progress_bar: bool = True) -> str:
    """Denoise one scan and write its outputs; returns the summary line."""
    from tqdm import tqdm

    files = None
    if job.source.is_dir():
        image, files = read_dicom_series(job.source, job.series)
    else:
        image = read_image(job.source, job.series)
        files = [str(job.source)]
    for path in (job.denoised, job.noise):
        if path is not None and args.output_format != "dicom":
            check_geometry_fits(image, path)
    volume = image_to_array(image)
    with tqdm(total=volume.shape[AXES[args.axis]] if volume.ndim == 3 else 1, unit="slice", disable=args.quiet or not progress_bar,
              desc=job.source.name, leave=False) as bar:
        result = denoise_volume(
            volume, model, args.modality, axis=AXES[args.axis] if volume.ndim == 3 else None, batch_size=args.batch_size,
            device=args.device, strength=args.strength, precision=args.precision, ensemble=args.ensemble,
            progress=lambda done, total: bar.update(done - bar.n),
        )
    # the pair is staged (written and verified) whole before either replaces anything at its
    # destination: a failed write leaves the user's earlier files as they were
    staged = stage_outputs(job, result, image, files, model, args)
    written = []
    try:
        for item in staged:
            written.append(item.commit())
    finally:
        for item in staged[len(written):]:
            item.discard()
    for warning in result.warnings:
        print(f"{PROG}: warning: {warning}", file=sys.stderr)
    return (
        f"{job.source.name}: {'x'.join(map(str, volume.shape))} on {result.device} ({result.precision}"
        f"{f', self-ensemble x{result.ensemble}' if result.ensemble > 1 else ''}) in {result.seconds:.1f} s; "
        f"noise sigma {estimate_noise_sigma(volume):.3g} -> {estimate_noise_sigma(result.denoised):.3g}; "
        f"wrote {', '.join(str(p) for p in written)}"
    )


def explain(error: BaseException) -> str | None:
    """One line for an expected failure, or None for a bug."""
    if isinstance(error, ValueError):
        return str(error)
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError" or (
        isinstance(error, RuntimeError) and any(s in str(error).lower() for s in ("out of memory", "can't allocate memory", "not enough memory"))
    ):
        return "not enough memory to denoise this scan; close other programs, use --batch-size 1, or crop the volume"
    if isinstance(error, OSError):
        return f"{error.filename + ': ' if getattr(error, 'filename', None) else ''}{error.strerror or error}"
    return None


class Terminated(BaseException):
    """SIGTERM arrived: unwind (removing temporary files) and exit 143."""


def _terminate(signum, frame):
    raise Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _terminate) if _main_thread() else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # library warnings never precede or replace the tool's own lines
            return _main(parser, args)
    except Terminated:
        print(f"{PROG}: terminated; nothing half-written was left behind", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; nothing half-written was left behind", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _fail(error: BaseException) -> str:
    message = explain(error)
    if message is None:
        if os.environ.get("MEDGAN_DENOISE_DEBUG"):
            raise error
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        message = f"unexpected {type(error).__name__}: {first} (please report it; MEDGAN_DENOISE_DEBUG=1 shows the details)"
    return " ".join(message.split("\n"))


def _main(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    quiet_library_warnings()
    context = None
    try:
        # under torchrun: join the group before planning, so that every exit below is agreed on
        context = None if args.list_models else distributed.from_env()
        if context is not None:
            distributed.setup(context)
    except Exception as error:
        print(f"{PROG}: error: {_fail(error)}", file=sys.stderr)
        return 2
    try:
        return _plan_and_run(parser, args, context)
    finally:
        if context is not None:
            distributed.teardown(context)


def _plan_and_run(parser: argparse.ArgumentParser, args: argparse.Namespace, context: distributed.Context | None) -> int:
    try:
        registry = ModelRegistry.default(args.models_dir)
        for problem in registry.problems:
            if context is None or context.rank == 0:
                print(f"{PROG}: warning: {problem}", file=sys.stderr)
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
        if context is not None:
            args.device = distributed.rank_device(args.device, context)
    except Exception as error:
        if context is None:
            print(f"{PROG}: error: {_fail(error)}", file=sys.stderr)
            return 2
        return _agree_and_run(context, args, None, [], _fail(error))
    if context is not None:
        return _agree_and_run(context, args, model, jobs, None)
    failures = []
    for job in jobs:
        try:
            summary = run_job(job, model, args)
        except Exception as error:
            message = _fail(error)
            if len(jobs) == 1:
                print(f"{PROG}: error: {message}", file=sys.stderr)
                return 2
            failures.append(f"{job.source.name}: {message}")
            print(f"{PROG}: skipped {job.source.name}: {message}", file=sys.stderr)
            continue
        if not args.quiet:
            print(summary)
    if failures:
        print(f"{PROG}: error: {len(failures)} of {len(jobs)} scans failed: " + "; ".join(failures), file=sys.stderr)
        return 2
    return 0


def _write_line(stream, line: str) -> None:
    """One write per line: print() writes the text and the newline separately when unbuffered,
    and the ranks share one terminal or pipe, so another rank's line could land in between."""
    stream.write(line + "\n")
    stream.flush()


def _device_name(device: str) -> str:
    from .engine import resolve_device

    try:
        return str(resolve_device(device))
    except ValueError:
        return device


def _plan_digest(jobs: list[Job]) -> str:
    text = "\n".join(f"{job.source}\t{job.series}\t{job.denoised}\t{job.noise}" for job in jobs)
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def _agree_and_run(context: distributed.Context, args: argparse.Namespace, model: LoadedModel | None, jobs: list[Job],
                   plan_error: str | None) -> int:
    """A batch under torchrun: every rank planned the whole batch; if all plans succeeded and are
    the same, each rank runs its share and rank 0 reports on all. The exit status is the same on
    every rank (so every node's torchrun fails alike): 2 when anything failed on any rank."""
    code = _agreed_run(context, args, model, jobs, plan_error)
    # torchrun stops the other ranks as soon as one exits non-zero: none leaves before rank 0 has reported
    distributed.barrier(context)
    return code


def _agreed_run(context: distributed.Context, args: argparse.Namespace, model: LoadedModel | None, jobs: list[Job],
                plan_error: str | None) -> int:
    lead = context.rank == 0
    # the gather is also the barrier that keeps every rank's checks ahead of any rank's writes
    plans = distributed.all_gather(context, (plan_error, None if plan_error else _plan_digest(jobs)))
    errors = [(rank, error) for rank, (error, _) in enumerate(plans) if error is not None]
    if errors:
        if lead:
            if len({error for _, error in errors}) == 1 and len(errors) == context.world_size:
                print(f"{PROG}: error: {errors[0][1]}", file=sys.stderr)
            else:
                for rank, error in errors:
                    print(f"{PROG}: error: rank {rank}: {error}", file=sys.stderr)
        return 2
    if len({digest for _, digest in plans}) != 1:
        if lead:
            print(f"{PROG}: error: the ranks found different scans or outputs (on several nodes the input and output "
                  "folders must be on a filesystem every node shares); nothing was written", file=sys.stderr)
        return 2
    tag = f"[rank {context.rank}/{context.world_size}]"
    mine = distributed.shard(jobs, context.rank, context.world_size)
    failures: list[str] = []
    started = time.perf_counter()
    for job in mine:
        try:
            summary = run_job(job, model, args, progress_bar=False)  # one line per scan: bars of several ranks interleave
        except Exception as error:
            message = _fail(error)
            failures.append(f"{job.source.name}: {message}")
            _write_line(sys.stderr, f"{PROG}: {tag} skipped {job.source.name}: {message}")
            continue
        if not args.quiet:
            _write_line(sys.stdout, f"{tag} {summary}")
    report = distributed.RankReport(context.rank, context.host, _device_name(args.device), len(mine), len(mine) - len(failures), failures,
                                    time.perf_counter() - started)
    reports: list[distributed.RankReport] = distributed.all_gather(context, report)
    failed = [failure for r in reports for failure in r.failures]
    if lead:
        if not args.quiet:
            for line in distributed.summary_lines(reports):
                print(f"{PROG}: {line}", flush=True)
        if failed:
            print(f"{PROG}: error: {len(failed)} of {len(jobs)} scans failed: " + "; ".join(failed), file=sys.stderr, flush=True)
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
