"""Training data: reading scans, pairing, slab splits, patches; the data fetcher without network."""

from __future__ import annotations

import io
import os
import plistlib
import tarfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from MedGANDenoiseLib.normalization import Normalizer
from medgan_training import data_fetch
from medgan_training.datasets import PatchDataset, SlicePair, load_volume, pair_folders, simulate_pairs, split_slabs

CT = Normalizer(kind="fixed", offset=-1024.0, scale=4096.0)


def write(path: Path, array: np.ndarray, spacing=(0.5, 0.6, 2.0)) -> Path:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))
    return path


def test_load_volume_reads_files_with_spacing(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)
    volume, spacing = load_volume(write(tmp_path / "a.nrrd", array))
    np.testing.assert_array_equal(volume, array)
    assert volume.dtype == np.float32 and spacing == pytest.approx((0.5, 0.6, 2.0))
    with pytest.raises(ValueError, match="no such file"):
        load_volume(tmp_path / "missing.nii.gz")


def test_pairing_by_name_and_the_unmatched_error(tmp_path):
    (tmp_path / "low").mkdir()
    (tmp_path / "high").mkdir()
    for name in ("case1", "case2"):
        write(tmp_path / "low" / f"{name}.nii.gz", np.zeros((2, 4, 4), np.int16))
        write(tmp_path / "high" / f"{name}.nrrd", np.zeros((2, 4, 4), np.int16))
    pairs = pair_folders(tmp_path / "low", tmp_path / "high")
    assert [(a.name, b.name) for a, b in pairs] == [("case1.nii.gz", "case1.nrrd"), ("case2.nii.gz", "case2.nrrd")]
    write(tmp_path / "low" / "case3.nii.gz", np.zeros((2, 4, 4), np.int16))
    with pytest.raises(ValueError, match="no partner.*case3"):
        pair_folders(tmp_path / "low", tmp_path / "high")


@pytest.mark.parametrize("position", [0.0, 0.5, 1.0])
def test_validation_is_one_contiguous_slab_with_a_gap(position):
    train, val = split_slabs(100, 0.15, gap=2, position=position)
    assert len(val) == 15 and list(val) == list(range(val.start, val.stop))
    assert not set(train) & set(val)
    assert all(i < val.start - 2 or i >= val.stop + 2 for i in train)
    assert len(train) + len(val) >= 100 - 4


def body_pair(size=64) -> SlicePair:
    clean = np.full((size, size), -1000.0, dtype=np.float32)
    clean[40:60, 40:60] = 50.0  # a small body in a sea of air
    noisy = clean + 7.0
    return SlicePair(noisy, clean, CT.fit(clean), foreground=-500.0)


def test_patches_are_normalised_tensors_biased_toward_the_body():
    dataset = PatchDataset([body_pair()], CT, patch_size=16, samples_per_epoch=40, seed=0)
    fractions = []
    for i in range(len(dataset)):
        noisy, clean = dataset[i]
        assert noisy.shape == (1, 16, 16) and noisy.dtype.is_floating_point
        torch_diff = (noisy - clean).numpy()
        np.testing.assert_allclose(torch_diff, 7.0 / 4096, atol=1e-6)  # flips/rotations keep the pair aligned
        fractions.append(float((clean > (-500 + 1024) / 4096).float().mean()))
    assert np.mean(np.array(fractions) >= 0.3) > 0.9  # an unbiased sampler would hit the body ~10 % of the time


def test_same_seed_and_epoch_give_the_same_patches():
    a = PatchDataset([body_pair()], CT, patch_size=16, samples_per_epoch=8, seed=3)
    b = PatchDataset([body_pair()], CT, patch_size=16, samples_per_epoch=8, seed=3)
    assert all((a[i][0] == b[i][0]).all() for i in range(8))
    b.set_epoch(1)
    assert any((a[i][0] != b[i][0]).any() for i in range(8))
    whole = PatchDataset([body_pair()], CT, patch_size=None, samples_per_epoch=1, augment=False)
    assert whole[0][0].shape == (1, 64, 64)
    with pytest.raises(ValueError, match="larger than the smallest slice"):
        PatchDataset([body_pair()], CT, patch_size=128, samples_per_epoch=1)


def test_balanced_scans_weigh_a_one_slice_scan_as_much_as_a_long_one():
    """Nine pairs of scan 0 and one of scan 1 (told apart by their offset): by slice, scan 1 gives
    about a tenth of the patches; balanced, about half."""
    def pair(scan: int) -> SlicePair:
        clean = np.full((32, 32), 50.0, dtype=np.float32)
        return SlicePair(clean + 10.0 * (scan + 1), clean, CT.fit(clean), foreground=-500.0, scan=scan)

    pairs = [pair(0) for _ in range(9)] + [pair(1)]
    share = {}
    for balance in (False, True):
        dataset = PatchDataset(pairs, CT, patch_size=16, samples_per_epoch=400, seed=0, balance_scans=balance)
        offsets = [float((dataset[i][0] - dataset[i][1]).mean()) * 4096 for i in range(len(dataset))]
        assert set(np.round(offsets)) <= {10.0, 20.0}
        share[balance] = np.mean(np.isclose(offsets, 20.0, atol=0.5))
    assert 0.05 < share[False] < 0.16 and 0.42 < share[True] < 0.58


def add_five(image, rng, pixel_size_mm=1.0):
    return image + 5.0


def test_simulated_pairs_do_not_depend_on_the_number_of_workers():
    from medgan_training.degradations import make_degradation

    clean = [np.random.default_rng(i).normal(0, 1, (16, 16)).astype(np.float32) for i in range(3)]
    assert all(np.allclose(n - clean[k // 2], 5.0) for k, n in enumerate(simulate_pairs(clean, add_five, 2, seed=0, pixel_size_mm=1)))
    degrade = make_degradation("gaussian:sigma=0.1")
    one = simulate_pairs(clean, degrade, 2, seed=7, pixel_size_mm=1, workers=1)
    two = simulate_pairs(clean, degrade, 2, seed=7, pixel_size_mm=1, workers=2)
    assert all(np.array_equal(a, b) for a, b in zip(one, two))


class CountingDegradation:
    """Adds noise and counts its calls (in-process, workers=1)."""

    spec = "counting:sigma=0.1"

    def __init__(self):
        self.calls = 0

    def __call__(self, image, rng, pixel_size_mm=1.0):
        self.calls += 1
        return image + rng.normal(0, 0.1, image.shape).astype(np.float32)


def test_simulated_pairs_are_cached_and_read_back_only_for_the_same_inputs(tmp_path):
    clean = [np.random.default_rng(i).normal(0, 1, (16, 16)).astype(np.float32) for i in range(3)]
    degrade = CountingDegradation()
    first = simulate_pairs(clean, degrade, 2, seed=1, pixel_size_mm=0.7, cache_dir=tmp_path)
    assert degrade.calls == 6 and len(list(tmp_path.glob("simulated-*.npy"))) == 1
    again = simulate_pairs(clean, degrade, 2, seed=1, pixel_size_mm=0.7, cache_dir=tmp_path)
    assert degrade.calls == 6, "read from the cache, not simulated again"
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    simulate_pairs(clean, degrade, 2, seed=2, pixel_size_mm=0.7, cache_dir=tmp_path)
    changed = [c + 1 for c in clean]
    simulate_pairs(changed, degrade, 2, seed=1, pixel_size_mm=0.7, cache_dir=tmp_path)
    assert degrade.calls == 18, "another seed or other slices are simulated anew"
    assert len(list(tmp_path.glob("simulated-*.npy"))) == 3


# ------------------------------------------------------------ data fetcher, no network
def make_inv3(path: Path, array: np.ndarray, spacing) -> Path:
    main = plistlib.dumps({"matrix": {"dtype": "int16", "filename": "matrix.dat", "shape": list(array.shape)},
                           "spacing": list(spacing), "modality": "CT"})
    with tarfile.open(path, "w:gz") as archive:
        for name, data in (("project/main.plist", main), ("project/matrix.dat", array.astype(np.int16).tobytes())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_inv3_reader_gives_hu_with_spacing(tmp_path):
    array = np.arange(3 * 4 * 5, dtype=np.int16).reshape(3, 4, 5) - 1024
    image = data_fetch.read_inv3(make_inv3(tmp_path / "Cranium.inv3", array, (0.9, 0.8, 1.5)))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), array)
    assert image.GetSpacing() == pytest.approx((0.9, 0.8, 1.5))


def test_sources_whose_client_is_missing_are_skipped(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))  # no apt-get, no dpkg-deb
    available = data_fetch.fetch(["ct_head", "mr_brain"], tmp_path / "cache")
    assert available == {}
    out = capsys.readouterr().out
    assert "skipped ct_head: 'apt-get' is not installed" in out and "skipped mr_brain" in out
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name != "MANIFEST.json"]
    assert data_fetch.main(["--cache", str(tmp_path / "cache"), "--sources", "ct_head"]) == 1
    assert data_fetch.main(["--cache", str(tmp_path / "cache"), "--sources", "pet_brain"]) == 2


def test_cached_files_are_not_fetched_again(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    cache = tmp_path / "cache"
    cache.mkdir()
    write(cache / "ct_head_cranium.nii.gz", np.zeros((2, 4, 4), np.int16))
    assert data_fetch.fetch(["ct_head"], cache) == {"ct_head": cache / "ct_head_cranium.nii.gz"}
    assert '"ct_head"' in (cache / "MANIFEST.json").read_text()
    assert os.environ["PATH"].endswith("empty-bin")
