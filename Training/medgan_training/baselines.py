"""The classical denoisers a user already has, as `medgan-evaluate` runs them.

Every filter works on one 2-D slice scaled to about [0, 1] (CT: (HU + 1024) / 4096; other
modalities: the clean stack's 99.5th percentile), with one strength parameter:

- BM3D (PyPI `bm3d`) and scikit-image non-local means (fast mode, h = 0.8 sigma): the noise
  sigma, either estimated from the noisy slice (scikit-image's wavelet estimate, what a user
  can do) or ORACLE-TUNED: the multiple of that estimate which maximises PSNR against the clean
  reference. CT noise is spatially correlated and the estimate sees only the finest scale, so
  the best multiple is well above 1 (about 5 for NLM and 11 for BM3D on the real quarter-dose
  pair). An oracle needs the clean image, which a user never has, so these rows are an upper
  bound for the classical method, not what it gives in practice.
- total variation (scikit-image Chambolle): the weight, oracle-tuned the same way.
- curvature and gradient anisotropic diffusion (SimpleITK, the filters behind Slicer's modules
  of those names) at Slicer's module defaults, read from Slicer's CLI XML: curvature conductance
  1, 1 iteration, time step 0.0625; gradient conductance 1, 5 iterations, time step 0.0625.
  Run per 2-D slice with unit spacing (Slicer runs them on the 3-D volume). ITK scales the
  conductance by the image's mean gradient, so the intensity scale does not matter. An
  oracle-tuned curvature variant (iterations x conductance) shows what moving Slicer's sliders
  while looking at a reference could give.

The oracle search runs on central crops of a few slices (the slow filters take seconds per
512 x 512 slice), coarse-then-fine over the multiplier on a log grid, extending the grid while
PSNR still rises at its edge; the chosen multiple then applies to every slice's own estimate.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from .metrics import Window, slice_metrics


# Slicer's module defaults (Modules/CLI/{Curvature,Gradient}AnisotropicDiffusion/*.xml).
SLICER_CURVATURE_DEFAULTS = {"conductance": 1.0, "iterations": 1, "time_step": 0.0625}
SLICER_GRADIENT_DEFAULTS = {"conductance": 1.0, "iterations": 5, "time_step": 0.0625}

ORACLE_NOTE = "oracle: tuned on the clean reference, which a user does not have"
# multiples of the white-noise estimate; on the real quarter-dose pair BM3D peaks near 11x, NLM near 5x
SIGMA_GRID = tuple(np.geomspace(0.5, 16.0, 7))
TV_GRID = tuple(np.geomspace(0.25, 8.0, 7))


# ---------------------------------------------------------------- the filters (one scaled slice)
def estimated_sigma(image: np.ndarray) -> float:
    """scikit-image's wavelet estimate of white-noise sigma. It sees the finest scale only, so it
    underestimates spatially correlated noise such as CT noise after a smooth kernel."""
    from skimage.restoration import estimate_sigma

    return float(estimate_sigma(image))


def bm3d_filter(image: np.ndarray, sigma: float) -> np.ndarray:
    import bm3d

    return np.asarray(bm3d.bm3d(image, sigma_psd=max(sigma, 1e-6)), dtype=np.float32)


def nlm_filter(image: np.ndarray, sigma: float) -> np.ndarray:
    """Non-local means, fast mode, with scikit-image's recommended h = 0.8 sigma."""
    from skimage.restoration import denoise_nl_means

    sigma = max(sigma, 1e-6)
    return denoise_nl_means(image, h=0.8 * sigma, sigma=sigma, patch_size=5, patch_distance=6,
                            fast_mode=True).astype(np.float32)


def tv_filter(image: np.ndarray, weight: float) -> np.ndarray:
    from skimage.restoration import denoise_tv_chambolle

    return denoise_tv_chambolle(image, weight=max(weight, 1e-6)).astype(np.float32)


def curvature_diffusion(image: np.ndarray, conductance: float = 1.0, iterations: int = 1, time_step: float = 0.0625) -> np.ndarray:
    """SimpleITK's CurvatureAnisotropicDiffusion (Slicer's module defaults)."""
    import SimpleITK as sitk

    result = sitk.CurvatureAnisotropicDiffusion(sitk.GetImageFromArray(image.astype(np.float32)), timeStep=time_step,
                                                conductanceParameter=conductance, numberOfIterations=int(iterations))
    return sitk.GetArrayFromImage(result)


def gradient_diffusion(image: np.ndarray, conductance: float = 1.0, iterations: int = 5, time_step: float = 0.0625) -> np.ndarray:
    """SimpleITK's GradientAnisotropicDiffusion (Slicer's module defaults)."""
    import SimpleITK as sitk

    result = sitk.GradientAnisotropicDiffusion(sitk.GetImageFromArray(image.astype(np.float32)), timeStep=time_step,
                                               conductanceParameter=conductance, numberOfIterations=int(iterations))
    return sitk.GetArrayFromImage(result)


# ---------------------------------------------------------------- oracle search
@dataclass
class Tuning:
    """The chosen parameter, its PSNR on the tuning crops, and every PSNR tried."""

    best: object
    psnr: float
    tried: dict = field(default_factory=dict)
    seconds: float = 0.0


def tune_multiplier(score: Callable[[float], float], grid: Sequence[float] = SIGMA_GRID, refine: int = 2,
                    max_extensions: int = 24) -> Tuning:
    """Maximise score(m) over multipliers m: the log grid, extended while the best lies at an edge,
    then `refine` points either side of the best at fractions of the grid step. The extensions go
    far (24 grid steps, a factor of about 1e6) because the estimate the multiplier scales can be
    far off: on OSEM-smoothed PET noise the wavelet estimate was 240 times too small."""
    started = time.perf_counter()
    grid = sorted(float(m) for m in grid)
    step = grid[1] / grid[0]
    tried: dict[float, float] = {}

    def evaluate(m: float) -> float:
        m = round(m, 6)
        if m not in tried:
            tried[m] = float(score(m))
        return tried[m]

    for m in grid:
        evaluate(m)
    for _ in range(max_extensions):
        best = max(tried, key=tried.get)
        if best == max(tried):
            evaluate(best * step)
        elif best == min(tried):
            evaluate(best / step)
        else:
            break
    best = max(tried, key=tried.get)
    for k in range(1, refine + 1):
        for sign in (-1, 1):
            evaluate(best * step ** (sign * k / (refine + 1)))
    best = max(tried, key=tried.get)
    return Tuning(best, tried[best], dict(sorted(tried.items())), time.perf_counter() - started)


def search_grid(score: Callable[[dict], float], candidates: Sequence[dict]) -> Tuning:
    """The candidate parameter set with the best score (exhaustive)."""
    started = time.perf_counter()
    scores = [(float(score(c)), i) for i, c in enumerate(candidates)]
    best_score, index = max(scores)
    tried = {tuple(sorted(c.items())): s for (s, _), c in zip(scores, candidates)}
    return Tuning(dict(candidates[index]), best_score, tried, time.perf_counter() - started)


def central_crop(image: np.ndarray, size: int) -> np.ndarray:
    top, left = max(0, (image.shape[0] - size) // 2), max(0, (image.shape[1] - size) // 2)
    return image[top : top + size, left : left + size]


def tuning_slices(count: int, at_most: int) -> list[int]:
    """Up to `at_most` slice indices spread evenly over the stack."""
    return sorted({int(round(i)) for i in np.linspace(0, count - 1, min(count, at_most))})


# ---------------------------------------------------------------- baselines over a stack
@dataclass
class Scaling:
    """Intensity map to the filters' ~[0, 1] scale: scaled = (x - offset) / scale."""

    offset: float
    scale: float

    def forward(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.offset) / self.scale).astype(np.float32)

    def inverse(self, y: np.ndarray) -> np.ndarray:
        return (y * self.scale + self.offset).astype(np.float32)


@dataclass
class BaselineRun:
    """A baseline's output stack (original units), its time per slice (estimating sigma where it
    does and applying its setting; an oracle search is timed apart) and the setting it used."""

    denoised: np.ndarray
    seconds_per_slice: float
    setting: str
    details: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Baseline:
    key: str
    label: str
    kind: str  # "estimated", "oracle-multiplier", "fixed" or "oracle-grid"
    filter: Callable[..., np.ndarray]
    grid: Sequence = ()
    fixed: dict = field(default_factory=dict)

    @property
    def oracle(self) -> bool:
        return self.kind.startswith("oracle")

    def run(self, noisy: np.ndarray, clean: np.ndarray, scaling: Scaling, window: Window, *,
            tune_slices: int = 3, tune_crop: int = 256, per_slice: bool = False) -> BaselineRun:
        """Denoise a (slices, H, W) stack; the clean stack is read only by the oracle kinds. An
        oracle tunes one setting on a few slices, or with `per_slice` one setting for each slice
        (on its own central crop): the stronger oracle where the slices come from different scans."""
        if per_slice and self.oracle and len(noisy) > 1:
            runs = [self.run(noisy[i : i + 1], clean[i : i + 1], scaling, window, tune_crop=tune_crop)
                    for i in range(len(noisy))]
            return BaselineRun(np.concatenate([r.denoised for r in runs]),
                               float(np.mean([r.seconds_per_slice for r in runs])),
                               "tuned on each slice: " + "; ".join(r.setting for r in runs),
                               {"per_slice": [{**r.details, "slice": i} for i, r in enumerate(runs)]})
        scaled = [scaling.forward(s) for s in noisy]
        started = time.perf_counter()
        sigmas = [estimated_sigma(s) for s in scaled] if self.kind in ("estimated", "oracle-multiplier") else []
        estimating = time.perf_counter() - started
        details: dict = {}
        if self.oracle:
            chosen = tuning_slices(len(noisy), tune_slices)
            crops = [(central_crop(scaled[i], tune_crop), central_crop(clean[i], tune_crop), sigmas[i] if sigmas else None)
                     for i in chosen]

            def psnr(apply: Callable[[np.ndarray, float | None], np.ndarray]) -> float:
                return float(np.mean([slice_metrics(scaling.inverse(apply(n, s)), c, window)["psnr"] for n, c, s in crops]))

            if self.kind == "oracle-multiplier":
                tuning = tune_multiplier(lambda m: psnr(lambda n, s: self.filter(n, m * s)), self.grid)
            else:
                tuning = search_grid(lambda p: psnr(lambda n, s: self.filter(n, **p)), list(self.grid))
            details = {"oracle": ORACLE_NOTE, "tuning_seconds": tuning.seconds, "tuning_psnr": tuning.psnr,
                       "tuning_slices": chosen, "tuning_crop": tune_crop,
                       "tried": {str(k): v for k, v in tuning.tried.items()}}
        started = time.perf_counter()
        if self.kind == "estimated":
            outputs = [self.filter(s, sigma) for s, sigma in zip(scaled, sigmas)]
            setting = f"sigma {_mean_units(sigmas, scaling):.1f} (estimated)"
        elif self.kind == "oracle-multiplier":
            m = float(tuning.best)
            outputs = [self.filter(s, m * sigma) for s, sigma in zip(scaled, sigmas)]
            name = "weight" if self.filter is tv_filter else "sigma"
            setting = f"{name} {_mean_units([m * s for s in sigmas], scaling):.1f} = {m:.2f} x estimate"
            details["multiplier"] = m
            details[name] = float(np.mean([m * s for s in sigmas]) * scaling.scale)
        else:
            params = dict(tuning.best) if self.kind == "oracle-grid" else dict(self.fixed)
            outputs = [self.filter(s, **params) for s in scaled]
            setting = ", ".join(f"{k} {v:g}" for k, v in params.items())
            details.update(params)
        seconds = (time.perf_counter() - started + estimating) / len(noisy)
        denoised = np.stack([scaling.inverse(o) for o in outputs])
        return BaselineRun(denoised, seconds, setting, details)


def _mean_units(values: Sequence[float], scaling: Scaling) -> float:
    return float(np.mean(values) * scaling.scale)


CURVATURE_GRID = tuple({"conductance": c, "iterations": i, "time_step": 0.0625}
                       for c in (0.5, 1.0, 2.0, 3.0) for i in (1, 2, 3, 5, 8, 12, 20, 30))

BASELINES: dict[str, Baseline] = {b.key: b for b in (
    Baseline("bm3d-oracle", "BM3D, oracle-tuned sigma (*)", "oracle-multiplier", bm3d_filter, SIGMA_GRID),
    Baseline("bm3d", "BM3D, estimated sigma", "estimated", bm3d_filter),
    Baseline("nlm-oracle", "non-local means, oracle-tuned sigma (*)", "oracle-multiplier", nlm_filter, SIGMA_GRID),
    Baseline("nlm", "non-local means, estimated sigma", "estimated", nlm_filter),
    Baseline("tv-oracle", "total variation, oracle-tuned weight (*)", "oracle-multiplier", tv_filter, TV_GRID),
    Baseline("cad", "curvature anisotropic diffusion, Slicer defaults", "fixed", curvature_diffusion,
             fixed=SLICER_CURVATURE_DEFAULTS),
    Baseline("gad", "gradient anisotropic diffusion, Slicer defaults", "fixed", gradient_diffusion,
             fixed=SLICER_GRADIENT_DEFAULTS),
    Baseline("cad-oracle", "curvature anisotropic diffusion, oracle-tuned (*)", "oracle-grid", curvature_diffusion,
             CURVATURE_GRID),
)}
