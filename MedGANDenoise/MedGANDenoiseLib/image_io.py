"""Reading scans and writing results with SimpleITK, keeping geometry and dropping patient data.

Inputs: any file SimpleITK reads (NIfTI, NRRD, MHA, a single DICOM file) or a folder holding a
DICOM series. Damaged inputs are refused instead of being read as zeros: a truncated NIfTI (file
shorter than its header says, or an incomplete gzip stream) and a DICOM series with a missing
slice, unevenly spaced slices or slices of different sizes.

Outputs: NIfTI, NRRD or MetaImage with exactly the input's size, spacing, origin and direction,
and none of its metadata (no DICOM patient or study tags). Each is written to a temporary file
beside the destination, read back and compared (header and every voxel), and only then renamed
over the destination, so a failed write (disk full) never leaves a damaged or partial file and
never passes for a success. Outputs get the permissions the umask allows (an overwritten file
keeps its mode).
"""

from __future__ import annotations

import contextlib
import gzip
import os
import struct
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

OUTPUT_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
SCAN_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")
NIFTI_SUFFIXES = (".nii.gz", ".nii")
FORMATS_HINT = "write NIfTI (.nii.gz, .nii), NRRD (.nrrd) or MetaImage (.mha)"


class MultipleSeriesError(ValueError):
    """A DICOM folder holds several series; the caller must choose one (or process each)."""

    def __init__(self, folder: Path, series: list[tuple[str, int, str]]):
        self.folder, self.series = folder, series
        listing = "; ".join(f"{uid} ({n} files{', ' + d if d else ''})" for uid, n, d in series)
        super().__init__(
            f"{folder} holds {len(series)} DICOM series: {listing}. Pick one with --series UID, or use --all-series to denoise each"
        )


def quiet_library_warnings() -> None:
    """Keep SimpleITK/ITK warnings (e.g. "No Series were found") off the terminal: the tool says
    what went wrong in its own words."""
    sitk.ProcessObject_SetGlobalWarningDisplay(False)


@contextlib.contextmanager
def native_stderr_silenced():
    """Keep what ITK's NIfTI and MetaImage code print straight to file descriptor 2 (e.g.
    "** ERROR: NWAD: wrote only ... bytes") off the terminal; the caller reports the failure."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _last_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def list_dicom_series(folder: str | Path) -> list[tuple[str, int, str]]:
    """(series instance UID, number of files, series description) for each series in a folder."""
    folder = Path(folder)
    series = []
    for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)):
        files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)
        description = ""
        try:
            reader = sitk.ImageFileReader()
            reader.SetFileName(files[0])
            reader.ReadImageInformation()
            if reader.HasMetaDataKey("0008|103e"):
                description = reader.GetMetaData("0008|103e").strip()
        except RuntimeError:
            pass  # an unreadable file is reported when the series is read
        series.append((uid, len(files), description))
    return series


def dicom_series_files(folder: str | Path, series_uid: str | None = None) -> tuple[str, list[str]]:
    """The series UID and its files, in slice order, of a DICOM folder."""
    path = Path(folder)
    series = list_dicom_series(path)
    if not series:
        raise ValueError(f"{path} is a folder without DICOM files; give an image file or a DICOM series folder")
    if series_uid is None:
        if len(series) > 1:
            raise MultipleSeriesError(path, series)
        series_uid = series[0][0]
    elif series_uid not in [uid for uid, _, _ in series]:
        raise ValueError(f"series {series_uid} is not in {path}; it holds {', '.join(uid for uid, _, _ in series)}")
    return series_uid, list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), series_uid))


def check_dicom_slices(files: list[str], where: str) -> None:
    """Refuse a series whose slices differ in size or orientation, repeat a position, or are not
    evenly spaced (a missing slice): reading it as one volume would put slices in wrong places."""
    if len(files) < 2:
        return
    sizes, origins, directions = [], [], []
    for name in files:
        reader = sitk.ImageFileReader()
        reader.SetFileName(name)
        try:
            reader.ReadImageInformation()
        except RuntimeError as error:
            raise ValueError(f"cannot read the DICOM file {name} of {where}: {_last_line(error)}") from error
        sizes.append(reader.GetSize()[:2])
        origins.append(np.array(reader.GetOrigin()[:3], dtype=float))
        directions.append(np.array(reader.GetDirection(), dtype=float))
    if len(set(sizes)) > 1:
        shown = ", ".join(f"{c}x{r}" for c, r in sorted(set(sizes)))
        raise ValueError(f"the DICOM series in {where} mixes slice sizes ({shown}); it is not one volume: separate the slices by size")
    if any(np.abs(d - directions[0]).max() > 1e-4 for d in directions):
        raise ValueError(f"the slices of the DICOM series in {where} have different orientations; it is not one volume")
    normal = directions[0].reshape(3, 3)[:, 2]
    positions = np.array([o @ normal for o in origins])
    gaps = np.diff(positions)
    step = float(np.median(np.abs(gaps)))
    if step < 1e-6 or np.abs(gaps).min() < 1e-6:
        raise ValueError(f"the DICOM series in {where} has several slices at the same position; it is not one volume")
    uneven = np.abs(np.abs(gaps) - step) > max(1e-3, 0.01 * step)
    if uneven.any():
        k = int(np.argmax(uneven))
        raise ValueError(
            f"the DICOM series in {where} is not evenly spaced: slices are {step:g} mm apart but {abs(gaps[k]):g} mm between "
            f"slice {k + 1} and {k + 2} of {len(files)} (a missing slice?); complete the series or denoise the parts separately"
        )


def read_dicom_series(folder: str | Path, series_uid: str | None = None) -> tuple[sitk.Image, list[str]]:
    """A DICOM series as a volume, and its files in the volume's slice order."""
    series_uid, files = dicom_series_files(folder, series_uid)
    where = f"{folder}" + (f" (series {series_uid})" if len(list_dicom_series(folder)) > 1 else "")
    check_dicom_slices(files, where)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        return reader.Execute(), files
    except RuntimeError as error:
        raise ValueError(f"cannot read the DICOM series in {where}: {_last_line(error)}") from error


def read_image(path: str | Path, series_uid: str | None = None) -> sitk.Image:
    """A scan from a file or a DICOM series folder."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"input not found: {path}")
    if path.is_dir():
        return read_dicom_series(path, series_uid)[0]
    check_complete(path)
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise ValueError(f"cannot read {path} as an image: {_last_line(error)}") from error


def _nifti_expected_size(header: bytes) -> int | None:
    """Bytes a single-file NIfTI-1/2 must hold according to its header, or None if not NIfTI."""
    for endian in ("<", ">"):
        kind = struct.unpack(endian + "i", header[:4])[0] if len(header) >= 4 else 0
        if kind == 348 and len(header) >= 348:
            dims = struct.unpack(endian + "8h", header[40:56])
            bitpix = struct.unpack(endian + "h", header[72:74])[0]
            offset = max(int(struct.unpack(endian + "f", header[108:112])[0]), 352)
            break
        if kind == 540 and len(header) >= 540:
            dims = struct.unpack(endian + "8q", header[16:80])
            bitpix = struct.unpack(endian + "h", header[14:16])[0]
            offset = max(struct.unpack(endian + "q", header[168:176])[0], 544)
            break
    else:
        return None
    count = 1
    for d in dims[1 : 1 + max(0, min(int(dims[0]), 7))]:
        count *= max(int(d), 1)
    return offset + count * max(int(bitpix), 0) // 8


def check_complete(path: str | Path) -> None:
    """Refuse a NIfTI file that is shorter than its header says (an interrupted copy): SimpleITK
    would read the missing part as zeros. A .nii.gz must also be a complete gzip stream."""
    path = Path(path)
    name = path.name.lower()
    if not name.endswith(NIFTI_SUFFIXES):
        return
    try:
        with open(path, "rb") as stream:
            compressed = stream.read(2) == b"\x1f\x8b"  # a .nii.gz may hold an uncompressed NIfTI
    except OSError as error:
        raise ValueError(f"cannot read {path}: {error.strerror or error}") from error
    size, header = 0, b""
    try:
        if compressed:
            with gzip.open(path, "rb") as stream:
                while chunk := stream.read(1 << 20):
                    if len(header) < 544:
                        header += chunk[: 544 - len(header)]
                    size += len(chunk)
        else:
            with open(path, "rb") as stream:
                header = stream.read(544)
            size = path.stat().st_size
    except (EOFError, OSError, zlib.error) as error:
        raise ValueError(f"{path} is damaged or truncated (incomplete gzip data: {error}); copy it again") from error
    expected = _nifti_expected_size(header)
    if expected is not None and size < expected:
        raise ValueError(f"{path} is truncated: it holds {size} bytes of image data where its header needs {expected}; copy it again")


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


def is_sheared(image: sitk.Image) -> bool:
    """True if the image axes are not perpendicular (a sheared direction matrix)."""
    n = image.GetDimension()
    direction = np.array(image.GetDirection(), dtype=float).reshape(n, n)
    unit = direction / np.linalg.norm(direction, axis=0, keepdims=True)
    return bool(np.abs(unit.T @ unit - np.eye(n)).max() > 1e-4)


def check_geometry_fits(image: sitk.Image, path: str | Path) -> None:
    """Refuse, before any work, an output format that cannot store the image's geometry."""
    if output_suffix(path) in NIFTI_SUFFIXES and is_sheared(image):
        raise ValueError(
            f"the image's axes are not perpendicular (a sheared direction); NIfTI cannot store that and would silently "
            f"straighten it: write {Path(path).name} as .nrrd or .mha instead"
        )


def resolved(path: str | Path) -> Path:
    """The absolute path with '..' and symbolic links resolved: what two paths are compared by."""
    return Path(os.path.realpath(os.path.abspath(path)))


def check_output_path(path: str | Path, inputs: list[Path], folder: bool = False) -> Path:
    """Refuse an output that would overwrite an input, has no supported format, or cannot be
    written, before any work is done. Returns the output as a resolved absolute path. With
    folder=True the output is a new folder (a DICOM series)."""
    path = resolved(path)
    if not folder and output_suffix(path) is None:
        raise ValueError(f"output {path.name}: {FORMATS_HINT}, or use --output-format dicom for a DICOM series")
    for source in inputs:
        source = resolved(source)
        if path == source or path.exists() and source.exists() and path.samefile(source):
            raise ValueError(f"output {path} is the input file; choose another name (the input is never overwritten)")
        if source.is_dir() and source in path.parents:
            raise ValueError(f"output {path} lies inside the input DICOM folder {source}; write it elsewhere")
        if folder and path in source.parents:
            raise ValueError(f"output folder {path} holds the input {source}; write the DICOM series elsewhere")
    if folder:
        if path.exists() and not path.is_dir():
            raise ValueError(f"output {path} is a file; a DICOM series is written into a new folder")
        if path.is_dir() and any(path.iterdir()):
            raise ValueError(f"output folder {path} is not empty; a DICOM series is written into a new or empty folder")
    elif path.is_dir():
        raise ValueError(f"output {path} is a folder; give a file name (e.g. {path / 'denoised.nii.gz'})")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write {path}: {parent} is not a writable folder")
    return path


def creation_mode(path: Path, default: int = 0o666) -> int:
    """The mode a new output gets: an overwritten file's own mode, else `default` less the umask."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return default & ~umask


class StagedFile:
    """An output written and verified under a temporary name beside its destination; commit()
    renames it into place, discard() removes it. Nothing at the destination changes before commit."""

    def __init__(self, temporary: Path, path: Path):
        self.temporary, self.path = temporary, path

    def commit(self) -> Path:
        os.replace(self.temporary, self.path)
        return self.path

    def discard(self) -> None:
        self.temporary.unlink(missing_ok=True)


def _verify(temporary: str, image: sitk.Image, pixels: np.ndarray, path: Path) -> None:
    try:
        check_complete(temporary)
        with native_stderr_silenced():
            back = sitk.ReadImage(temporary)
    except (RuntimeError, ValueError) as error:
        raise ValueError(f"writing {path} failed: the file read back is incomplete or damaged; is the disk full?") from error
    same = (
        back.GetSize() == image.GetSize()
        and np.allclose(back.GetSpacing(), image.GetSpacing(), rtol=1e-5, atol=1e-6)
        and np.allclose(back.GetOrigin(), image.GetOrigin(), rtol=1e-5, atol=1e-4)
        and np.allclose(back.GetDirection(), image.GetDirection(), atol=1e-4)
        and np.array_equal(sitk.GetArrayViewFromImage(back), pixels)
    )
    if not same:
        raise ValueError(f"writing {path} failed: the file read back differs from what was written; is the disk full?")


def stage_like(array: np.ndarray, reference: sitk.Image, path: str | Path) -> StagedFile:
    """Write a float32 array with the reference's geometry only to a temporary file beside `path`,
    read it back and compare, and return it staged for commit()."""
    path = Path(path)
    suffix = output_suffix(path)
    if suffix is None:
        raise ValueError(f"output {path.name}: {FORMATS_HINT}")
    check_geometry_fits(reference, path)
    pixels = np.ascontiguousarray(array, dtype=np.float32)
    image = sitk.GetImageFromArray(pixels)
    image.SetSpacing(reference.GetSpacing())
    image.SetOrigin(reference.GetOrigin())
    image.SetDirection(reference.GetDirection())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    except OSError as error:
        raise ValueError(f"cannot write {path}: {error.strerror or error}") from error
    os.close(handle)
    try:
        os.chmod(temporary, creation_mode(path))
        try:
            with native_stderr_silenced():
                sitk.WriteImage(image, temporary, True)
        except RuntimeError as error:
            raise ValueError(f"writing {path} failed: {_last_line(error)}") from error
        _verify(temporary, image, pixels, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return StagedFile(Path(temporary), path)


def write_like(array: np.ndarray, reference: sitk.Image, path: str | Path) -> Path:
    """Write a float32 array with the reference's geometry only, atomically and verified."""
    return stage_like(array, reference, path).commit()


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
        elif entry.is_dir() and not entry.name.startswith(".") and sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(entry)):
            scans.append(entry)
    return scans
