"""What the Slicer module and its scripted CLI (MedGANDenoiseCLI) agree on, without Slicer, VTK or torch.

The CLI reports progress on stdout with the tags Slicer's CLI logic parses
(vtkSlicerCLIModuleLogic: `<filter-progress>` holds a fraction 0..1) and returns a one-line JSON
run report through Slicer's return-parameter file (`name = value` lines, read by
ModuleDescription::ReadParameterFile).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

CLI_MODULE_NAME = "MedGANDenoiseCLI"
MODALITY_CHOICES = ("Auto", "CT", "MR", "PET", "XRAY", "US")
SLICE_AXES = {"K (slices)": 0, "J": 1, "I": 2}  # numpy (k, j, i) axis the 2-D slices are taken across
CLI_AXES = {"K": 0, "J": 1, "I": 2}
# the panel's self-ensemble choices -> the engine's ensemble size (denoise_volume's `ensemble`)
ENSEMBLE_CHOICES = {"Off": 1, "2: the slice and its mirror image (2x time)": 2, "4 mirrorings (4x time)": 4, "8 flips and rotations (8x time)": 8}
REPORT_PARAMETER = "runReport"


def filter_start(name: str, comment: str) -> str:
    return f"<filter-start>\n<filter-name>{name}</filter-name>\n<filter-comment>{comment}</filter-comment>\n</filter-start>"


def filter_progress(done: int, total: int) -> str:
    return f"<filter-progress>{done / max(total, 1):.4f}</filter-progress>"


def filter_end(name: str, seconds: float) -> str:
    return f"<filter-end>\n<filter-name>{name}</filter-name>\n<filter-time>{seconds:.2f}</filter-time>\n</filter-end>"


def parse_progress(stdout: str) -> list[float]:
    """The fractions of all `<filter-progress>` tags in a CLI's output, in order."""
    values, start = [], 0
    while (begin := stdout.find("<filter-progress>", start)) >= 0:
        end = stdout.find("</filter-progress>", begin)
        if end < 0:
            break
        values.append(float(stdout[begin + len("<filter-progress>"):end]))
        start = end
    return values


def write_return_parameters(path: str | Path, values: dict[str, str]) -> None:
    """Slicer's return-parameter file: one `name = value` line per output parameter."""
    Path(path).write_text("".join(f"{name} = {value}\n" for name, value in values.items()))


def read_return_parameters(path: str | Path) -> dict[str, str]:
    values = {}
    for line in Path(path).read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep:
            values[name.strip()] = value.strip()
    return values


def encode_report(report: dict[str, Any]) -> str:
    """One line (return parameters are line-based)."""
    return json.dumps(report, separators=(",", ":"), ensure_ascii=True)


def decode_report(text: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        report = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return report if isinstance(report, dict) else {}


def format_report(report: dict[str, Any]) -> str:
    """The run report as lines for the panel's details box."""
    lines = []
    if report.get("model_id"):
        lines.append(f"Model: {report['model_id']} ({report.get('modality', '?')}, {report.get('variant', '?')})")
    if report.get("description"):
        lines.append(f"  {report['description']}")
    if report.get("device"):
        precision = f" ({report['precision']})" if report.get("precision") else ""
        lines.append(f"Device: {report['device']}{precision}, batch size {report.get('batch_size', '?')}")
    if int(report.get("ensemble", 1)) > 1:
        lines.append(f"Self-ensemble: mean over {int(report['ensemble'])} flips and rotations of each slice")
    if "seconds" in report:
        lines.append(f"Time: {float(report['seconds']):.1f} s for {'x'.join(map(str, report.get('shape', [])))} voxels")
    if "sigma_before" in report:
        lines.append(f"Noise estimate (sigma): {float(report['sigma_before']):.4g} -> {float(report['sigma_after']):.4g}")
    lines += [f"Warning: {w}" for w in report.get("warnings", [])]
    return "\n".join(lines)


def guess_modality_of_array(array: np.ndarray) -> tuple[str, str]:
    """(modality, reason) from the intensity range alone, with the reason in words."""
    sample = array.reshape(-1)[:: max(1, array.size // 1_000_000)]
    low, high = float(np.percentile(sample, 0.5)), float(np.percentile(sample, 99.5))
    if low <= -500:  # air in Hounsfield units; MR and PET are not negative like this
        return "CT", f"intensities from {low:.0f} to {high:.0f} look like Hounsfield units"
    if low >= 0 and high <= 50 and np.issubdtype(array.dtype, np.floating):
        return "PET", f"small non-negative floating-point values (up to {high:.3g}) look like PET uptake"
    return "MR", f"non-negative intensities up to {high:.0f} without HU air look like MR"
