"""Reading scans and writing results with SimpleITK, keeping geometry and dropping patient data.

Inputs: any file SimpleITK reads (NIfTI, NRRD, MHA, a single DICOM file) or a folder holding a
DICOM series. Outputs: NIfTI, NRRD or MetaImage written atomically, with exactly the input's
size, spacing, origin and direction, and none of its metadata (no DICOM patient or study tags).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

OUTPUT_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
SCAN_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")


class MultipleSeriesError(ValueError):
    """A DICOM folder holds several series; the caller must choose one (or process each)."""

    def __init__(self, folder: Path, series: list[tuple[str, int, str]]):
        self.folder, self.series = folder, series
        listing = "; ".join(f"{uid} ({n} files{', ' + d if d else ''})" for uid, n, d in series)
        super().__init__(
            f"{folder} holds {len(series)} DICOM series: {listing}. Pick one with --series UID, or use --all-series to denoise each"
        )


def list_dicom_series(folder: str | Path) -> list[tuple[str, int, str]]:
    """(series instance UID, number of files, series description) for each series in a folder."""
    folder = Path(folder)
    series = []
    for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)):
        files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)
        reader = sitk.ImageFileReader()
        reader.SetFileName(files[0])
        reader.ReadImageInformation()
        description = reader.GetMetaData("0008|103e").strip() if reader.HasMetaDataKey("0008|103e") else ""
        series.append((uid, len(files), description))
    return series


def read_image(path: str | Path, series_uid: str | None = None) -> sitk.Image:
    """A scan from a file or a DICOM series folder."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"input not found: {path}")
    if path.is_dir():
        series = list_dicom_series(path)
        if not series:
            raise ValueError(f"{path} is a folder without DICOM files; give an image file or a DICOM series folder")
        if series_uid is None:
            if len(series) > 1:
                raise MultipleSeriesError(path, series)
            series_uid = series[0][0]
        elif series_uid not in [uid for uid, _, _ in series]:
            raise ValueError(f"series {series_uid} is not in {path}; it holds {', '.join(uid for uid, _, _ in series)}")
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), series_uid))
        return reader.Execute()
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise ValueError(f"cannot read {path} as an image: {str(error).strip().splitlines()[-1]}") from error


def image_to_array(image: sitk.Image) -> np.ndarray:
    """The voxels as a (k, j, i) numpy array (a copy: the image stays untouched)."""
    components = image.GetNumberOfComponentsPerPixel()
    if components != 1:
        raise ValueError(
            f"the image has {components} components per voxel (e.g. RGB); denoising needs a scalar image: "
            "convert it to grey values first"
        )
    if image.GetDimension() > 3:
        raise ValueError(
            f"the image is {image.GetDimension()}-D (size {image.GetSize()}); extract one 3-D volume (one time point) first"
        )
    return sitk.GetArrayFromImage(image)


def output_suffix(path: str | Path) -> str | None:
    name = str(path).lower()
    return next((s for s in OUTPUT_SUFFIXES if name.endswith(s)), None)


def check_output_path(path: str | Path, inputs: list[Path]) -> Path:
    """Refuse an output that would overwrite an input, has no supported format, or cannot be
    written, before any work is done. Returns the output as an absolute path."""
    path = Path(path).absolute()
    if output_suffix(path) is None:
        raise ValueError(f"output {path.name}: write NIfTI (.nii.gz, .nii), NRRD (.nrrd) or MetaImage (.mha)")
    for source in inputs:
        if path.exists() and source.exists() and path.samefile(source) or path.resolve() == source.resolve():
            raise ValueError(f"output {path} is the input file; choose another name (the input is never overwritten)")
        if source.is_dir() and source.resolve() in path.resolve().parents:
            raise ValueError(f"output {path} lies inside the input DICOM folder {source}; write it elsewhere")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write {path}: {parent} is not a writable folder")
    return path


def write_like(array: np.ndarray, reference: sitk.Image, path: str | Path) -> Path:
    """Write a float32 array with the reference's geometry only, atomically (a temporary file in
    the same folder, then a rename), so a failure leaves no half-written file."""
    path = Path(path)
    suffix = output_suffix(path)
    if suffix is None:
        raise ValueError(f"output {path.name}: write NIfTI (.nii.gz, .nii), NRRD (.nrrd) or MetaImage (.mha)")
    image = sitk.GetImageFromArray(np.asarray(array, dtype=np.float32))
    image.SetSpacing(reference.GetSpacing())
    image.SetOrigin(reference.GetOrigin())
    image.SetDirection(reference.GetDirection())
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(handle)
    try:
        sitk.WriteImage(image, temporary, True)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def scan_stem(path: Path) -> str:
    name = path.name
    lower = name.lower()
    for suffix in SCAN_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def find_scans(folder: Path) -> list[Path]:
    """The scans of a batch folder: image files, and sub-folders holding DICOM series."""
    scans = []
    for entry in sorted(folder.iterdir()):
        if entry.is_file() and entry.name.lower().endswith(SCAN_SUFFIXES) and not entry.name.startswith("."):
            scans.append(entry)
        elif entry.is_dir() and sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(entry)):
            scans.append(entry)
    return scans
