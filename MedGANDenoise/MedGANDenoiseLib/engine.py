"""The denoising engine: a volume in, the denoised volume and the noise out, slice by slice.

Used alike by the Slicer module, the command-line tool and the training package's evaluation.
Besides the two output arrays only one batch of slices is in flight, so a large volume needs
little more memory than its outputs.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .normalization import Normalizer
from .registry import LoadedModel, normalize_modality

ProgressCallback = Callable[[int, int], None]
CancelCheck = Callable[[], bool]


class DenoiseCancelled(Exception):
    """Raised when should_cancel() returned True; no partial result is returned."""


@dataclass
class DenoiseResult:
    denoised: np.ndarray
    noise: np.ndarray
    device: str
    seconds: float
    batch_size: int
    warnings: list[str] = field(default_factory=list)


def validate_volume(volume: np.ndarray) -> None:
    """Refuse what the engine cannot denoise, with a message that says what to do."""
    if not isinstance(volume, np.ndarray):
        raise ValueError(f"expected a numpy array, got {type(volume).__name__}")
    if volume.size == 0:
        raise ValueError(f"the image is empty (shape {volume.shape}): load a volume with voxels")
    if volume.ndim not in (2, 3):
        raise ValueError(
            f"expected a 2-D image or a 3-D volume, got {volume.ndim} dimensions (shape {volume.shape}); "
            "for a 4-D or multi-component (e.g. RGB) image, extract one scalar 3-D volume first"
        )
    if not (np.issubdtype(volume.dtype, np.integer) or np.issubdtype(volume.dtype, np.floating)):
        raise ValueError(f"expected a scalar intensity image, got voxels of type {volume.dtype}")
    low, high = np.inf, -np.inf
    for chunk in _slabs(volume):
        if np.issubdtype(chunk.dtype, np.floating) and not np.isfinite(chunk).all():
            raise ValueError(
                "the image contains NaN or infinite voxels; replace them (e.g. with the background value) before denoising"
            )
        low, high = min(low, chunk.min()), max(high, chunk.max())
    if low == high:
        raise ValueError(f"the image is constant (every voxel is {low}): there is no noise to remove")


def _slabs(volume: np.ndarray, voxels: int = 1 << 22):
    """Views of the volume in pieces of about `voxels` voxels, to bound temporaries."""
    if volume.ndim < 3:
        yield volume
        return
    step = max(1, voxels // max(1, volume[0].size))
    for start in range(0, volume.shape[0], step):
        yield volume[start : start + step]


def resolve_device(device: str = "auto"):
    """'auto' -> CUDA if available, else MPS, else CPU; or an explicit torch device string."""
    import torch

    name = (device or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"device {device!r} was asked for but PyTorch sees no CUDA GPU; use device 'cpu' or 'auto', "
            "or install a CUDA build of PyTorch (in Slicer: reinstall it through the PyTorch extension)"
        )
    try:
        return torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from error


def available_devices() -> list[tuple[str, str]]:
    """(device id, label) pairs for a device chooser."""
    import torch

    devices = [("auto", "Auto"), ("cpu", "CPU")]
    if torch.cuda.is_available():
        devices += [(f"cuda:{i}", torch.cuda.get_device_name(i)) for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append(("mps", "Apple GPU (MPS)"))
    return devices


def estimate_noise_sigma(image: np.ndarray, max_slices: int = 16) -> float:
    """Robust noise standard deviation: the median absolute deviation of neighbour differences
    (divided by sqrt 2), median over up to `max_slices` evenly spaced slices. Edges barely move a
    median, so this tracks the noise, not the anatomy."""
    slices = [image] if image.ndim == 2 else [image[i] for i in np.linspace(0, image.shape[0] - 1, min(max_slices, image.shape[0])).astype(int)]
    estimates = []
    for s in slices:
        diff = np.diff(s.astype(np.float32), axis=-1).ravel()
        if diff.size == 0:
            continue
        mad = np.median(np.abs(diff - np.median(diff)))
        estimates.append(1.4826 * mad / np.sqrt(2.0))
    return float(np.median(estimates)) if estimates else 0.0


def _set_cpu_threads(torch) -> None:
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if torch.get_num_threads() > available:
        torch.set_num_threads(available)


def denoise_volume(
    volume: np.ndarray,
    model: LoadedModel,
    modality: str | None = None,
    *,
    axis: int | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    strength: float = 1.0,
    progress: ProgressCallback | None = None,
    should_cancel: CancelCheck | None = None,
) -> DenoiseResult:
    """Denoise a 2-D image or a 3-D volume slice by slice along `axis` (default 0, the slice axis
    of a numpy (k, j, i) volume). Returns float32 `denoised` and `noise` in the input's units with
    denoised + noise == input; `strength` in [0, 1] scales the removed noise.

    batch_size=None picks 8 slices on a GPU and 1 on the CPU, where larger batches are no faster
    and cost activation memory (measured: benchmarks/benchmark_engine.py).
    progress(done, total) is called after each batch; should_cancel() is checked before each
    batch and makes the run raise DenoiseCancelled. On CUDA out-of-memory the batch is halved and
    retried, then the run falls back to the CPU with a warning.
    """
    import torch

    validate_volume(volume)
    card = model.card
    if modality is not None and normalize_modality(modality) != card.modality:
        raise ValueError(
            f"model {card.id!r} was trained for {card.modality}, but the image is {normalize_modality(modality)}; "
            f"pick a {normalize_modality(modality)} model"
        )
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be between 0 and 1, got {strength}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    slices_axis = 0 if axis is None else axis
    if volume.ndim == 2:
        if axis not in (None, 0):
            raise ValueError("a 2-D image has one slice: leave the axis unset")
        stack = volume[np.newaxis]
    else:
        if not -3 <= slices_axis < 3:
            raise ValueError(f"axis must be 0, 1 or 2 for a 3-D volume, got {axis}")
        stack = np.moveaxis(volume, slices_axis, 0)

    normalizer = Normalizer.from_dict(card.normalization)
    params = normalizer.fit(volume)
    denoised = np.empty(volume.shape, dtype=np.float32)
    noise = np.empty(volume.shape, dtype=np.float32)
    denoised_stack = denoised[np.newaxis] if volume.ndim == 2 else np.moveaxis(denoised, slices_axis, 0)
    noise_stack = noise[np.newaxis] if volume.ndim == 2 else np.moveaxis(noise, slices_axis, 0)

    torch_device = resolve_device(device)
    if batch_size is None:
        batch_size = 1 if torch_device.type == "cpu" else 8
    _set_cpu_threads(torch)
    generator = model.generator.eval().to(torch_device)
    notes: list[str] = []
    total = stack.shape[0]
    done = 0
    started = time.perf_counter()
    while done < total:
        if should_cancel is not None and should_cancel():
            raise DenoiseCancelled(f"cancelled after {done} of {total} slices")
        batch = stack[done : done + batch_size]
        try:
            output = _run_batch(generator, batch, normalizer, params, torch_device)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            if batch_size > 1:
                batch_size //= 2
                notes.append(f"GPU out of memory: batch size reduced to {batch_size}")
            else:
                torch_device = torch.device("cpu")
                generator = generator.to(torch_device)
                notes.append("GPU out of memory even with one slice per batch: continued on the CPU")
            warnings.warn(notes[-1], RuntimeWarning, stacklevel=2)
            continue
        original = batch.astype(np.float32, copy=False)
        removed = original - output
        if strength != 1.0:
            removed *= np.float32(strength)
        noise_stack[done : done + len(batch)] = removed
        denoised_stack[done : done + len(batch)] = original - removed
        done += len(batch)
        if progress is not None:
            progress(done, total)
    return DenoiseResult(
        denoised=denoised,
        noise=noise,
        device=str(torch_device),
        seconds=time.perf_counter() - started,
        batch_size=batch_size,
        warnings=notes,
    )


def _run_batch(generator, batch: np.ndarray, normalizer: Normalizer, params, device) -> np.ndarray:
    """The generator's fused output for a (B, H, W) batch, in original units, float32 on the CPU."""
    import torch

    x = torch.from_numpy(normalizer.forward(batch, params)).unsqueeze(1).to(device)
    with torch.inference_mode():
        if device.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            with torch.autocast("cuda", dtype=dtype):
                y = generator(x)[0]
        else:
            y = generator(x)[0]
    y = y.float().squeeze(1).cpu().numpy()
    return normalizer.inverse(y, params)
