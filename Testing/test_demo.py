"""The main job end to end on a cached scan (no network): outputs written with the scan's geometry."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from medgan_training import demo

from conftest import write_tiny_model


def test_demo_writes_volumes_and_pictures(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MEDGAN_DENOISE_MODELS", str(write_tiny_model(tmp_path / "models")))  # found before the shipped model
    cache = tmp_path / "data"
    cache.mkdir()
    yy, xx = np.mgrid[:40, :40] - 20
    head = np.where(np.hypot(yy, xx) < 16, 40, -1000).astype(np.int16)
    scan = sitk.GetImageFromArray(np.stack([head] * 20))
    scan.SetSpacing((0.9, 0.9, 1.5))
    scan.SetOrigin((10.0, -5.0, 3.0))
    sitk.WriteImage(scan, str(cache / "ct_head_cranium.nii.gz"))

    assert demo.main(["--data", str(cache), "--out", str(tmp_path / "out"), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "model tiny-ct: 16 slices denoised on cpu" in printed and "denoised vs full dose: PSNR" in printed
    denoised = sitk.ReadImage(str(tmp_path / "out" / "ct_head_denoised.nii.gz"))
    assert denoised.GetSize() == (40, 40, 16)
    np.testing.assert_allclose(denoised.GetOrigin(), (10.0, -5.0, 3.0 + 4 * 1.5), atol=1e-4)
    low = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "ct_head_low_dose.nii.gz")))
    noise = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "ct_head_noise.nii.gz")))
    np.testing.assert_allclose(sitk.GetArrayFromImage(denoised) + noise, low, atol=1e-3)
    assert (tmp_path / "out" / "ct_head_side_by_side.png").stat().st_size > 1000
