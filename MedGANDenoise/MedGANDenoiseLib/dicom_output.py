"""DICOM in, DICOM out: a denoised (or noise) volume written as a derived series of its source.

The derived series is what a PACS files beside the original: a new SeriesInstanceUID and new
SOPInstanceUIDs in the same study (StudyInstanceUID) and frame of reference, one image per source
slice at the same ImagePositionPatient and ImageOrientationPatient, ImageType DERIVED\\SECONDARY,
a SeriesDescription and DerivationDescription saying what was done, and a SourceImageSequence
pointing at the source image of each slice. Pixels are signed 16-bit with a RescaleSlope and
RescaleIntercept chosen for the series, so every value read back is within half a rescale step of
the float value that was denoised.

With deidentify=True each image goes through DICOM PS3.15 Annex E's Basic Application Level
Confidentiality Profile as implemented by the `dicom-anonymizer` package (its tables are generated
from the standard): patient names and ids, dates, descriptions and private tags are removed or
replaced, and UIDs are replaced consistently within one run (so the denoised and noise series stay
in one study and frame of reference).

Like the other outputs, the series is written into a temporary folder beside the destination,
read back and compared, and only then renamed into place.
"""

from __future__ import annotations

import copy
import datetime
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .image_io import creation_mode

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
# tags of the source image that do not describe the derived pixels
DROPPED = (
    (0x0028, 0x0106), (0x0028, 0x0107), (0x0028, 0x0108), (0x0028, 0x0109), (0x0028, 0x0120), (0x0028, 0x0121),
    (0x0028, 0x1054), (0x0028, 0x3000), (0x0028, 0x3010), (0x0028, 0x0008), (0x0028, 0x0009), (0x0028, 0x2110),
    (0x0028, 0x2112), (0x0028, 0x2114), (0x0088, 0x0200), (0x0008, 0x2112), (0x0008, 0x1140), (0x0008, 0x9215),
    (0x0028, 0x1050), (0x0028, 0x1051), (0x0028, 0x1055), (0x7FE0, 0x0010),
)
TEXT = {
    "denoised": ("denoised", "Denoised by MedGANDenoise"),
    "noise": ("noise removed", "Noise removed by MedGANDenoise (source minus denoised)"),
}


def check_dicom_source(source: Path) -> None:
    """Refuse, before any work, a DICOM output for an input that is not DICOM."""
    from pydicom.misc import is_dicom

    if source.is_dir():
        return  # a folder is read as a DICOM series (or a batch of them)
    if not is_dicom(str(source)):
        raise ValueError(
            f"--output-format dicom needs a DICOM input (the derived series refers to its source images); "
            f"{source.name} is not DICOM: write .nii.gz, .nrrd or .mha instead"
        )


def rescale_for(array: np.ndarray) -> tuple[float, float]:
    """RescaleSlope and RescaleIntercept (as their DS text reads back) that map the array's range
    onto signed 16-bit with room to spare."""
    from pydicom.valuerep import format_number_as_ds

    low, high = float(array.min()), float(array.max())
    slope = (high - low) / 65000.0 if high > low else 1.0
    slope = float(format_number_as_ds(max(slope, 1e-9)))
    intercept = float(format_number_as_ds((high + low) / 2.0))
    return slope, intercept


def _clip(text: str, length: int) -> str:
    return text if len(text) <= length else text[: length - 1] + "~"


def _deidentify(dataset) -> None:
    """The basic profile applied in place; the source references are kept, their UIDs replaced
    by the same mapping that the profile applies to every UID in this run."""
    from pydicom.dataset import Dataset
    from dicomanonymizer.simpledicomanonymizer import anonymize_dataset, get_UID, initialize_actions

    references = [(item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID) for item in dataset.get("SourceImageSequence", [])]

    for version in ("dicomfields_2026c", "dicomfields_2024b", "dicomfields_2023"):
        try:
            rules = initialize_actions(version)
            break
        except (ValueError, ImportError):
            continue
    anonymize_dataset(dataset, base_rules_gen=lambda: rules, delete_private_tags=True)
    items = []
    for sop_class, sop_instance in references:
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = sop_class, get_UID(sop_instance)
        items.append(item)
    dataset.SourceImageSequence = items
    dataset.PatientIdentityRemoved = "YES"
    dataset.DeidentificationMethod = "PS3.15 basic profile (dicom-anonymizer)"
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "113100", "DCM", "Basic Application Confidentiality Profile"
    dataset.DeidentificationMethodCodeSequence = [code]


class StagedFolder:
    """A DICOM series written and verified in a temporary folder beside its destination."""

    def __init__(self, temporary: Path, path: Path):
        self.temporary, self.path = temporary, path

    def commit(self) -> Path:
        os.replace(self.temporary, self.path)  # an empty folder at the destination is replaced
        return self.path

    def discard(self) -> None:
        shutil.rmtree(self.temporary, ignore_errors=True)


def build_slices(array: np.ndarray, image: sitk.Image, files: list[str], *, kind: str, model_id: str,
                 strength: float, deidentify: bool, ensemble: int = 1) -> list:
    """The derived series as pydicom datasets, one per slice of the (k, j, i) array."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

    volume = array if array.ndim == 3 else array[np.newaxis]
    if volume.shape[0] != len(files):
        raise ValueError(
            f"DICOM output needs one source image per slice ({volume.shape[0]} slices, {len(files)} files): "
            "multi-frame DICOM input is not supported for DICOM output; write .nii.gz, .nrrd or .mha instead"
        )
    slope, intercept = rescale_for(volume)
    series_uid = generate_uid()
    now = datetime.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    suffix, derivation = TEXT[kind]
    ensembled = f", self-ensemble x{ensemble}" if ensemble > 1 else ""
    derivation = _clip(f"{derivation}, model {model_id}, strength {strength:g}{ensembled}", 1024)
    spacing = image.GetSpacing()
    direction = np.array(image.GetDirection(), dtype=float).reshape(image.GetDimension(), image.GetDimension())
    orientation = [float(v) for v in (*direction[:3, 0][:3], *direction[:3, 1][:3])] if image.GetDimension() == 3 else None
    slices = []
    for k, name in enumerate(files):
        try:
            source = pydicom.dcmread(name, stop_before_pixels=True)
        except Exception as error:  # pydicom raises several kinds for a damaged file
            raise ValueError(f"cannot read the DICOM file {name}: {error}") from error
        if int(source.get("NumberOfFrames", 1) or 1) > 1:
            raise ValueError(f"{name} is a multi-frame DICOM image; DICOM output supports single-frame series only")
        ds = Dataset()
        for element in source:
            if element.tag.group != 0x0002 and not element.tag.is_private and (element.tag.group, element.tag.element) not in DROPPED \
                    and element.tag.group & 0xFF00 != 0x6000:
                ds.add(copy.deepcopy(element))
        sop_class = source.get("SOPClassUID", SECONDARY_CAPTURE)
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = generate_uid()
        ds.SeriesInstanceUID = series_uid
        if "StudyInstanceUID" not in ds:
            ds.StudyInstanceUID = generate_uid()
        ds.SeriesNumber = (int(source.get("SeriesNumber", 0) or 0) % 100000) + (1000 if kind == "denoised" else 2000)
        ds.InstanceNumber = k + 1
        ds.ImageType = ["DERIVED", "SECONDARY", *list(source.get("ImageType", []))[2:]]
        ds.SeriesDescription = _clip(f"{source.get('SeriesDescription', '')} {suffix}".strip(), 64)
        ds.DerivationDescription = derivation
        reference = Dataset()
        reference.ReferencedSOPClassUID = source.get("SOPClassUID", SECONDARY_CAPTURE)
        reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
        ds.SourceImageSequence = [reference]
        ds.SeriesDate = ds.ContentDate = ds.InstanceCreationDate = date
        ds.SeriesTime = ds.ContentTime = ds.InstanceCreationTime = time
        position = image.TransformIndexToPhysicalPoint((0, 0, k)) if image.GetDimension() == 3 else None
        if position is not None:
            if "ImagePositionPatient" in source and np.abs(np.array(source.ImagePositionPatient, dtype=float) - position).max() > 1e-2:
                raise ValueError(f"the slice order of {Path(name).parent} could not be matched to its files; DICOM output is not possible")
            ds.ImagePositionPatient = [float(f"{v:.6f}") for v in position]
            ds.ImageOrientationPatient = [float(f"{v:.8f}") for v in orientation]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]
        stored = np.clip(np.rint((volume[k].astype(np.float64) - intercept) / slope), -32768, 32767).astype("<i2")
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = stored.shape
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.PixelData = stored.tobytes()
        if deidentify:
            _deidentify(ds)
            ds.SeriesDescription = _clip(f"{kind} (MedGANDenoise)", 64)  # the profile removes descriptions
            ds.DerivationDescription = derivation
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.file_meta = meta
        slices.append((ds, stored))
    return slices


def stage_dicom_series(array: np.ndarray, image: sitk.Image, files: list[str], path: str | Path, *, kind: str = "denoised",
                       model_id: str = "", strength: float = 1.0, deidentify: bool = False, ensemble: int = 1) -> StagedFolder:
    """Write the derived series into a temporary folder beside `path`, read every file back and
    compare it, and return it staged for commit()."""
    import pydicom

    path = Path(path)
    slices = build_slices(array, image, files, kind=kind, model_id=model_id, strength=strength, deidentify=deidentify,
                          ensemble=ensemble)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    except OSError as error:
        raise ValueError(f"cannot write {path}: {error.strerror or error}") from error
    try:
        os.chmod(temporary, creation_mode(path, 0o777))
        for number, (ds, stored) in enumerate(slices, 1):
            name = temporary / f"IM{number:05d}.dcm"
            try:
                ds.save_as(name, enforce_file_format=True)
                back = pydicom.dcmread(name)
                same = back.SOPInstanceUID == ds.SOPInstanceUID and np.array_equal(back.pixel_array, stored)
            except OSError as error:
                raise ValueError(f"writing {path} failed: {error.strerror or error}") from error
            except Exception as error:  # a damaged file read back
                raise ValueError(f"writing {path} failed (the file read back is damaged: {error}); is the disk full?") from error
            if not same:
                raise ValueError(f"writing {path} failed: the file read back differs from what was written; is the disk full?")
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return StagedFolder(temporary, path)
