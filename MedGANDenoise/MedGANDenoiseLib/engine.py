"""The denoising engine: a volume in, the denoised volume and the noise out, slice by slice.

Used alike by the Slicer module, the command-line tool and the training package's evaluation.
Besides the two output arrays only one batch of slices (or one tile of a very large slice) is in
flight, so a large volume needs little more memory than its outputs.

Speed on a CPU comes from running an inference copy of the generator: BatchNorm folded into the
convolutions and channels-last memory layout (about 2x faster than the plain module on this
2-core CPU, output identical to float rounding). On CUDA GPUs the predictors run in float16 when
both output small corrections (residual content), with the fusion and every sum with the input
kept in float32 (see ContentNoiseGenerator). The caller's generator is never modified or moved.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .normalization import NormalizationParams, Normalizer
from .registry import LoadedModel, normalize_modality

ProgressCallback = Callable[[int, int], None]
CancelCheck = Callable[[], bool]


class DenoiseCancelled(Exception):
    """Raised when should_cancel() returned True; no partial result is returned."""


# CT voxels below this value lie outside the scanner's field of view (padding such as -2048 or
# -3024 HU): real air with heavy noise stays far above it.
CT_PADDING_BELOW_HU = -1500.0
# Slices with more pixels than this are denoised in overlapping tiles to bound activation memory.
MAX_PIXELS_PER_PASS = 1024 * 1024
TILE_SIZE = 1024
TILE_OVERLAP = 256
MIN_SLICE_SIDE = 4
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# Self-ensemble: the first N of the eight flips and 90-degree rotations of a slice, each given to
# the network and undone on its output, the outputs averaged (N passes per slice). 4 is the
# mirrorings (left-right, up-down, both); 8 adds the rotations and transposes.
ENSEMBLE_SIZES = (1, 2, 4, 8)
_ENSEMBLE_TRANSFORMS = ((0, False), (0, True), (2, True), (2, False), (1, False), (1, True), (3, False), (3, True))


@dataclass
class DenoiseResult:
    denoised: np.ndarray
    noise: np.ndarray
    device: str
    seconds: float
    batch_size: int
    precision: str = "fp32"
    warnings: list[str] = field(default_factory=list)
    ensemble: int = 1


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
    limit = float(np.finfo(np.float32).max) / 16  # headroom for normalisation and output arithmetic
    if max(abs(float(low)), abs(float(high))) > limit:
        raise ValueError(
            f"the image holds values of magnitude up to {max(abs(float(low)), abs(float(high))):.3g}, beyond what "
            "float32 arithmetic can denoise; check the file's rescale slope/intercept or rescale the intensities"
        )
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
        if _mps_available(torch):
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"device {device!r} was asked for but PyTorch sees no CUDA GPU; use device 'cpu' or 'auto', "
            "or install a CUDA build of PyTorch (in Slicer: reinstall it through the PyTorch extension)"
        )
    if name == "mps" and not _mps_available(torch):
        raise ValueError("device 'mps' (Apple GPU) is not available on this machine; use device 'cpu' or 'auto'")
    try:
        chosen = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'") from error
    if chosen.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unsupported device {device!r}; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
    if chosen.type == "cuda" and chosen.index is not None and chosen.index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r} does not exist: PyTorch sees {torch.cuda.device_count()} CUDA GPU(s)")
    return chosen


def available_devices() -> list[tuple[str, str]]:
    """(device id, label) pairs for a device chooser."""
    import torch

    devices = [("auto", "Auto"), ("cpu", "CPU")]
    if torch.cuda.is_available():
        devices += [(f"cuda:{i}", torch.cuda.get_device_name(i)) for i in range(torch.cuda.device_count())]
    if _mps_available(torch):
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
    precision: str = "auto",
    ensemble: int = 1,
    progress: ProgressCallback | None = None,
    should_cancel: CancelCheck | None = None,
    normalization: NormalizationParams | None = None,
) -> DenoiseResult:
    """Denoise a 2-D image or a 3-D volume slice by slice along `axis` (default 0, the slice axis
    of a numpy (k, j, i) volume). Returns float32 `denoised` and `noise` in the input's units with
    denoised + noise == input; `strength` in [0, 1] scales the removed noise (on top of the card's
    noise_scale, the share of the network's estimate that the model removes at strength 1).

    batch_size=None picks 8 slices on a GPU and 1 on the CPU, where larger batches are no faster
    and cost activation memory (measured: benchmarks/benchmark_engine.py).
    precision: "auto" runs the predictors in float16 on CUDA GPUs when they both output small
    corrections (residual content); on CPUs with native bfloat16, U-Net predictors of 4 or more
    pooling levels run their coarser levels in bfloat16 and their three finest levels in float32 (99.9th percentile in the soft-tissue
    window under 0.1 HU from float32, about 0.65 HU at most at bone edges); float32
    otherwise. "bf16" asks for that split (for DnCNN and SRDenseNet, whose every layer is at full
    resolution, it means the whole predictor in bf16: 1-3.5 HU off), "fp16" stays within 0.5 HU
    (U-Nets there too keep their three finest levels in float32).
    The fusion and the output are float32 in every case.
    ensemble: 1 (default) runs the network once per slice; 2, 4 or 8 average its outputs over that
    many flips and 90-degree rotations of the slice (self-ensemble, as nnU-Net mirrors at test
    time): N times the time, a smoother estimate (+0.04 dB on the real quarter-dose CT slice with
    2, +0.06-0.07 dB with 4, measured in the README), and an output that follows the slice when it
    is mirrored.
    CT voxels outside the scanner's field of view (below CT_PADDING_BELOW_HU) are shown to the
    network as air and returned untouched (noise 0).
    progress(done, total) is called after each batch; should_cancel() is checked before each
    batch and makes the run raise DenoiseCancelled. On GPU out-of-memory the batch is halved and
    retried, then the run falls back to the CPU with a warning; the caller's model is never moved.
    normalization: the offset/scale to use instead of fitting the model's normalisation on
    `volume`, for slices cut from a larger degraded volume (training validation does this).
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
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if isinstance(ensemble, bool) or not isinstance(ensemble, (int, np.integer)) or ensemble not in ENSEMBLE_SIZES:
        raise ValueError(f"ensemble must be one of {', '.join(map(str, ENSEMBLE_SIZES))} (1: off; N: the average over "
                         f"N flips and rotations of each slice, N times the time), got {ensemble}")
    slices_axis = 0 if axis is None else axis
    if volume.ndim == 2:
        if axis not in (None, 0):
            raise ValueError("a 2-D image has one slice: leave the axis unset")
        stack = volume[np.newaxis]
    else:
        if not -3 <= slices_axis < 3:
            raise ValueError(f"axis must be 0, 1 or 2 for a 3-D volume, got {axis}")
        stack = np.moveaxis(volume, slices_axis, 0)
    if min(stack.shape[1:]) < MIN_SLICE_SIDE:
        raise ValueError(
            f"the slices are {stack.shape[1]} x {stack.shape[2]} pixels, too thin to denoise (at least "
            f"{MIN_SLICE_SIDE} x {MIN_SLICE_SIDE} needed); slice the volume along another axis"
        )

    normalizer = Normalizer.from_dict(card.normalization)
    params = normalization if normalization is not None else normalizer.fit(volume)
    padding_below = CT_PADDING_BELOW_HU if card.modality == "CT" else None
    denoised = np.empty(volume.shape, dtype=np.float32)
    noise = np.empty(volume.shape, dtype=np.float32)
    denoised_stack = denoised[np.newaxis] if volume.ndim == 2 else np.moveaxis(denoised, slices_axis, 0)
    noise_stack = noise[np.newaxis] if volume.ndim == 2 else np.moveaxis(noise, slices_axis, 0)

    torch_device = resolve_device(device)
    if batch_size is None:
        batch_size = 1 if torch_device.type == "cpu" else 8
    _set_cpu_threads(torch)
    dtype = _compute_dtype(precision, model.generator, torch_device)
    generator = inference_copy(model.generator, torch_device, dtype)
    share_removed = strength * card.noise_scale  # of the network's noise estimate
    notes: list[str] = []
    padded_voxels = 0
    total = stack.shape[0]
    done = 0
    started = time.perf_counter()
    while done < total:
        if should_cancel is not None and should_cancel():
            raise DenoiseCancelled(f"cancelled after {done} of {total} slices")
        batch = stack[done : done + batch_size]
        original = batch.astype(np.float32, copy=True)
        outside = original < padding_below if padding_below is not None else None
        if outside is not None and outside.any():
            padded_voxels += int(outside.sum())
            network_input = np.where(outside, np.float32(-1024.0), original)
        else:
            outside, network_input = None, original
        try:
            output = _run_batch(generator, network_input, normalizer, params, torch_device, dtype, ensemble)
        except Exception as error:  # noqa: BLE001 - only out-of-memory is handled, the rest re-raised
            if not _is_out_of_memory(error, torch):
                raise
            _empty_cache(torch, torch_device)
            if batch_size > 1:
                batch_size //= 2
                notes.append(f"{torch_device.type.upper()} out of memory: batch size reduced to {batch_size}")
            elif torch_device.type != "cpu":
                torch_device = torch.device("cpu")
                dtype = _compute_dtype(precision, model.generator, torch_device)
                generator = inference_copy(model.generator, torch_device, dtype)
                notes.append("GPU out of memory even with one slice per batch: continued on the CPU")
            else:
                raise MemoryError(
                    f"out of memory denoising slices of {batch.shape[1]} x {batch.shape[2]} pixels on the CPU; "
                    "close other programs or denoise a smaller region"
                ) from error
            warnings.warn(notes[-1], RuntimeWarning, stacklevel=2)
            continue
        removed = original - output
        if outside is not None:
            removed[outside] = 0.0
        if share_removed != 1.0:
            removed *= np.float32(share_removed)
        noise_stack[done : done + len(batch)] = removed
        denoised_stack[done : done + len(batch)] = original - removed
        done += len(batch)
        if progress is not None:
            progress(done, total)
    if padded_voxels:
        notes.append(
            f"{padded_voxels} voxels below {CT_PADDING_BELOW_HU:.0f} HU (outside the scanner's field of view) "
            "were left untouched"
        )
    return DenoiseResult(
        denoised=denoised,
        noise=noise,
        device=str(torch_device),
        seconds=time.perf_counter() - started,
        batch_size=batch_size,
        precision={torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype],
        warnings=notes,
        ensemble=ensemble,
    )


def inference_copy(generator, device, dtype=None):
    """A copy of the generator for inference on `device`: eval mode, BatchNorm folded into the
    convolutions, channels-last on the CPU; for a bfloat16 or float16 `dtype`, U-Net predictors keep
    their three finest levels in float32 (in float16 the whole width-32 CT U-Net was 0.51 HU off at
    the 99th percentile in soft tissue, with the split 0.004 HU). The caller's generator is left as
    it was."""
    import copy

    import torch

    from .networks import Float32, fold_batchnorm

    training = generator.training
    generator.eval()
    try:
        clone = copy.deepcopy(generator)
    finally:
        generator.train(training)
    clone = fold_batchnorm(clone).to(device)
    for p in clone.parameters():
        p.requires_grad_(False)
    if device.type == "cpu":
        clone = clone.to(memory_format=torch.channels_last)
    if dtype in (torch.bfloat16, torch.float16):
        for predictor in (clone.content_predictor, clone.noise_predictor):
            if hasattr(predictor, "keep_fine_levels_in_float32"):
                predictor.keep_fine_levels_in_float32()
    if dtype == torch.bfloat16 and clone.refinement is not None:  # it works on the full-resolution image
        clone.refinement = Float32(clone.refinement)
    return clone


def _compute_dtype(precision: str, generator, device):
    """The dtype the predictors run in (see denoise_volume)."""
    import torch

    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    residual = getattr(generator, "residual_content", False) or getattr(generator, "content_predictor", None) is None
    # fp16 predictors (U-Nets with their three finest levels in float32) stay within 0.5 HU of fp32
    # (99th percentile in soft tissue, measured on body CT phantoms)
    if residual and device.type == "cuda":
        return torch.float16
    # a whole predictor in bf16 (8-bit mantissa) was 1-3.5 HU off (99th percentile in soft tissue);
    # U-Nets with their three finest levels in float32 (inference_copy) stay within 0.1 HU in the
    # soft-tissue window (99.9th percentile) and about 0.65 HU at most
    if (residual and device.type == "cpu" and getattr(generator, "refinement", None) is None
            and _has_bf16_levels(generator) and cpu_has_native_bf16()):
        return torch.bfloat16
    return torch.float32


def _has_bf16_levels(generator) -> bool:
    """Whether every predictor is a U-Net with pooling levels beyond the ones kept in float32 (DnCNN
    and SRDenseNet have none: all their layers are at full resolution). A 3-level
    U-Net would run only its bottleneck block in bf16, and the casts cost more than that saves
    (measured in one run of benchmarks/benchmark_engine.py: the 3-level ultrasound U-Net 0.308 s per
    512 x 512 slice against 0.257 s in float32; the 4-level ones 0.21 against 0.24 in another)."""
    from .networks import UNetPredictor

    predictors = [p for p in (generator.content_predictor, generator.noise_predictor) if p is not None]
    return all(isinstance(p, UNetPredictor) and len(p.down) > UNetPredictor.FLOAT32_LEVELS for p in predictors)


def _mps_available(torch) -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bfloat16 instructions (AVX512-BF16 or AMX), where bf16 autocast pays.
    oneDNN's own check accepts any AVX-512 CPU, which only emulates bf16 (slower than float32)."""
    import torch

    try:
        if not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
            return False
        checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
        return any(check() for check in checks if check is not None)
    except (AttributeError, RuntimeError):
        return False


def _is_out_of_memory(error: Exception, torch) -> bool:
    if isinstance(error, (MemoryError, getattr(torch, "OutOfMemoryError", MemoryError), torch.cuda.OutOfMemoryError)):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def _empty_cache(torch, device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()


def _run_batch(generator, batch: np.ndarray, normalizer: Normalizer, params, device, dtype, ensemble: int = 1) -> np.ndarray:
    """The generator's fused output for a (B, H, W) batch, in original units, float32 on the CPU:
    the mean over the first `ensemble` flips and rotations of _ENSEMBLE_TRANSFORMS, each undone on
    its output. Slices larger than MAX_PIXELS_PER_PASS go through in overlapping tiles (of the
    transformed slice, so every pass tiles on the generator's own grid as a single pass does)."""
    import torch

    x = torch.from_numpy(normalizer.forward(batch, params)).unsqueeze(1)
    height, width = batch.shape[1:]
    forward = _forward if height * width <= MAX_PIXELS_PER_PASS else _forward_tiled
    total = None
    with torch.inference_mode():
        for turns, mirror in _ENSEMBLE_TRANSFORMS[:ensemble]:
            view = torch.rot90(x, turns, (-2, -1)) if turns else x
            y = forward(generator, view.flip(-1) if mirror else view, device, dtype)
            y = y.flip(-1) if mirror else y
            y = torch.rot90(y, -turns, (-2, -1)) if turns else y
            total = y if total is None else total + y
    y = total / ensemble if ensemble > 1 else total
    return normalizer.inverse(y.squeeze(1).numpy(), params)


def _forward(generator, x, device, dtype):
    """One pass on `device`; returns the float32 output on the CPU."""
    import torch

    x = x.to(device)
    if device.type == "cpu":
        x = x.contiguous(memory_format=torch.channels_last)
    if dtype == torch.float32:
        y = generator(x)[0]
    else:
        with torch.autocast(device.type, dtype=dtype):
            y = generator(x)[0]
    return y.float().cpu().contiguous()


def tile_starts(length: int, tile: int, overlap: int, align: int = 1) -> list[int]:
    """Start offsets of tiles of size `tile` covering [0, length) with at least `overlap` shared,
    each a multiple of `align`; the last tile runs to the end, up to `align - 1` pixels longer.
    Aligned starts keep every tile on the generator's own grid: a network on the pixel-unshuffled
    image (or a U-Net's pooling) gives another result when the image is shifted by a pixel."""
    if length <= tile:
        return [0]
    step = max(align, (tile - overlap) // align * align)
    last = (length - tile) // align * align
    return list(range(0, last, step)) + [last]


def _forward_tiled(generator, x, device, dtype):
    """The output of a large slice assembled from overlapping tiles (TILE_SIZE, TILE_OVERLAP).
    Each tile's weight is zero over the outer third of the overlap at its inner edges, where its
    own border (zero padding) changes the network's output, then ramps linearly to one, so seams
    blend without a visible step and a network whose receptive field fits in that margin gives
    the whole-slice result."""
    import torch

    tile, overlap = TILE_SIZE, TILE_OVERLAP
    margin = overlap // 3
    height, width = x.shape[-2:]
    edge = ((torch.arange(overlap) - margin + 1) / (overlap - 2 * margin + 1)).clamp(0.0, 1.0)
    align = getattr(generator, "size_multiple", 1)

    def pieces(length: int) -> list[tuple[int, int, torch.Tensor]]:
        starts = tile_starts(length, tile, overlap, align)
        result = []
        for i, start in enumerate(starts):
            stop = length if i == len(starts) - 1 else start + tile
            weights = torch.ones(stop - start)
            if i > 0:
                weights[:overlap] = edge
            if i < len(starts) - 1:
                weights[-overlap:] = edge.flip(0)
            result.append((start, stop, weights))
        return result

    output = torch.zeros_like(x)
    weight = torch.zeros((1, 1, height, width))
    for top, bottom, wy in pieces(height):
        for left, right, wx in pieces(width):
            piece = _forward(generator, x[..., top:bottom, left:right], device, dtype)
            mask = (wy[:, None] * wx[None, :])[None, None]
            output[..., top:bottom, left:right] += piece * mask
            weight[..., top:bottom, left:right] += mask
    return output / weight
