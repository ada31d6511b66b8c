#!/usr/bin/env python-real
"""MedGANDenoise as a Slicer scripted CLI: denoise one volume file in its own process.

Slicer runs it with its own Python (PythonSlicer) as
  MedGANDenoiseCLI.py [--modality M] [--variant V] [--model ID] [--modelsFolder DIR] [--strength S] [--ensemble N]
      [--device D] [--batchSize N] [--axis K|J|I] [--noise NOISE] [--returnparameterfile F] INPUT DENOISED
(the flags of MedGANDenoiseCLI.xml). Progress goes to stdout as `<filter-progress>` lines, one
per batch. Outputs are written atomically (temporary file, then rename) only after the whole
volume is done, so a cancelled (killed) run leaves no output file. Errors: one line on stderr,
exit status 1.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

NAME = "MedGANDenoise"


def find_helper_package(here: Path | None = None) -> Path:
    """Put the folder holding MedGANDenoiseLib on sys.path. Installed extension or build tree:
    this file is in lib/Slicer-X.Y/cli-modules[/<config>], the package in
    lib/Slicer-X.Y/qt-scripted-modules; source tree: MedGANDenoise/MedGANDenoiseCLI/ beside
    MedGANDenoise/MedGANDenoiseLib."""
    here = (here or Path(__file__)).resolve().parent
    candidates = [here.parent / "qt-scripted-modules", here.parent.parent / "qt-scripted-modules", here.parent]
    for folder in candidates:
        if (folder / "MedGANDenoiseLib" / "__init__.py").is_file():
            if str(folder) not in sys.path:
                sys.path.insert(0, str(folder))
            return folder
    raise RuntimeError(f"cannot find the MedGANDenoiseLib package near {here} (looked in {', '.join(map(str, candidates))}); reinstall the extension")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="MedGANDenoiseCLI", description=__doc__.splitlines()[0])
    parser.add_argument("inputVolume", type=Path)
    parser.add_argument("denoisedVolume", type=Path)
    parser.add_argument("--noise", dest="noiseVolume", type=Path)
    parser.add_argument("--modality", default="Auto")
    parser.add_argument("--variant", default="unet")
    parser.add_argument("--model", dest="modelId", default="")
    parser.add_argument("--modelsFolder", default="")
    parser.add_argument("--strength", type=float, default=1.0)
    parser.add_argument("--ensemble", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batchSize", type=int, default=0)
    parser.add_argument("--axis", dest="sliceAxis", default="K", choices=["K", "J", "I"])
    parser.add_argument("--returnparameterfile", type=Path)
    parser.add_argument("--processinformationaddress")  # passed to shared-library CLIs only; ignored
    return parser


def say(line: str) -> None:
    print(line, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        find_helper_package()
        return run(args)
    except Exception as error:  # one line a user can act on; Slicer shows stderr in the CLI node's error text
        print(f"{NAME}: error: {error}", file=sys.stderr, flush=True)
        return 1


def run(args: argparse.Namespace) -> int:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise RuntimeError(
            f"PyTorch is not installed in the Python that runs this CLI ({sys.executable}). In 3D Slicer, install the "
            "'PyTorch' extension, open its module and install PyTorch, then run again; elsewhere: pip install torch"
        ) from None
    from MedGANDenoiseLib import cli_protocol as protocol
    from MedGANDenoiseLib import image_io
    from MedGANDenoiseLib.engine import denoise_volume, estimate_noise_sigma
    from MedGANDenoiseLib.registry import ModelRegistry, load_model

    started = time.perf_counter()
    say(protocol.filter_start(NAME, f"denoising {args.inputVolume.name}"))
    for output in (args.denoisedVolume, args.noiseVolume):
        if output is not None:
            image_io.check_output_path(output, [args.inputVolume])
    image = image_io.read_image(args.inputVolume)
    volume = image_io.image_to_array(image)
    registry = ModelRegistry.default([args.modelsFolder] if args.modelsFolder else [])
    reason = "chosen"
    if args.modelId:
        card = registry.get(args.modelId)
        modality = card.modality
    else:
        modality = args.modality
        if modality.lower() == "auto":
            modality, reason = protocol.guess_modality_of_array(volume)
            say(f"Modality: {modality} ({reason})")
        card = registry.find(modality, args.variant)
    model = load_model(card)
    say(protocol.filter_progress(0, 1))
    result = denoise_volume(
        volume, model, modality, axis=protocol.CLI_AXES[args.sliceAxis], batch_size=args.batchSize or None,
        device=args.device, strength=args.strength, ensemble=args.ensemble, progress=lambda done, total: say(protocol.filter_progress(done, total)))
    # Both outputs are written and verified under temporary names first, then renamed: a failure or
    # a kill while the second is written leaves neither (not a denoised volume without its noise;
    # a kill can leave a hidden .<name>.* temporary file, which Slicer's temporary folder holds).
    staged = []
    try:
        staged.append(image_io.stage_like(result.denoised, image, args.denoisedVolume))
        if args.noiseVolume is not None:
            staged.append(image_io.stage_like(result.noise, image, args.noiseVolume))
    except BaseException:
        for file in staged:
            file.discard()
        raise
    for file in staged:
        file.commit()
    report = {
        "model_id": card.id, "description": card.description, "modality": card.modality, "variant": card.variant,
        "modality_reason": reason, "device": result.device, "precision": result.precision, "batch_size": result.batch_size,
        "ensemble": result.ensemble,
        "seconds": round(result.seconds, 3),
        "shape": list(volume.shape), "sigma_before": estimate_noise_sigma(volume), "sigma_after": estimate_noise_sigma(result.denoised),
        "warnings": list(result.warnings),
    }
    if args.returnparameterfile is not None:
        protocol.write_return_parameters(args.returnparameterfile, {protocol.REPORT_PARAMETER: protocol.encode_report(report)})
    say(protocol.format_report(report))
    say(protocol.filter_end(NAME, time.perf_counter() - started))
    return 0


if __name__ == "__main__":
    sys.exit(main())
