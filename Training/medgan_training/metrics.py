"""Image-quality metrics as METHOD.md defines them, so every number is measured the same way.

PSNR, SSIM (Gaussian window, sigma 1.5) and RMSE from scikit-image, computed per slice after
clipping both images to a window whose width is the data range; plus the mean bias of the
output, which PSNR alone hides. CT numbers always carry their HU window.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

# The common clinical window of low-dose CT papers: [-160, 240] HU, data range 400.
CT_WINDOW = (-160.0, 240.0)


@dataclass(frozen=True)
class Window:
    low: float
    high: float

    @property
    def data_range(self) -> float:
        return self.high - self.low

    def label(self, unit: str = "") -> str:
        return f"[{self.low:g}, {self.high:g}]{(' ' + unit) if unit else ''}"


def window_for(modality: str, clean: np.ndarray) -> Window:
    """CT: the fixed clinical window. Other modalities: [0, 99.5th percentile of the clean image]."""
    if modality.upper() == "CT":
        return Window(*CT_WINDOW)
    high = float(np.percentile(clean, 99.5))
    return Window(0.0, high if high > 0 else float(clean.max()) or 1.0)


def slice_metrics(output: np.ndarray, clean: np.ndarray, window: Window) -> dict[str, float]:
    """PSNR (dB), SSIM, RMSE and mean bias of one 2-D slice against its clean reference."""
    out = np.clip(output.astype(np.float64), window.low, window.high)
    ref = np.clip(clean.astype(np.float64), window.low, window.high)
    return {
        "psnr": float(peak_signal_noise_ratio(ref, out, data_range=window.data_range)),
        "ssim": float(
            structural_similarity(
                ref, out, data_range=window.data_range, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
            )
        ),
        "rmse": float(np.sqrt(np.mean((out - ref) ** 2))),
        "bias": float(np.mean(output.astype(np.float64) - clean.astype(np.float64))),
    }


def differentiable_ssim(x: torch.Tensor, y: torch.Tensor, data_range: float, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM of two (N, 1, H, W) batches, the same definition as `slice_metrics` (Gaussian
    window of sigma 1.5 truncated at 3.5 sigma, population covariances, borders of half a window
    left out) but in torch, so that a training loss can use it. Computed in float32."""
    radius = int(3.5 * sigma + 0.5)
    taps = torch.arange(-radius, radius + 1, dtype=torch.float32, device=x.device)
    kernel_1d = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel_1d = kernel_1d / kernel_1d.sum()
    kernel = (kernel_1d[:, None] * kernel_1d[None, :])[None, None]
    # (co)variances from values centred on each image's mean: E[x^2] - E[x]^2 at a CT level of
    # 0.26 normalised units would lose the variances of a few HU to float32 rounding
    with torch.autocast(x.device.type, enabled=False):
        level = y.float().mean(dim=(-2, -1), keepdim=True)
        x, y = x.float() - level, y.float() - level

        def local_mean(image: torch.Tensor) -> torch.Tensor:
            return F.conv2d(image, kernel)

        mu_x, mu_y = local_mean(x), local_mean(y)
        var_x = local_mean(x * x) - mu_x**2
        var_y = local_mean(y * y) - mu_y**2
        cov = local_mean(x * y) - mu_x * mu_y
        mu_x, mu_y = mu_x + level, mu_y + level
        c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
        ssim = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
        return ssim.mean()


def summarize(per_slice: list[dict[str, float]]) -> dict[str, float]:
    """Mean and standard deviation of each metric over slices: {"psnr": m, "psnr_std": s, ...}."""
    summary: dict[str, float] = {}
    for key in per_slice[0]:
        values = np.array([m[key] for m in per_slice])
        summary[key] = float(values.mean())
        summary[f"{key}_std"] = float(values.std())
    summary["slices"] = len(per_slice)
    return summary


def format_summary(summary: dict[str, float], window: Window | None = None, unit: str = "") -> str:
    text = (
        f"PSNR {summary['psnr']:.2f} +- {summary['psnr_std']:.2f} dB, SSIM {summary['ssim']:.4f} +- {summary['ssim_std']:.4f}, "
        f"RMSE {summary['rmse']:.2f}, bias {summary['bias']:+.2f}"
    )
    if window is not None:
        text += f" (window {window.label(unit)}, {int(summary['slices'])} slices)"
    return text


def noise_power_spectrum(noise: np.ndarray, clean: np.ndarray, roi: int = 32, bins: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Radially averaged noise power spectrum of `noise` over the roi x roi squares that lie
    mostly (90 %) in soft tissue (-150..250 HU in `clean`), each with its mean removed. Returns (frequency in
    cycles/pixel at the bin centres, power in HU^2 pixel^2), so simulated and real noise compare."""
    tissue = (clean > -150) & (clean < 250)
    spectra = []
    for top in range(0, noise.shape[0] - roi + 1, roi // 2):
        for left in range(0, noise.shape[1] - roi + 1, roi // 2):
            if tissue[top : top + roi, left : left + roi].mean() >= 0.9:
                patch = noise[top : top + roi, left : left + roi].astype(np.float64)
                spectra.append(np.abs(np.fft.fft2(patch - patch.mean())) ** 2 / roi**2)
    if not spectra:
        raise ValueError(f"no {roi} x {roi} square lies in soft tissue: use a smaller roi")
    power = np.mean(spectra, axis=0)
    fy, fx = np.meshgrid(np.fft.fftfreq(roi), np.fft.fftfreq(roi), indexing="ij")
    radius = np.hypot(fy, fx).ravel()
    edges = np.linspace(0.0, 0.5, bins + 1)
    which = np.digitize(radius, edges) - 1
    valid = (which >= 0) & (which < bins)
    totals = np.bincount(which[valid], weights=power.ravel()[valid], minlength=bins)
    counts = np.bincount(which[valid], minlength=bins)
    return 0.5 * (edges[:-1] + edges[1:]), totals / np.maximum(counts, 1)
