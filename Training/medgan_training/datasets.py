"""Training data: a user's paired low/high-quality scans, or clean scans plus a simulated degradation.

Scans are read with SimpleITK (any format it reads, or a DICOM series folder) and cut into 2-D
slices along an axis. Whole contiguous slabs are held out for validation, with a gap so that
neighbouring slices do not leak. Training samples are random patches biased toward the body
(air-only patches are rejected), with flips and 90-degree rotations, normalised exactly as
inference normalises.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import numpy as np
import SimpleITK as sitk
import torch
from torch.utils.data import Dataset

from MedGANDenoiseLib.normalization import NormalizationParams, Normalizer

SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")


def load_volume(path: str | Path) -> tuple[np.ndarray, tuple[float, ...]]:
    """A scan as a float32 (k, j, i) array and its spacing (x, y, z) in mm. A folder is read as
    one DICOM series; a folder with several series is refused with their UIDs."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"no such file or folder: {path}")
    if path.is_dir():
        series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path))
        if not series:
            raise ValueError(f"{path} holds no DICOM series")
        if len(series) > 1:
            raise ValueError(f"{path} holds {len(series)} DICOM series ({', '.join(series)}); put each in its own folder")
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), series[0]))
        image = reader.Execute()
    else:
        image = sitk.ReadImage(str(path))
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"{path} has {image.GetNumberOfComponentsPerPixel()} components per voxel; a scalar scan is needed")
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    if array.ndim == 2:
        array = array[np.newaxis]
    return array, tuple(image.GetSpacing()) + (1.0,) * (3 - image.GetDimension())


def scan_name(path: Path) -> str:
    name = path.name
    for suffix in SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def list_scans(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if p.is_dir() or p.name.lower().endswith(SUFFIXES))


def pair_folders(low_dir: str | Path, high_dir: str | Path) -> list[tuple[Path, Path]]:
    """(low, high) scan pairs matched by file name (without extension)."""
    low = {scan_name(p): p for p in list_scans(low_dir)}
    high = {scan_name(p): p for p in list_scans(high_dir)}
    unmatched = sorted(set(low) ^ set(high))
    if unmatched:
        raise ValueError(f"these scans have no partner of the same name in the other folder: {', '.join(unmatched)}")
    if not low:
        raise ValueError(f"no scans found in {low_dir}")
    return [(low[name], high[name]) for name in sorted(low)]


def split_slabs(num_slices: int, val_fraction: float = 0.15, gap: int = 2, position: float = 1.0) -> tuple[list[int], range]:
    """(training slices, validation slices). Validation is one contiguous slab whose centre lies
    at `position` (0 = first slice, 1 = last) of the scan; `gap` slices on each side of it are
    used for neither, so that neighbouring slices do not leak into training."""
    num_val = int(round(num_slices * val_fraction))
    if num_val == 0:
        return list(range(num_slices)), range(0)
    start = int(round(position * (num_slices - num_val)))
    val = range(start, start + num_val)
    train = [i for i in range(num_slices) if i < start - gap or i >= val.stop + gap]
    return train, val


def evenly_spaced(indices: Sequence[int], count: int) -> list[int]:
    if count >= len(indices):
        return list(indices)
    return [indices[i] for i in np.linspace(0, len(indices) - 1, count).round().astype(int)]


@dataclass
class SlicePair:
    """One noisy/clean slice pair in original units, with its volume's normalisation."""

    noisy: np.ndarray
    clean: np.ndarray
    params: NormalizationParams
    foreground: float  # intensity above which a pixel counts as body, not air/background
    scan: int = 0  # which training scan the pair was cut from (for balance_scans)


class ValidationSlice(NamedTuple):
    """One held-out degraded/clean slice and the normalisation of the degraded slab it was cut
    from: fitted on the degraded image, as the engine fits it on the user's (noisy) volume."""

    noisy: np.ndarray
    clean: np.ndarray
    params: NormalizationParams


def foreground_threshold(volume: np.ndarray, modality: str) -> float:
    return -500.0 if modality == "CT" else 0.1 * float(np.percentile(volume, 99.5))


def _degrade_one(args: tuple[Callable, np.ndarray, list[int], float]) -> np.ndarray:
    degrade, clean, seed, pixel_size = args
    if mp.parent_process() is not None:  # a pool worker: one thread each, the pool is the parallelism
        torch.set_num_threads(1)
    return degrade(clean, np.random.default_rng(seed), pixel_size_mm=pixel_size)


def simulate_pairs(
    clean_slices: list[np.ndarray], degrade: Callable, variants: int, seed: int, pixel_size_mm: float, workers: int = 1,
    cache_dir: str | Path | None = None,
) -> list[np.ndarray]:
    """`variants` degraded versions of each clean slice (slice-major order), each with its own
    seed derived from `seed`, so the result does not depend on the number of workers.

    With `cache_dir`, the result is stored under a key of the slices' bytes, the degradation spec,
    the seed, the variants and the pixel size, and read back by a later run with the same inputs
    (projection-domain CT simulation costs about 0.7 s per 512 x 512 slice)."""
    cache_file = None
    if cache_dir is not None:
        key = hashlib.sha256(repr((getattr(degrade, "spec", repr(degrade)), variants, seed, pixel_size_mm)).encode())
        for s in clean_slices:
            key.update(np.ascontiguousarray(s).tobytes())
        cache_file = Path(cache_dir) / f"simulated-{key.hexdigest()[:24]}.npy"
        if cache_file.is_file():
            return list(np.load(cache_file))
    jobs = [(degrade, s, [seed, i, v], pixel_size_mm) for i, s in enumerate(clean_slices) for v in range(variants)]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            noisy = list(pool.map(_degrade_one, jobs, chunksize=4))
    else:
        noisy = [_degrade_one(job) for job in jobs]
    if cache_file is not None and noisy:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        partial = cache_file.with_name(f"{cache_file.stem}.{os.getpid()}.part.npy")  # distributed ranks write alike
        np.save(partial, np.stack(noisy).astype(np.float32))
        partial.replace(cache_file)
    return noisy


class PatchDataset(Dataset):
    """Random (noisy, clean) patches, normalised, as float32 tensors of shape (1, P, P).

    Item i of epoch e is drawn from a generator seeded with (seed, e, i), so a run is the same
    with any number of data-loader workers or processes. patch_size=None gives whole slices.
    Each item comes from a pair drawn uniformly, so a scan counts by its slices (and variants and
    zooms); with balance_scans the scan is drawn uniformly first, then a pair of it, so a one-slice
    image counts as much as a long cine.
    """

    def __init__(self, pairs: list[SlicePair], normalizer: Normalizer, patch_size: int | None, samples_per_epoch: int,
                 seed: int = 0, min_foreground_fraction: float = 0.3, augment: bool = True, balance_scans: bool = False):
        if not pairs:
            raise ValueError("no training slices: give more scans or a smaller validation fraction")
        self.pairs, self.normalizer, self.patch_size = pairs, normalizer, patch_size
        self.samples_per_epoch, self.seed, self.epoch = samples_per_epoch, seed, 0
        self.min_foreground_fraction, self.augment = min_foreground_fraction, augment
        scans: dict[int, list[int]] = {}
        for index, pair in enumerate(pairs):
            scans.setdefault(pair.scan, []).append(index)
        self._pairs_of_scan = list(scans.values()) if balance_scans else None
        # candidate patch centres: (a subsample of) the body pixels of each slice
        self._body = [np.flatnonzero(p.clean > p.foreground)[::4].astype(np.int32) for p in pairs]
        smallest = min(min(p.clean.shape) for p in pairs)
        if patch_size is not None and patch_size > smallest:
            raise ValueError(f"patch size {patch_size} is larger than the smallest slice ({smallest} pixels)")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.samples_per_epoch

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        if self._pairs_of_scan is None:
            which = int(rng.integers(len(self.pairs)))
        else:
            of_scan = self._pairs_of_scan[int(rng.integers(len(self._pairs_of_scan)))]
            which = of_scan[int(rng.integers(len(of_scan)))]
        pair = self.pairs[which]
        noisy, clean = self._crop(pair, self._body[which], rng)
        if self.augment:
            k = int(rng.integers(4))
            flip = bool(rng.integers(2))
            noisy, clean = np.rot90(noisy, k), np.rot90(clean, k)
            if flip:
                noisy, clean = noisy[:, ::-1], clean[:, ::-1]
        to_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(self.normalizer.forward(a, pair.params)))[None]
        return to_tensor(noisy), to_tensor(clean)

    def _crop(self, pair: SlicePair, body: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        if self.patch_size is None:
            return pair.noisy, pair.clean
        p = self.patch_size
        height, width = pair.clean.shape
        for _ in range(10):  # patches centred on the body, kept when mostly body rather than air
            if body.size:
                row, column = divmod(int(body[rng.integers(body.size)]), width)
                top = min(max(row - p // 2, 0), height - p)
                left = min(max(column - p // 2, 0), width - p)
            else:
                top, left = int(rng.integers(height - p + 1)), int(rng.integers(width - p + 1))
            clean = pair.clean[top : top + p, left : left + p]
            if np.mean(clean > pair.foreground) >= self.min_foreground_fraction:
                break
        return pair.noisy[top : top + p, left : left + p], clean
