"""DICOM in, DICOM out: a real DICOM series denoised into a derived series and read back.

The model is a tiny untrained network (plumbing, not quality), as in test_cli.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from MedGANDenoiseLib import cli
from MedGANDenoiseLib.image_io import read_image
from test_cli import PATIENT_NAME, ct_volume, digest, models, run, write_dicom_series, write_scan  # noqa: F401 (fixture)

STUDY = "1.2.826.0.1.3680043.2.1125.1"
SERIES = "1.2.826.0.1.3680043.2.1125.2.7"
FRAME = "1.2.826.0.1.3680043.2.1125.9.9"


def source_series(folder: Path, shape=(5, 20, 18)) -> Path:
    write_dicom_series(folder, ct_volume(shape), SERIES, "axial", extra={"0020|0052": FRAME})
    return folder


def datasets(folder: Path) -> list[pydicom.Dataset]:
    return sorted((pydicom.dcmread(f) for f in folder.iterdir()), key=lambda d: float(d.ImagePositionPatient[2]))


def test_the_derivation_names_the_self_ensemble(tmp_path, models, capsys):
    series = source_series(tmp_path / "series")
    code, err = run([str(series), "-o", str(tmp_path / "den"), "--output-format", "dicom", "--modality", "CT", "--ensemble", "8"],
                    models, capsys)
    assert code == 0, err
    assert all("strength 1, self-ensemble x8" in d.DerivationDescription for d in datasets(tmp_path / "den"))


def test_derived_series_round_trips_with_uids_geometry_and_references(tmp_path, models, capsys):
    series = source_series(tmp_path / "series")
    before = {f.name: digest(f) for f in series.iterdir()}
    out, noise = tmp_path / "den", tmp_path / "noise"
    code, err = run([str(series), "-o", str(out), "--noise", str(noise), "--output-format", "dicom", "--modality", "CT"], models, capsys)
    assert code == 0, err
    assert {f.name: digest(f) for f in series.iterdir()} == before
    # the float result of the same run, for the round trip
    code, err = run([str(series), "-o", str(tmp_path / "den.nii.gz"), "--noise", str(tmp_path / "noise.nii.gz"), "--modality", "CT"], models, capsys)
    assert code == 0, err

    sources = datasets(series)
    for folder, kind, float_file in ((out, "denoised", "den.nii.gz"), (noise, "noise", "noise.nii.gz")):
        derived = datasets(folder)
        assert len(derived) == len(sources)
        assert len({d.SeriesInstanceUID for d in derived}) == 1 and derived[0].SeriesInstanceUID != SERIES
        assert len({d.SOPInstanceUID for d in derived}) == len(derived)
        assert not {d.SOPInstanceUID for d in derived} & {s.SOPInstanceUID for s in sources}
        for d, s in zip(derived, sources):
            assert d.StudyInstanceUID == STUDY and d.FrameOfReferenceUID == FRAME
            assert list(d.ImageType)[:2] == ["DERIVED", "SECONDARY"]
            assert kind.split()[0] in d.SeriesDescription.lower() and "MedGANDenoise" in d.DerivationDescription
            assert "self-ensemble" not in d.DerivationDescription
            assert d.SourceImageSequence[0].ReferencedSOPInstanceUID == s.SOPInstanceUID
            np.testing.assert_allclose([float(v) for v in d.ImagePositionPatient], [float(v) for v in s.ImagePositionPatient], atol=1e-5)
            np.testing.assert_allclose([float(v) for v in d.ImageOrientationPatient], [float(v) for v in s.ImageOrientationPatient], atol=1e-6)
            assert str(d.PatientName) == PATIENT_NAME  # a PACS files it beside the original
        assert derived[0].SeriesInstanceUID != datasets(out if folder is noise else noise)[0].SeriesInstanceUID
        step = float(derived[0].RescaleSlope)
        back, original = read_image(folder), read_image(series)
        expected = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / float_file)))
        assert np.abs(sitk.GetArrayFromImage(back) - expected).max() <= step / 2 + 1e-4
        assert back.GetSize() == original.GetSize()
        np.testing.assert_allclose(back.GetSpacing(), original.GetSpacing(), atol=1e-6)
        np.testing.assert_allclose(back.GetOrigin(), original.GetOrigin(), atol=1e-5)
        np.testing.assert_allclose(back.GetDirection(), original.GetDirection(), atol=1e-6)


def test_deidentify_applies_the_basic_profile(tmp_path, models, capsys):
    series = source_series(tmp_path / "series", (3, 16, 16))
    out, noise = tmp_path / "den", tmp_path / "noise"
    code, err = run([str(series), "-o", str(out), "--noise", str(noise), "--output-format", "dicom", "--deidentify", "--modality", "CT"],
                    models, capsys)
    assert code == 0, err
    denoised, noises = datasets(out), datasets(noise)
    for f in [*out.iterdir(), *noise.iterdir()]:
        data = f.read_bytes()
        assert PATIENT_NAME.encode() not in data and b"ID-12345" not in data and STUDY.encode() not in data
    for d in denoised + noises:
        assert d.PatientIdentityRemoved == "YES" and d.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
        assert list(d.ImageType)[:2] == ["DERIVED", "SECONDARY"] and len(d.SourceImageSequence) == 1
    # UIDs are replaced consistently: both series stay in one (new) study and frame of reference
    assert len({d.StudyInstanceUID for d in denoised + noises}) == 1
    assert len({d.FrameOfReferenceUID for d in denoised + noises}) == 1
    assert read_image(out).GetSize() == read_image(series).GetSize()


def test_batch_mode_writes_a_derived_series_per_scan(tmp_path, models, capsys):
    scans = tmp_path / "scans"
    write_dicom_series(scans / "a", ct_volume((3, 16, 16), 1), "1.2.826.0.1.3680043.2.1125.5.1", "first")
    write_dicom_series(scans / "b", ct_volume((3, 16, 16), 2), "1.2.826.0.1.3680043.2.1125.5.2", "second")
    code, err = run([str(scans), "-o", str(tmp_path / "results"), "--output-format", "dicom", "--save-noise", "--modality", "CT"], models, capsys)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["a_denoised", "a_noise", "b_denoised", "b_noise"]
    assert all(len(list(p.iterdir())) == 3 for p in (tmp_path / "results").iterdir())
    assert not [p for p in (tmp_path / "results").iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(
    "case, message",
    [
        ("nifti input", "needs a DICOM input"),
        ("not empty", "is not empty"),
        ("file name", "writes a series into a folder"),
        ("deidentify nifti", "--deidentify is for --output-format dicom"),
    ],
)
def test_dicom_output_refusals_write_nothing(tmp_path, models, capsys, case, message):
    series = source_series(tmp_path / "series", (3, 16, 16))
    nifti = write_scan(tmp_path / "scan.nii.gz", ct_volume())
    out = tmp_path / "out"
    keep = None
    args = {
        "nifti input": [str(nifti), "-o", str(out), "--output-format", "dicom"],
        "not empty": [str(series), "-o", str(out), "--output-format", "dicom"],
        "file name": [str(series), "-o", str(tmp_path / "out.nii.gz"), "--output-format", "dicom"],
        "deidentify nifti": [str(series), "-o", str(tmp_path / "out.nii.gz"), "--deidentify"],
    }[case]
    if case == "not empty":
        out.mkdir()
        keep = out / "mine.txt"
        keep.write_text("my notes")
    code, err = run([*args, "--modality", "CT"], models, capsys)
    assert code == 2 and message in err and err.startswith("medgan-denoise: error:") and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["series", "scan.nii.gz"] + (["out"] if keep else []))
    if keep:
        assert keep.read_text() == "my notes" and [p.name for p in out.iterdir()] == ["mine.txt"]


def test_single_dicom_file_gives_a_one_image_series(tmp_path, models, capsys):
    series = source_series(tmp_path / "series", (3, 16, 16))
    single = sorted(series.iterdir())[1]
    out = tmp_path / "one"
    assert cli.main([str(single), "-o", str(out), "--output-format", "dicom", "--modality", "CT", "--models-dir", str(models), "--quiet"]) == 0
    (derived,) = datasets(out)
    assert derived.SourceImageSequence[0].ReferencedSOPInstanceUID == pydicom.dcmread(single).SOPInstanceUID


def test_disk_full_while_writing_a_dicom_series_leaves_nothing(tmp_path, models):
    from test_hostile_inputs import cli_process, one_line

    series = source_series(tmp_path / "series", (6, 64, 64))
    out = tmp_path / "out"
    out.mkdir()
    result = cli_process([str(series), "-o", str(out / "den"), "--output-format", "dicom", "--modality", "CT"], models, limit=6000)
    assert result.returncode == 2 and one_line(result.stderr) and "failed" in result.stderr, result.stderr
    assert list(out.iterdir()) == []
