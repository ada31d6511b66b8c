"""The command-line tool on real files: geometry, exactness, the input untouched, bad inputs.

The model here is a tiny untrained network: it checks plumbing, never denoising quality.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from MedGANDenoiseLib import cli
from MedGANDenoiseLib.engine import validate_volume
from MedGANDenoiseLib.networks import build_generator
from MedGANDenoiseLib.registry import write_model

OBLIQUE = (0.8660254, -0.5, 0.0, 0.5, 0.8660254, 0.0, 0.0, 0.0, 1.0)  # 30 degrees about z
PATIENT_NAME = "Doe^Jane^Secret"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    for modality in ("CT", "MR"):
        write_model(build_generator("unet", {"base_width": 4, "depth": 2}), folder, model_id=f"tiny-{modality.lower()}",
                    modality=modality, variant="unet", architecture={"variant": "unet", "predictor": {"base_width": 4, "depth": 2}},
                    normalization={"kind": "fixed", "offset": -1024.0, "scale": 4096.0} if modality == "CT" else {"kind": "percentile"})
    return folder


def ct_volume(shape=(5, 24, 20), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    volume = rng.normal(40, 20, shape)
    volume[:, :4] = -1000
    return volume.astype(np.int16)


def write_scan(path: Path, array: np.ndarray, oblique: bool = True) -> Path:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.7, 0.9, 2.5)[: image.GetDimension()])
    image.SetOrigin((-12.5, 30.0, 7.25)[: image.GetDimension()])
    if oblique and image.GetDimension() == 3:
        image.SetDirection(OBLIQUE)
    sitk.WriteImage(image, str(path))
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run(args: list[str], models: Path, capsys) -> tuple[int, str]:
    code = cli.main([*args, "--models-dir", str(models), "--quiet"])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_outputs_keep_geometry_and_sum_to_the_input_and_input_is_untouched(tmp_path, models, capsys, suffix):
    source = write_scan(tmp_path / f"scan{suffix}", ct_volume())
    before = digest(source)
    code, err = run([str(source), "-o", str(tmp_path / f"d{suffix}"), "--noise", str(tmp_path / f"n{suffix}"), "--modality", "CT"], models, capsys)
    assert code == 0, err
    assert digest(source) == before
    original = sitk.ReadImage(str(source))
    denoised, noise = sitk.ReadImage(str(tmp_path / f"d{suffix}")), sitk.ReadImage(str(tmp_path / f"n{suffix}"))
    for output in (denoised, noise):
        assert output.GetSize() == original.GetSize()
        np.testing.assert_allclose(output.GetSpacing(), original.GetSpacing(), rtol=1e-6)
        np.testing.assert_allclose(output.GetOrigin(), original.GetOrigin(), atol=1e-5)
        np.testing.assert_allclose(output.GetDirection(), OBLIQUE, atol=1e-6)
    total = sitk.GetArrayFromImage(denoised) + sitk.GetArrayFromImage(noise)
    np.testing.assert_allclose(total, sitk.GetArrayFromImage(original), atol=1e-3)
    assert not np.allclose(sitk.GetArrayFromImage(noise), 0), "the network changed nothing: plumbing broken"


def test_axis_option_and_strength(tmp_path, models, capsys):
    source = write_scan(tmp_path / "scan.nii.gz", ct_volume())
    assert run([str(source), "-o", str(tmp_path / "full.nii.gz"), "--noise", str(tmp_path / "nf.nii.gz"), "--modality", "CT", "--axis", "j"], models, capsys)[0] == 0
    assert run([str(source), "-o", str(tmp_path / "half.nii.gz"), "--noise", str(tmp_path / "nh.nii.gz"), "--modality", "CT", "--axis", "j", "--strength", "0.5"], models, capsys)[0] == 0
    full = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "nf.nii.gz")))
    half = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "nh.nii.gz")))
    np.testing.assert_allclose(half, 0.5 * full, atol=1e-3)


def test_ensemble_option_reaches_the_engine_and_the_summary(tmp_path, models, capsys):
    from MedGANDenoiseLib.engine import denoise_volume
    from MedGANDenoiseLib.registry import ModelRegistry, load_model

    from conftest import write_tiny_model

    jittered = write_tiny_model(tmp_path / "jittered", model_id="jittered-ct", jitter=0.05)
    volume = ct_volume()
    source = write_scan(tmp_path / "scan.nii.gz", volume)
    code = cli.main([str(source), "-o", str(tmp_path / "e4.nii.gz"), "--modality", "CT", "--ensemble", "4", "--models-dir", str(jittered),
                     "--model", "jittered-ct", "--precision", "fp32"])
    assert code == 0
    assert "self-ensemble x4" in capsys.readouterr().out
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "e4.nii.gz")))
    model = load_model(ModelRegistry.from_folders([jittered]).get("jittered-ct"))
    expected = {n: denoise_volume(volume, model, "CT", device="cpu", precision="fp32", ensemble=n).denoised for n in (1, 4)}
    np.testing.assert_allclose(written, expected[4], atol=1e-3)
    assert np.abs(expected[4] - expected[1]).max() > 1e-2, "the ensemble is another computation than one pass"
    with pytest.raises(SystemExit) as exit_info:
        run([str(source), "-o", str(tmp_path / "x.nii.gz"), "--ensemble", "3"], models, capsys)
    assert exit_info.value.code == 2 and not (tmp_path / "x.nii.gz").exists()


def test_precision_option_reaches_the_engine(tmp_path, models, capsys):
    source = write_scan(tmp_path / "scan.nii.gz", ct_volume())
    outputs = {}
    for precision in ("fp32", "bf16"):
        code, _ = run([str(source), "-o", str(tmp_path / f"{precision}.nii.gz"), "--model", "ct-unet-w32", "--precision", precision],
                      models, capsys)
        assert code == 0
        outputs[precision] = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / f"{precision}.nii.gz")))
    difference = np.abs(outputs["fp32"] - outputs["bf16"])
    assert 0 < difference.max() < 2, "bf16 is a different computation, close to fp32"
    with pytest.raises(SystemExit) as exit_info:
        run([str(source), "-o", str(tmp_path / "x.nii.gz"), "--precision", "int8"], models, capsys)
    assert exit_info.value.code == 2 and not (tmp_path / "x.nii.gz").exists()


def write_dicom_series(folder: Path, array: np.ndarray, series_uid: str, description: str, extra: dict | None = None,
                       positions=None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k, plane in enumerate(array):
        z = 2.5 * k if positions is None else positions[k]
        image = sitk.GetImageFromArray(plane[np.newaxis])
        image.SetSpacing((0.7, 0.9, 2.5))
        image.SetOrigin((0.0, 0.0, z))
        for tag, value in {"0010|0010": PATIENT_NAME, "0010|0020": "ID-12345", "0008|0060": "CT",
                           "0020|000e": series_uid, "0020|000d": "1.2.826.0.1.3680043.2.1125.1", "0008|103e": description,
                           "0020|0013": str(k + 1), "0020|0032": f"0\\0\\{z}", "0020|0037": "1\\0\\0\\0\\1\\0",
                           "0028|1052": "0", "0028|1053": "1", **(extra or {})}.items():
            image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"s{series_uid.split('.')[-1]}_{k:03d}.dcm"))
        writer.Execute(image)


def test_dicom_series_folder_and_single_file_without_patient_data(tmp_path, models, capsys):
    series = tmp_path / "series"
    write_dicom_series(series, ct_volume((4, 20, 20)), "1.2.826.0.1.3680043.2.1125.2.1", "axial")
    out = tmp_path / "out.nrrd"
    code, err = run([str(series), "-o", str(out), "--modality", "CT"], models, capsys)
    assert code == 0, err
    image = sitk.ReadImage(str(out))
    assert image.GetSize() == (20, 20, 4)
    assert not [k for k in image.GetMetaDataKeys() if k.startswith("0010|")]
    assert PATIENT_NAME.encode() not in out.read_bytes() and b"ID-12345" not in out.read_bytes()

    single = sorted(series.iterdir())[0]
    out_single = tmp_path / "single.nii.gz"
    assert run([str(single), "-o", str(out_single), "--modality", "CT"], models, capsys)[0] == 0
    assert sitk.ReadImage(str(out_single)).GetSize()[:2] == (20, 20)


def test_dicom_folder_with_two_series_asks_which(tmp_path, models, capsys):
    folder = tmp_path / "mixed"
    write_dicom_series(folder, ct_volume((3, 16, 16), 1), "1.2.826.0.1.3680043.2.1125.3.1", "first")
    write_dicom_series(folder, ct_volume((3, 16, 16), 2), "1.2.826.0.1.3680043.2.1125.3.2", "second")
    out = tmp_path / "out.nii.gz"
    code, err = run([str(folder), "-o", str(out), "--modality", "CT"], models, capsys)
    assert code == 2 and "2 DICOM series" in err and "3.1" in err and "3.2" in err and "--series" in err
    assert not out.exists()
    assert run([str(folder), "-o", str(out), "--modality", "CT", "--series", "1.2.826.0.1.3680043.2.1125.3.2"], models, capsys)[0] == 0
    assert out.exists()
    code, err = run([str(folder), "-o", str(tmp_path / "each"), "--modality", "CT", "--all-series"], models, capsys)
    assert code == 0, err
    assert len(list((tmp_path / "each").glob("*_denoised.nii.gz"))) == 2


def test_batch_folder_reports_the_bad_scan_and_goes_on(tmp_path, models, capsys):
    scans = tmp_path / "scans"
    scans.mkdir()
    write_scan(scans / "good.nii.gz", ct_volume())
    write_scan(scans / "flat.nrrd", np.full((3, 12, 12), 5, dtype=np.int16))
    code, err = run([str(scans), "-o", str(tmp_path / "results"), "--modality", "CT", "--save-noise"], models, capsys)
    assert code == 2
    assert "flat.nrrd" in err and "constant" in err and "1 of 2 scans failed" in err
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["good_denoised.nii.gz", "good_noise.nii.gz"]


def four_d(path: Path) -> Path:
    sitk.WriteImage(sitk.JoinSeries([sitk.GetImageFromArray(ct_volume((2, 8, 8), s)) for s in range(2)]), str(path))
    return path


def rgb(path: Path) -> Path:
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((6, 8, 3), dtype=np.uint8) + np.arange(8, dtype=np.uint8)[:, None], isVector=True), str(path))
    return path


def nan_scan(path: Path) -> Path:
    array = ct_volume().astype(np.float32)
    array[1, 2, 3] = np.nan
    return write_scan(path, array)


@pytest.mark.parametrize(
    "make_input, extra, message",
    [
        (four_d, ["--modality", "CT"], "4-D"),
        (rgb, ["--modality", "CT"], "components per voxel"),
        (lambda p: write_scan(p, np.full((3, 8, 8), -1000, np.int16)), ["--modality", "CT"], "constant"),
        (nan_scan, ["--modality", "CT"], "NaN"),
        (lambda p: write_scan(p, ct_volume()), ["--modality", "SPECTRAL"], "unknown modality"),
        (lambda p: write_scan(p, ct_volume()), ["--modality", "XRAY", "--variant", "srdensenet"], "no 'srdensenet' model for XRAY"),
        (lambda p: write_scan(p, ct_volume()), ["--modality", "CT", "--model", "tiny-mr"], "is a MR model"),
        (lambda p: write_scan(p, ct_volume()), ["--modality", "CT", "--model", "nope"], "unknown model 'nope'"),
        (lambda p: write_scan(p, ct_volume()), ["--modality", "XRAY", "--variant", "dncnn"], "no 'dncnn' model for XRAY"),
    ],
)
def test_bad_input_gives_one_clear_line_and_writes_nothing(tmp_path, models, capsys, make_input, extra, message):
    source = make_input(tmp_path / "input.nrrd")
    before = digest(source)
    out, noise = tmp_path / "out" / "d.nii.gz", tmp_path / "out" / "n.nii.gz"
    code, err = run([str(source), "-o", str(out), "--noise", str(noise), *extra], models, capsys)
    assert code == 2
    assert message in err, err
    assert err.startswith("medgan-denoise: error:") and err.count("\n") == 1
    assert not out.exists() and not noise.exists()
    assert digest(source) == before


def test_unknown_variant_is_a_usage_error(tmp_path, models, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([str(write_scan(tmp_path / "s.nrrd", ct_volume())), "-o", str(tmp_path / "o.nrrd"), "--variant", "resnet"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'resnet'" in capsys.readouterr().err


def test_empty_image_is_refused_by_the_engine():
    # SimpleITK cannot write a zero-size image, so the engine's check is tested directly.
    with pytest.raises(ValueError, match="empty"):
        validate_volume(np.zeros((0, 8, 8), dtype=np.int16))


def corrupt_copy(models: Path, tmp_path: Path, damage) -> Path:
    folder = tmp_path / "damaged"
    folder.mkdir()
    for f in models.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    damage(folder / "tiny-ct.pt")
    return folder


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: p.unlink(), "weights file of model 'tiny-ct' is missing"),
        (lambda p: p.write_bytes(p.read_bytes()[:-10] + b"0123456789"), "does not match the registry's SHA-256"),
    ],
)
def test_missing_or_corrupt_weights(tmp_path, models, capsys, damage, message):
    damaged = corrupt_copy(models, tmp_path, damage)
    source = write_scan(tmp_path / "s.nii.gz", ct_volume())
    out = tmp_path / "o.nii.gz"
    code = cli.main([str(source), "-o", str(out), "--modality", "CT", "--models-dir", str(damaged), "--quiet"])
    assert code == 2 and message in capsys.readouterr().err
    assert not out.exists()


def test_output_equal_to_input_is_refused_also_through_another_path(tmp_path, models, capsys, monkeypatch):
    source = write_scan(tmp_path / "scan.nii.gz", ct_volume())
    before = digest(source)
    monkeypatch.chdir(tmp_path)
    for output in (str(source), "./scan.nii.gz", str(tmp_path / "sub" / ".." / "scan.nii.gz")):
        code, err = run([str(source), "-o", output, "--modality", "CT"], models, capsys)
        assert code == 2 and "is the input file" in err
    code, err = run([str(source), "-o", str(tmp_path / "d.nii.gz"), "--noise", "scan.nii.gz", "--modality", "CT"], models, capsys)
    assert code == 2 and "is the input file" in err
    assert digest(source) == before and not (tmp_path / "d.nii.gz").exists()


def test_output_folder_that_cannot_be_written(tmp_path, models, capsys):
    source = write_scan(tmp_path / "scan.nii.gz", ct_volume())
    blocker = tmp_path / "a_file.txt"
    blocker.write_text("not a folder")
    code, err = run([str(source), "-o", str(blocker / "out.nii.gz"), "--modality", "CT"], models, capsys)
    assert code == 2 and "not a writable folder" in err
    if os.geteuid() != 0:  # root ignores permission bits
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        code, err = run([str(source), "-o", str(locked / "out.nii.gz"), "--modality", "CT"], models, capsys)
        assert code == 2 and "not a writable folder" in err


def test_unsupported_output_format(tmp_path, models, capsys):
    source = write_scan(tmp_path / "scan.nii.gz", ct_volume())
    code, err = run([str(source), "-o", str(tmp_path / "out.dcm"), "--modality", "CT"], models, capsys)
    assert code == 2 and "write NIfTI" in err


def test_console_script_help_and_list_models(models):
    script = Path(sys.executable).with_name("medgan-denoise")
    help_text = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=True).stdout
    assert "--modality" in help_text and "--list-models" in help_text
    listing = subprocess.run([str(script), "--list-models", "--models-dir", str(models)], capture_output=True, text=True, check=True).stdout
    assert "tiny-ct" in listing and "tiny-mr" in listing
